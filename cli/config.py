"""``queuectl config``: the broker's persistent settings."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import BrokerOpt, JsonOpt, client, emit_json, present, say

app = typer.Typer(help="Show and change the broker's settings (kept across restarts).",
                  no_args_is_help=True)


@app.command("show")
def config_show(ctx: typer.Context, broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """Every setting."""
    with client(ctx, broker) as qc:
        present(qc.config_show(), as_json, "config")


@app.command("get")
def config_get(ctx: typer.Context, key: Annotated[str, typer.Argument(metavar="KEY")],
               broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """One setting's value."""
    from queuectl.proto.config import normalize_key

    with client(ctx, broker) as qc:
        value = qc.config_get(key)
    if as_json:
        emit_json({normalize_key(key): value})
    else:
        say(str(value))


@app.command("set")
def config_set(ctx: typer.Context, key: Annotated[str, typer.Argument(metavar="KEY")],
               value: Annotated[str, typer.Argument(metavar="VALUE")],
               broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """Change a setting. New defaults apply to jobs enqueued from now on; backoff
    settings apply to every retry scheduled from now on."""
    from queuectl.proto.config import normalize_key

    with client(ctx, broker) as qc:
        stored = qc.config_set(key, value)
    name = normalize_key(key)
    if as_json:
        emit_json({name: stored})
    else:
        say(f"Configuration updated: {name} = {stored}")
