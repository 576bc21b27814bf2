"""Admin operations requested by clients (the CLI, the stats page, scripts).

Each operation is declared once, with its typed arguments and its roles, in
``queuectl/proto/ops.py``; here is one short handler per operation
(``HANDLERS``). The arguments are checked against the declaration before the
handler runs, which receives them typed. A handler returns the reply's result,
raises a user error (JobError, SpecError, ConfigError), or parks the request
(``Call.park``) and returns what that returns; the broker answers later.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from queuectl import __version__
from queuectl.proto import VERSION, ErrorCode, jobspec, ops
from queuectl.proto import config as config_keys
from queuectl.proto import messages as m
from queuectl.proto.jobspec import SpecError
from queuectl.proto.states import ALL_STATES, TERMINAL_STATES, JobState
from queuectl.proto.timefmt import to_iso

from .agent_handlers import welcome
from .agents import AgentConn
from .context import Context
from .jobs import JobError
from .queues import waiting_reason
from .store import Attempt, BatchState
from .views import attempt_view, dlq_view, job_view

MAX_HOLD = 30.0  # a parked request is answered within this many seconds
MAX_LIMIT = 1_000_000
MAX_SEARCH = 1000  # characters of a list search
MAX_QUEUE_LIMIT = 1_000_000
# Jobs one request may carry: about 0.1 s of the loop. More go as a streamed
# batch (batch_add, batch_commit), which the client library does by itself.
MAX_REQUEST_JOBS = 10_000


class Call:
    """One request: the broker's context, its sender and its id."""

    def __init__(self, ctx: Context, ident: bytes, req_id: int):
        self.ctx, self.ident, self.req_id = ctx, ident, req_id

    def park(self, args: ops.Hold, key: str, check: Callable[[], Any],
             on_timeout: Callable[[], Any]) -> Any:
        return self.ctx.park(self.ident, self.req_id, key, hold(args), check, on_timeout)


def hold(args: ops.Hold) -> float:
    """How long the request may be parked (seconds): what it asks, within MAX_HOLD."""
    return max(0.0, min(float(args.hold), MAX_HOLD))


def op_ping(call: Call, args: ops.NoArgs) -> Any:
    return {"protocol": VERSION, "version": __version__, "pid": os.getpid()}


def op_enqueue(call: Call, args: ops.EnqueueArgs) -> Any:
    ctx = call.ctx
    if args.job is not None:
        job = ctx.jobs.enqueue([args.job], ctx.now)[0]
        ctx.schedule(job.run_at)
        ctx.metrics.enqueued(1)
        return {"id": job.id, "state": JobState.PENDING.value, "run_at": to_iso(job.run_at)}
    if args.jobs is None:
        raise SpecError("jobs", "is required")
    jobs = ctx.jobs.enqueue(_jobs(args.jobs), ctx.now, batch=True)
    for job in jobs:
        ctx.schedule(job.run_at)
    ctx.metrics.enqueued(len(jobs))
    return {"enqueued": len(jobs), "ids": [job.id for job in jobs]}


def _jobs(specs: list[Any]) -> list[Any]:
    if len(specs) > MAX_REQUEST_JOBS:
        raise SpecError("jobs", f"{len(specs)} jobs in one request; the limit is "
                        f"{MAX_REQUEST_JOBS}: send more as a streamed batch (batch_add, then "
                        "batch_commit), as Client.enqueue_many does")
    return specs


def op_batch_add(call: Call, args: ops.BatchAddArgs) -> Any:
    """One chunk of a streamed batch (broker/batches.py); without ``batch``, the first."""
    ctx = call.ctx
    specs = _jobs(args.jobs)
    if not specs:
        raise SpecError("jobs", "a chunk holds at least one job")
    batch_id, key = ctx.batches.open(args.batch, args.key, ctx.now)
    jobs = ctx.jobs.enqueue(specs, ctx.now, batch=True, stage=batch_id)
    ctx.batches.added(batch_id, ctx.mono)
    return {"batch": batch_id, "key": key, "ids": [job.id for job in jobs]}


