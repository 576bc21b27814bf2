"""Job commands: enqueue, status, list, show, logs, cancel."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from . import enqueue as enqueue_command
from .common import BrokerOpt, JsonOpt, client, emit_json, endpoint, present, say


def _invalid(message: str) -> Exception:
    from queuectl.client import InvalidInput

    return InvalidInput(message)


def enqueue(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Argument(
        metavar="JSON", help='the job, e.g. \'{"id":"job1","command":"echo hi"}\'')] = None,
    file: Annotated[str | None, typer.Option(
        "--file", "-f", help="JSON Lines file of jobs, all or none ('-' reads stdin)")] = None,
    broker: BrokerOpt = None, as_json: JsonOpt = False,
) -> None:
    """Add a job (or every job of a JSON Lines file) to the queue."""
    enqueue_command.run(endpoint(ctx, broker), job, file, as_json)


def status(ctx: typer.Context, broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """Counts per state, the DLQ, average duration, agents and slots."""
    with client(ctx, broker) as qc:
        present(qc.status(), as_json, "status")


def list_jobs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option("--state", help="only jobs in this state")] = None,
    queue: Annotated[str | None, typer.Option("--queue", help="only jobs of this queue")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many")] = 100,
    search: Annotated[str | None, typer.Option(
        "--search", help="only jobs whose id or command contains this text (any case)")] = None,
    broker: BrokerOpt = None, as_json: JsonOpt = False,
) -> None:
    """Jobs, newest first."""
    from queuectl.proto.states import ALL_STATES

    if state is not None and state not in ALL_STATES:
        raise _invalid(f"unknown state {state!r} (one of: {', '.join(ALL_STATES)})")
    with client(ctx, broker) as qc:
        present(qc.list(state=state, queue=queue, limit=limit, search=search), as_json, "jobs")


def show(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")],
         broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """One job with its attempts."""
    with client(ctx, broker) as qc:
        present(qc.get(job_id), as_json, "job")


def logs(
    ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")],
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="stream until the job ends")] = False,
    raw: Annotated[bool, typer.Option(
        "--raw", help="write the output byte for byte even to a terminal (by default a "
                      "terminal gets colours, but other control sequences escaped)")] = False,
    broker: BrokerOpt = None,
) -> None:
    """The stdout and stderr of the job's latest attempt (to stdout and stderr)."""
    from .visible import LogFilter

    streams = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    names = {1: "stdout", 2: "stderr"}
    # A pipe or a file gets the bytes as they are; a terminal gets them filtered.
    filters = {n: LogFilter() for n, out in streams.items() if out.isatty() and not raw}
    with client(ctx, broker) as qc:
        for chunk in qc.logs(job_id, follow=follow):
            out, screen = streams[chunk.stream], filters.get(chunk.stream)
            if chunk.skipped:
                if screen:
                    out.write(screen.flush())
                out.write(f"[queuectl: {chunk.skipped} bytes of {names[chunk.stream]} "
                          "were not kept]\n".encode())
            out.write(screen.feed(chunk.data) if screen else chunk.data)
            if follow:
                out.flush()
    for number, screen in filters.items():
        streams[number].write(screen.flush())
    sys.stdout.flush()


def cancel(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")],
           broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a pending or failed job, or kill a processing one and cancel it."""
    with client(ctx, broker) as qc:
        result = qc.cancel(job_id)
    if result["state"] != "canceled":
        from queuectl.client import Conflict

        raise Conflict(f"job {job_id} is {result['state']}; it ended before the cancel took "
                       "effect" if result["state"] != "processing" else
                       f"cancel requested, but job {job_id} has not stopped yet; it will be "
                       "canceled when its agent reports or its lease expires")
    if as_json:
        emit_json(result)
    else:
        say(f"Canceled job: {job_id}")


def register(app: typer.Typer) -> None:
    app.command()(enqueue)
    app.command()(status)
    app.command("list")(list_jobs)
    app.command()(show)
    app.command()(logs)
    app.command()(cancel)
