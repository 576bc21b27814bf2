"""``queuectl dlq``: the dead-letter queue."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import BrokerOpt, JsonOpt, client, emit_json, present, say

app = typer.Typer(help="Dead jobs (retries exhausted): list them, run them again.",
                  no_args_is_help=True)


@app.command("list")
def dlq_list(ctx: typer.Context, broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """Dead jobs with their last failure reason, the most recent first."""
    with client(ctx, broker) as qc:
        present(qc.dlq_list(), as_json, "dlq")


@app.command("retry")
def dlq_retry(
    ctx: typer.Context,
    job_ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...")] = None,
    all_jobs: Annotated[bool, typer.Option("--all", help="retry every dead job")] = False,
    broker: BrokerOpt = None, as_json: JsonOpt = False,
) -> None:
    """Move dead jobs back to pending with their attempts reset."""
    from queuectl.client import InvalidInput

    if bool(job_ids) == all_jobs:
        raise InvalidInput("give job ids or --all (not both)")
    with client(ctx, broker) as qc:
        retried = qc.dlq_retry(None if all_jobs else job_ids)
    if as_json:
        emit_json({"retried": retried})
    elif retried:
        for job_id in retried:
            say(f"Job {job_id} moved from the DLQ back to pending")
    else:
        say("The DLQ is empty; nothing to retry")