def op_batch_commit(call: Call, args: ops.BatchCommitArgs) -> Any:
    """Commit a batch of ``count`` jobs; answers once every job is visible (or
    with ``done`` false at the hold's end: ask again, it is idempotent)."""
    ctx = call.ctx

    def result() -> Any:
        batch = ctx.batches.get(args.batch, args.key)
        return {"done": batch.state is BatchState.DONE, "jobs": batch.rows}

    def check() -> Any:
        current = result()
        return current if current["done"] else None

    batch = ctx.batches.commit(args.batch, args.key, args.count, ctx.now)
    if batch.state is BatchState.DONE or hold(args) == 0:
        return result()
    return call.park(args, f"batch:{args.batch}", check, result)


def op_batch_abort(call: Call, args: ops.BatchAbortArgs) -> Any:
    call.ctx.batches.abort(args.batch, args.key, "aborted by its client", call.ctx.now)
    return {"aborted": True}


def op_get(call: Call, args: ops.JobArgs) -> Any:
    ctx = call.ctx
    job = ctx.jobs.get(args.id)
    view = job_view(job)
    view["waiting"] = waiting_reason(job, ctx.now, ctx.queues, ctx.agents, ctx.store)
    view["attempts_log"] = [attempt_view(a) for a in ctx.store.attempts(job.seq)]
    return view


def op_list(call: Call, args: ops.ListArgs) -> Any:
    if args.state is not None and args.state not in ALL_STATES:
        raise SpecError("state", f"must be one of {', '.join(ALL_STATES)}")
    if not 1 <= args.limit <= MAX_LIMIT:
        raise SpecError("limit", f"must be from 1 to {MAX_LIMIT}")
    search = args.search
    if search is not None and len(search) > MAX_SEARCH:
        raise SpecError("search", f"must be at most {MAX_SEARCH} characters")
    if search is not None and "\x00" in search:  # SQLite's LIKE would stop at it
        raise SpecError("search", "must not contain a NUL character")
    jobs = call.ctx.store.list_jobs(args.state, args.queue, args.limit, search)
    return [job_view(job) for job in jobs]


def op_status(call: Call, args: ops.NoArgs) -> Any:
    ctx = call.ctx
    counts = ctx.store.counts()
    completed, seconds = ctx.store.completed_duration()
    busy, total = ctx.agents.slots()
    return {
        "counts": counts,
        "dlq": counts[JobState.DEAD.value],
        "avg_duration_sec": round(seconds / completed, 6)
        if completed and math.isfinite(seconds) else 0.0,
        "agents": len(ctx.agents),
        "slots": {"busy": busy, "total": total},
    }


def op_metrics(call: Call, args: ops.NoArgs) -> Any:
    """Counters, durations and the per-minute series for the stats page (broker/metrics.py)."""
    return call.ctx.metrics.snapshot(call.ctx.now)


def op_wait(call: Call, args: ops.JobHoldArgs) -> Any:
    jobs = call.ctx.jobs

    def check() -> Any:
        job = jobs.get(args.id)
        return {"done": True, "job": job_view(job)} if job.state in TERMINAL_STATES else None

    def not_yet() -> Any:
        return {"done": False, "job": job_view(jobs.get(args.id))}

    result = check()
    if result is not None or hold(args) == 0:
        return result or not_yet()
    return call.park(args, f"job:{args.id}", check, not_yet)


def op_cancel(call: Call, args: ops.JobHoldArgs) -> Any:
    ctx = call.ctx
    job = ctx.jobs.cancel(args.id, ctx.now)
    if job.state is JobState.CANCELED:
        return {"id": job.id, "state": job.state.value}
    # cancel() returns a canceled job or a processing one, which holds its attempt's token
    assert job.token is not None
    owner = ctx.agents.owner(job.token)
    if owner is not None:
        ctx.send(owner.ident, m.Cancel(token=job.token, reason="canceled by a user"))

    def check() -> Any:
        current = ctx.jobs.get(args.id)
        if current.state is JobState.PROCESSING:
            return None
        return {"id": current.id, "state": current.state.value}

    def on_timeout() -> Any:
        return {"id": args.id, "state": ctx.jobs.get(args.id).state.value}

    return call.park(args, f"job:{args.id}", check, on_timeout)


