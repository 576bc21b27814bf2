"""``queuectl worker`` and ``queuectl agents``: the processes that run jobs."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from .common import BrokerOpt, JsonOpt, client, emit_json, note, present, say
from .common import endpoint as common_endpoint

app = typer.Typer(help="Run an agent in the foreground, or stop every agent.",
                  no_args_is_help=True)


@app.command("start")
def worker_start(
    ctx: typer.Context,
    count: Annotated[int, typer.Option("--count", "-c", min=1, max=10_000,
                                       help="execution slots (jobs run at once)")] = 1,
    label: Annotated[list[str] | None, typer.Option(
        "--label", metavar="KEY=VALUE", help="a label jobs can require (repeatable)")] = None,
    grace: Annotated[float, typer.Option("--grace", min=0,
                                         help="seconds running jobs may finish on stop")] = 30.0,
    broker: BrokerOpt = None,
) -> None:
    """Run an agent with COUNT slots in the foreground until Ctrl+C or SIGTERM,
    which let running jobs finish first."""
    import argparse

    from queuectl import logsetup
    from queuectl.agent.main import parse_label, run_agent
    from queuectl.client import InvalidInput, default_endpoint

    try:
        labels = dict(parse_label(text) for text in label or [])
    except argparse.ArgumentTypeError as exc:
        raise InvalidInput(str(exc)) from None
    logsetup.configure(os.environ.get("QUEUECTL_LOG_LEVEL", "INFO"))
    endpoint = common_endpoint(ctx, broker) or default_endpoint()
    note(f"Starting an agent with {count} slot(s) for broker {endpoint}; Ctrl+C stops it")
    raise typer.Exit(run_agent(endpoint, count, labels, grace))


@app.command("stop")
def worker_stop(ctx: typer.Context, broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """Gracefully stop every agent connected to the broker, wherever it runs;
    returns when they have exited."""
    with client(ctx, broker) as qc:
        if not as_json:
            agents = qc.agents()
            if agents:
                note(f"Stopping {len(agents)} agent(s); running jobs finish first...")
        stopped = qc.stop_agents(wait=True)
    if as_json:
        emit_json({"stopped": stopped})
    elif stopped:
        say(f"Stopped {len(stopped)} agent(s): {', '.join(stopped)}")
    else:
        say("No agents were running")


def agents(ctx: typer.Context, broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """Connected agents: host, labels, slots, last heartbeat, running jobs."""
    with client(ctx, broker) as qc:
        present(qc.agents(), as_json, "agents")
