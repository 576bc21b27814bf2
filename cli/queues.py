"""``queuectl queue``: pause, resume and limit named queues (held by the broker)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import BrokerOpt, JsonOpt, client, emit_json, present, say

app = typer.Typer(help="Named queues: list them, pause and resume them, limit how many of "
                       "their jobs run at once across all agents.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="the queue's name")]


def _show(document: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        emit_json(document)
    else:
        say(text)


@app.command("list")
def queue_list(ctx: typer.Context, broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """Queues with a rule or with unfinished jobs."""
    with client(ctx, broker) as qc:
        present(qc.queues(), as_json, "queues")


@app.command("pause")
def queue_pause(ctx: typer.Context, name: NameArg, broker: BrokerOpt = None,
                as_json: JsonOpt = False) -> None:
    """Start no more jobs of NAME (running ones finish); enqueueing still works."""
    with client(ctx, broker) as qc:
        _show(qc.queue_pause(name), as_json, f"Queue {name} paused")


@app.command("resume")
def queue_resume(ctx: typer.Context, name: NameArg, broker: BrokerOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Start jobs of NAME again."""
    with client(ctx, broker) as qc:
        _show(qc.queue_resume(name), as_json, f"Queue {name} resumed")


@app.command("limit")
def queue_limit(
    ctx: typer.Context, name: NameArg,
    limit: Annotated[str, typer.Argument(metavar="N", help="most jobs at once, or 'none'")],
    broker: BrokerOpt = None, as_json: JsonOpt = False,
) -> None:
    """Run at most N jobs of NAME at once, across all agents ('none' removes the limit)."""
    from queuectl.client import InvalidInput

    if limit.strip().lower() == "none":
        value = None
    else:
        try:
            value = int(limit)
        except ValueError:
            raise InvalidInput(f"the limit must be a whole number >= 1 or 'none', "
                               f"got {limit[:40]!r}") from None
    with client(ctx, broker) as qc:
        document = qc.queue_limit(name, value)
    _show(document, as_json, f"Queue {name}: no limit" if value is None
          else f"Queue {name}: at most {value} job(s) at once")