def _attempt_output(ctx: Context, attempt: Attempt, state: str, offsets: list[int]) -> Any:
    """The ``logs`` document of one attempt: its output after the two offsets."""
    chunks = ctx.store.output(attempt.id, {1: offsets[0], 2: offsets[1]})
    return {"attempt": attempt.number, "done": attempt.finished_at is not None, "state": state,
            "chunks": [[c.stream, c.offset, c.data] for c in chunks]}


def op_logs(call: Call, args: ops.LogsArgs) -> Any:
    """Output of the latest attempt after ``after`` offsets; parks while there is none yet.
    With ``token``, the output of that attempt of the job instead (the stats page)."""
    ctx, job_id, after, wanted = call.ctx, args.id, args.after, args.attempt
    if len(after) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in after):
        raise SpecError("after", "must be [stdout offset, stderr offset]")
    job = ctx.jobs.get(job_id)
    if args.token is not None:  # one earlier attempt, by its token (attempts_log); never parks
        attempt = ctx.store.attempt(args.token)
        if attempt is None or attempt.job_seq != job.seq:
            raise JobError(ErrorCode.NOT_FOUND,
                           f"job {job_id!r} has no attempt with token {args.token}")
        return _attempt_output(ctx, attempt, job.state.value, after)

    def read(ready_only: bool) -> Any:
        current = ctx.jobs.get(job_id)
        attempt = ctx.store.latest_attempt(current.seq)
        if attempt is None:  # not started yet
            done = current.state in TERMINAL_STATES
            return {"attempt": None, "chunks": [], "done": done, "state": current.state.value} \
                if done or not ready_only else None
        offsets = after if attempt.number == wanted else [0, 0]  # a new attempt starts at 0
        document = _attempt_output(ctx, attempt, current.state.value, offsets)
        if ready_only and not document["chunks"] and not document["done"] \
                and attempt.number == wanted:
            return None
        return document

    result = read(ready_only=True)
    if result is not None or hold(args) == 0:
        return result or read(ready_only=False)
    attempt = ctx.store.latest_attempt(job.seq)
    # Wake on new output of the running attempt, or on any change of a job not started yet.
    key = f"out:{attempt.id}" if attempt is not None else f"job:{job_id}"
    return call.park(args, key, lambda: read(ready_only=True), lambda: read(ready_only=False))


def _limit(limit: int | None) -> int | None:
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise SpecError("limit", f"must be from 1 to {MAX_LIMIT}")
    return limit


def op_dlq_list(call: Call, args: ops.LimitArgs) -> Any:
    return [dlq_view(job) for job in call.ctx.store.dead_jobs(_limit(args.limit))]


def op_dlq_retry(call: Call, args: ops.DlqRetryArgs) -> Any:
    if not args.all and not args.ids:
        raise SpecError("ids", "give job ids or all")
    return {"retried": call.ctx.jobs.dlq_retry(None if args.all else args.ids, call.ctx.now)}


def op_config_show(call: Call, args: ops.NoArgs) -> Any:
    return dict(call.ctx.config)


def op_config_get(call: Call, args: ops.KeyArgs) -> Any:
    key = config_keys.normalize_key(args.key)
    return {key: call.ctx.config[key]}


def op_config_set(call: Call, args: ops.ConfigSetArgs) -> Any:
    ctx = call.ctx
    key = config_keys.normalize_key(args.key)
    value = config_keys.parse_value(key, args.value)
    proposed = {**ctx.config, key: value}
    if proposed["lease_sec"] < 4 * proposed["heartbeat_sec"]:
        # Agents kill their jobs after lease - 2 x heartbeat without the broker,
        # and notice a dead connection within 2 heartbeats (agent/link.py).
        raise config_keys.ConfigError(
            f"lease_sec must be at least 4 x heartbeat_sec ({4 * proposed['heartbeat_sec']:g} with"
            f" heartbeat_sec {proposed['heartbeat_sec']:g}); got {proposed['lease_sec']:g}")
    ctx.store.set_config(key, value)
    ctx.config[key] = value
    if key in config_keys.SENT_TO_AGENTS:
        for agent in ctx.agents:
            welcome(ctx, agent, [])
    return {key: value}


