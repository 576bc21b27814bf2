"""Job commands: enqueue, status, list, show, logs, cancel."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer

from .common import BrokerOpt, JsonOpt, client, emit_json, present, say


def _invalid(message: str) -> Exception:
    from queuectl.client import InvalidInput

    return InvalidInput(message)


def _parse_object(text: str, where: str = "") -> Any:
    try:
        value = json.loads(text)
        # JSON allows lone surrogate escapes ("\\ud800"), which no UTF-8 message can carry
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as exc:
        raise _invalid(f"{where}invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                       " (quote the whole job in single quotes)") from None
    except UnicodeEncodeError:
        raise _invalid(f"{where}invalid text: a string holds a lone surrogate (\\ud800-\\udfff)"
                       " or bytes that are not UTF-8") from None
    except RecursionError:
        raise _invalid(f"{where}invalid JSON: nested too deeply") from None
    return value


def _read_lines(path: str) -> list[Any]:
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise _invalid(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    jobs = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            jobs.append((number, _parse_object(line, f"line {number}: ")))
    if not jobs:
        raise _invalid(f"{path} holds no jobs (one JSON object per line)")
    return jobs


def enqueue(
    ctx: typer.Context,
    job: Annotated[Optional[str], typer.Argument(
        metavar="JSON", help='the job, e.g. \'{"id":"job1","command":"echo hi"}\'')] = None,
    file: Annotated[Optional[str], typer.Option(
        "--file", "-f", help="JSON Lines file of jobs, all or none ('-' reads stdin)")] = None,
    broker: BrokerOpt = None, as_json: JsonOpt = False,
) -> None:
    """Add a job (or every job of a JSON Lines file) to the queue."""
    if (job is None) == (file is None):
        raise _invalid("give one job as JSON or --file PATH (not both)")
    with client(ctx, broker) as qc:
        if job is not None:
            result = qc.enqueue(_parse_object(job))
            if as_json:
                emit_json(result)
            else:
                say(f"Enqueued job: {result['id']}")
            return
        numbered = _read_lines(file)
        result = qc.enqueue_many([spec for _, spec in numbered],
                                 names=[f"line {number}" for number, _ in numbered])
        if as_json:
            emit_json(result)
        else:
            say(f"Enqueued {result['enqueued']} jobs")


def status(ctx: typer.Context, broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """Counts per state, the DLQ, average duration, agents and slots."""
    with client(ctx, broker) as qc:
        present(qc.status(), as_json, "status")


def list_jobs(
    ctx: typer.Context,
    state: Annotated[Optional[str], typer.Option("--state", help="only jobs in this state")] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", help="only jobs of this queue")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many")] = 100,
    search: Annotated[Optional[str], typer.Option(
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
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False,
    broker: BrokerOpt = None,
) -> None:
    """The stdout and stderr of the job's latest attempt (to stdout and stderr)."""
    streams = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    names = {1: "stdout", 2: "stderr"}
    with client(ctx, broker) as qc:
        for chunk in qc.logs(job_id, follow=follow):
            out = streams[chunk.stream]
            if chunk.skipped:
                out.write(f"[queuectl: {chunk.skipped} bytes of {names[chunk.stream]} "
                          "were not kept]\n".encode())
            out.write(chunk.data)
            if follow:
                out.flush()
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