def agent_view(ctx: Context, agent: AgentConn) -> dict[str, Any]:
    def ids(tokens: set[int]) -> list[str]:
        return [job.id for job in (ctx.store.job_by_token(t) for t in sorted(tokens)) if job]

    return {
        "id": agent.agent_id, "host": agent.host, "pid": agent.pid, "labels": agent.labels,
        "slots": {"busy": min(len(agent.inflight), agent.slots), "total": agent.slots},
        "last_heartbeat": to_iso(agent.last_seen_wall), "connected_at": to_iso(agent.connected_at),
        "state": "stopping" if agent.departing_since is not None
        else "draining" if agent.draining else "active",
        "running": ids(agent.inflight - agent.queued()),  # or starting
        "queued": ids(agent.queued()),  # leased to it ahead of a free slot (prefetch)
    }


def op_agents(call: Call, args: ops.NoArgs) -> Any:
    return [agent_view(call.ctx, agent) for agent in call.ctx.agents]


def op_stop_agents(call: Call, args: ops.NoArgs) -> Any:
    """Ask every connected agent to stop gracefully; ``wait_agents`` follows them out."""
    ctx = call.ctx
    stopping = []
    for agent in ctx.agents:
        ctx.send(agent.ident, m.Stop())
        stopping.append(agent.agent_id)
    return {"stopping": stopping}


def op_wait_agents(call: Call, args: ops.AgentIdsArgs) -> Any:
    ctx, ids = call.ctx, set(args.ids)

    def remaining() -> list[str]:
        return sorted(a.agent_id for a in ctx.agents if a.agent_id in ids)

    def check() -> Any:
        return None if remaining() else {"remaining": []}

    for agent in ctx.agents:  # again: a Stop can be lost when an agent reconnects
        if agent.agent_id in ids and agent.departing_since is None:
            ctx.send(agent.ident, m.Stop())
    if not remaining() or hold(args) == 0:
        return {"remaining": remaining()}
    return call.park(args, "agents", check, lambda: {"remaining": remaining()})


def op_queue_list(call: Call, args: ops.NoArgs) -> Any:
    return call.ctx.queues.overview()


def _queue_changed(ctx: Context, name: str) -> Any:
    ctx.wake()  # a queue may have opened: dispatch now
    for row in ctx.queues.overview():
        if row["name"] == name:
            return row
    return {"name": name, "paused": False, "limit": None, "pending": 0, "processing": 0}


def op_queue_pause(call: Call, args: ops.QueueArgs) -> Any:
    name = jobspec.queue_name(args.name, field="name")
    call.ctx.queues.pause(name, True)
    return _queue_changed(call.ctx, name)


def op_queue_resume(call: Call, args: ops.QueueArgs) -> Any:
    name = jobspec.queue_name(args.name, field="name")
    call.ctx.queues.pause(name, False)
    return _queue_changed(call.ctx, name)


def op_queue_limit(call: Call, args: ops.QueueLimitArgs) -> Any:
    name = jobspec.queue_name(args.name, field="name")
    if args.limit is not None and not 1 <= args.limit <= MAX_QUEUE_LIMIT:
        raise SpecError("limit", f"must be from 1 to {MAX_QUEUE_LIMIT}, or none to remove it")
    call.ctx.queues.limit(name, args.limit)
    return _queue_changed(call.ctx, name)


HANDLERS: dict[str, Callable[[Call, Any], Any]] = {
    name[3:]: handler for name, handler in globals().items() if name.startswith("op_")
}
if HANDLERS.keys() != ops.OPS.keys():  # one handler for each declared operation, no more
    raise ImportError(f"admin handlers and queuectl.proto.ops disagree: "
                      f"{sorted(HANDLERS.keys() ^ ops.OPS.keys())}")


def handle(ctx: Context, ident: bytes, req: m.Request) -> Any:
    op = ops.OPS.get(req.op)
    if op is None:
        raise JobError(ErrorCode.INVALID, f"unknown operation {req.op[:40]!r}")
    return HANDLERS[op.name](Call(ctx, ident, req.req_id), ops.parse_args(op, req.args))
