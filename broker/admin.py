"""Admin operations requested by clients (the CLI, the stats page, scripts).

``OPS`` maps an operation name to one short handler. A handler returns the
reply's result, raises a user error (JobError, SpecError, ConfigError), or
parks the request and returns ``PARKED``; the broker answers later.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Callable

from queuectl import __version__
from queuectl.proto import VERSION
from queuectl.proto import config as config_keys
from queuectl.proto import jobspec
from queuectl.proto import messages as m
from queuectl.proto.jobspec import SpecError
from queuectl.proto.states import ALL_STATES, TERMINAL_STATES, JobState
from queuectl.proto.timefmt import to_iso

from .agent_handlers import welcome
from .jobs import JobError
from .queues import waiting_reason
from .store import BatchState
from .views import attempt_view, dlq_view, job_view

if TYPE_CHECKING:
    from .server import Broker

PARKED = object()
MAX_HOLD = 30.0  # a parked request is answered within this many seconds
MAX_LIMIT = 1_000_000
MAX_SEARCH = 1000  # characters of a list search
MAX_QUEUE_LIMIT = 1_000_000
# Characters of a text argument (an id, a key, a name): every real one is far
# shorter, and an error quotes it (a review sent a 60 MiB id and got it back).
MAX_TEXT_ARG = 4096
# Jobs one request may carry: about 0.1 s of the loop. More go as a streamed
# batch (batch_add, batch_commit), which the client library does by itself.
MAX_REQUEST_JOBS = 10_000


class Call:
    """One request: its sender, its id and typed access to its arguments."""

    def __init__(self, broker: "Broker", ident: bytes, req: m.Request):
        self.broker, self.ident, self.req_id, self.args = broker, ident, req.req_id, req.args

    def arg(self, name: str, kind: type | tuple, default: Any = ..., *, nullable: bool = False) -> Any:
        if name not in self.args:
            if default is ...:
                raise SpecError(name, "is required")
            return default
        value = self.args[name]
        if value is None and nullable:
            return None
        if isinstance(value, bool) and kind is not bool:
            raise SpecError(name, "has the wrong type")
        if not isinstance(value, kind):
            raise SpecError(name, "has the wrong type")
        if type(value) is int and not -2**63 <= value < 2**63:
            raise SpecError(name, "is out of range")
        if type(value) is str and len(value) > MAX_TEXT_ARG:
            raise SpecError(name, f"must be at most {MAX_TEXT_ARG} characters")
        return value

    def strings(self, name: str) -> list[str]:
        values = self.arg(name, list)
        if not all(isinstance(value, str) for value in values):
            raise SpecError(name, "must be a list of strings")
        return values

    def hold(self) -> float:
        hold = self.arg("hold", (int, float), 0.0)
        return max(0.0, min(float(hold), MAX_HOLD))

    def park(self, key: str, check: Callable[[], Any], on_timeout: Callable[[], Any]) -> Any:
        return self.broker.park(self.ident, self.req_id, key, self.hold(), check, on_timeout)


def op_ping(call: Call) -> Any:
    return {"protocol": VERSION, "version": __version__, "pid": os.getpid()}


def op_enqueue(call: Call) -> Any:
    broker = call.broker
    if "job" in call.args:
        job = broker.jobs.enqueue([call.arg("job", dict)], broker.now)[0]
        broker.schedule(job.run_at)
        broker.metrics.enqueued(1)
        return {"id": job.id, "state": JobState.PENDING.value, "run_at": to_iso(job.run_at)}
    specs = _jobs(call)
    jobs = broker.jobs.enqueue(specs, broker.now, batch=True)
    for job in jobs:
        broker.schedule(job.run_at)
    broker.metrics.enqueued(len(jobs))
    return {"enqueued": len(jobs), "ids": [job.id for job in jobs]}


def _jobs(call: Call) -> list[Any]:
    specs = call.arg("jobs", list)
    if len(specs) > MAX_REQUEST_JOBS:
        raise SpecError("jobs", f"{len(specs)} jobs in one request; the limit is "
                        f"{MAX_REQUEST_JOBS}: send more as a streamed batch (batch_add, then "
                        "batch_commit), as Client.enqueue_many does")
    return specs


def op_batch_add(call: Call) -> Any:
    """One chunk of a streamed batch (broker/batches.py); without ``batch``, the first."""
    broker = call.broker
    specs = _jobs(call)
    if not specs:
        raise SpecError("jobs", "a chunk holds at least one job")
    batch_id, key = broker.batches.open(call.arg("batch", int, None, nullable=True),
                                        call.arg("key", str, None, nullable=True), broker.now)
    jobs = broker.jobs.enqueue(specs, broker.now, batch=True, stage=batch_id)
    broker.batches.added(batch_id, broker.mono)
    return {"batch": batch_id, "key": key, "ids": [job.id for job in jobs]}


def op_batch_commit(call: Call) -> Any:
    """Commit a batch of ``count`` jobs; answers once every job is visible (or
    with ``done`` false at the hold's end: ask again, it is idempotent)."""
    broker, batch_id = call.broker, call.arg("batch", int)
    key = call.arg("key", str, None, nullable=True)

    def result() -> Any:
        batch = broker.batches.get(batch_id, key)
        return {"done": batch.state is BatchState.DONE, "jobs": batch.rows}

    def check() -> Any:
        current = result()
        return current if current["done"] else None

    batch = broker.batches.commit(batch_id, key, call.arg("count", int), broker.now)
    if batch.state is BatchState.DONE or call.hold() == 0:
        return result()
    return call.park(f"batch:{batch_id}", check, result)


def op_batch_abort(call: Call) -> Any:
    broker = call.broker
    broker.batches.abort(call.arg("batch", int), call.arg("key", str, None, nullable=True),
                         "aborted by its client", broker.now)
    return {"aborted": True}


def op_get(call: Call) -> Any:
    broker = call.broker
    job = broker.jobs.get(call.arg("id", str))
    view = job_view(job)
    view["waiting"] = waiting_reason(job, broker.now, broker.queues, broker.agents, broker.store)
    view["attempts_log"] = [attempt_view(a) for a in broker.store.attempts(job.seq)]
    return view


def op_list(call: Call) -> Any:
    state = call.arg("state", str, None, nullable=True)
    if state is not None and state not in ALL_STATES:
        raise SpecError("state", f"must be one of {', '.join(ALL_STATES)}")
    limit = call.arg("limit", int, 100)
    if not 1 <= limit <= MAX_LIMIT:
        raise SpecError("limit", f"must be from 1 to {MAX_LIMIT}")
    search = call.arg("search", str, None, nullable=True)
    if search is not None and len(search) > MAX_SEARCH:
        raise SpecError("search", f"must be at most {MAX_SEARCH} characters")
    if search is not None and "\x00" in search:  # SQLite's LIKE would stop at it
        raise SpecError("search", "must not contain a NUL character")
    jobs = call.broker.store.list_jobs(state, call.arg("queue", str, None, nullable=True), limit,
                                       search)
    return [job_view(job) for job in jobs]


def op_status(call: Call) -> Any:
    broker = call.broker
    counts = broker.store.counts()
    completed, seconds = broker.store.completed_duration()
    busy, total = broker.agents.slots()
    return {
        "counts": counts,
        "dlq": counts[JobState.DEAD.value],
        "avg_duration_sec": round(seconds / completed, 6)
        if completed and math.isfinite(seconds) else 0.0,
        "agents": len(broker.agents),
        "slots": {"busy": busy, "total": total},
    }


def op_metrics(call: Call) -> Any:
    """Counters, durations and the per-minute series for the stats page (broker/metrics.py)."""
    return call.broker.metrics.snapshot(call.broker.now)


def op_wait(call: Call) -> Any:
    broker, job_id = call.broker, call.arg("id", str)

    def check() -> Any:
        job = broker.jobs.get(job_id)
        return {"done": True, "job": job_view(job)} if job.state in TERMINAL_STATES else None

    result = check()
    if result is not None or call.hold() == 0:
        return result or {"done": False, "job": job_view(broker.jobs.get(job_id))}
    return call.park(f"job:{job_id}", check,
                     lambda: {"done": False, "job": job_view(broker.jobs.get(job_id))})


def op_cancel(call: Call) -> Any:
    broker, job_id = call.broker, call.arg("id", str)
    job = broker.jobs.cancel(job_id, broker.now)
    if job.state is JobState.CANCELED:
        return {"id": job.id, "state": job.state.value}
    owner = broker.agents.owner(job.lease)
    if owner is not None:
        broker.send(owner.ident, m.Cancel(token=job.lease, reason="canceled by a user"))

    def check() -> Any:
        current = broker.jobs.get(job_id)
        if current.state is JobState.PROCESSING:
            return None
        return {"id": current.id, "state": current.state.value}

    def on_timeout() -> Any:
        return {"id": job_id, "state": broker.jobs.get(job_id).state.value}

    return call.park(f"job:{job_id}", check, on_timeout)


def _attempt_output(broker: "Broker", attempt: Any, state: str, offsets: list[int]) -> Any:
    """The ``logs`` document of one attempt: its output after the two offsets."""
    chunks = broker.store.output(attempt.id, {1: offsets[0], 2: offsets[1]})
    return {"attempt": attempt.number, "done": attempt.finished_at is not None, "state": state,
            "chunks": [[c.stream, c.offset, c.data] for c in chunks]}


def op_logs(call: Call) -> Any:
    """Output of the latest attempt after ``after`` offsets; parks while there is none yet.
    With ``token``, the output of that attempt of the job instead (the stats page)."""
    broker, job_id = call.broker, call.arg("id", str)
    after = call.arg("after", list, [0, 0])
    if len(after) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in after):
        raise SpecError("after", "must be [stdout offset, stderr offset]")
    wanted = call.arg("attempt", int, None, nullable=True)
    job = broker.jobs.get(job_id)
    token = call.arg("token", int, None, nullable=True)
    if token is not None:  # one earlier attempt, by its token (attempts_log); never parks
        attempt = broker.store.attempt(token)
        if attempt is None or attempt.job_seq != job.seq:
            raise JobError("not_found", f"job {job_id!r} has no attempt with token {token}")
        return _attempt_output(broker, attempt, job.state.value, after)

    def read(ready_only: bool) -> Any:
        current = broker.jobs.get(job_id)
        attempt = broker.store.latest_attempt(current.seq)
        if attempt is None:  # not started yet
            done = current.state in TERMINAL_STATES
            return {"attempt": None, "chunks": [], "done": done, "state": current.state.value} \
                if done or not ready_only else None
        offsets = after if attempt.number == wanted else [0, 0]  # a new attempt starts at 0
        document = _attempt_output(broker, attempt, current.state.value, offsets)
        if ready_only and not document["chunks"] and not document["done"] \
                and attempt.number == wanted:
            return None
        return document

    result = read(ready_only=True)
    if result is not None or call.hold() == 0:
        return result or read(ready_only=False)
    attempt = broker.store.latest_attempt(job.seq)
    # Wake on new output of the running attempt, or on any change of a job not started yet.
    key = f"out:{attempt.id}" if attempt is not None else f"job:{job_id}"
    return call.park(key, lambda: read(ready_only=True), lambda: read(ready_only=False))


def op_dlq_list(call: Call) -> Any:
    limit = call.arg("limit", int, None, nullable=True)
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise SpecError("limit", f"must be from 1 to {MAX_LIMIT}")
    return [dlq_view(job) for job in call.broker.store.dead_jobs(limit)]


def op_dlq_retry(call: Call) -> Any:
    broker = call.broker
    if call.arg("all", bool, False):
        ids = None
    else:
        ids = call.arg("ids", list)
        if not ids or not all(isinstance(i, str) for i in ids):
            raise SpecError("ids", "give job ids or all")
    return {"retried": broker.jobs.dlq_retry(ids, broker.now)}


def op_config_show(call: Call) -> Any:
    return dict(call.broker.config)


def op_config_get(call: Call) -> Any:
    key = config_keys.normalize_key(call.arg("key", str))
    return {key: call.broker.config[key]}


def op_config_set(call: Call) -> Any:
    broker = call.broker
    key = config_keys.normalize_key(call.arg("key", str))
    value = config_keys.parse_value(key, call.args.get("value"))
    proposed = {**broker.config, key: value}
    if proposed["lease_sec"] < 4 * proposed["heartbeat_sec"]:
        # Agents kill their jobs after lease - 2 x heartbeat without the broker,
        # and notice a dead connection within 2 heartbeats (agent/link.py).
        raise config_keys.ConfigError(
            f"lease_sec must be at least 4 x heartbeat_sec ({4 * proposed['heartbeat_sec']:g} with"
            f" heartbeat_sec {proposed['heartbeat_sec']:g}); got {proposed['lease_sec']:g}")
    broker.store.set_config(key, value)
    broker.config[key] = value
    if key in ("heartbeat_sec", "lease_sec", "kill_grace_sec", "output_limit"):
        for agent in broker.agents:
            welcome(broker, agent, [])
    return {key: value}


def agent_view(broker: "Broker", agent: Any) -> dict[str, Any]:
    def ids(tokens: set[int]) -> list[str]:
        return [job.id for job in (broker.store.job_by_lease(t) for t in sorted(tokens)) if job]

    return {
        "id": agent.agent_id, "host": agent.host, "pid": agent.pid, "labels": agent.labels,
        "slots": {"busy": min(len(agent.inflight), agent.slots), "total": agent.slots},
        "last_heartbeat": to_iso(agent.last_seen_wall), "connected_at": to_iso(agent.connected_at),
        "state": "stopping" if agent.departing_since is not None
        else "draining" if agent.draining else "active",
        "running": ids(agent.inflight - agent.queued()),  # or starting
        "queued": ids(agent.queued()),  # leased to it ahead of a free slot (prefetch)
    }


def op_agents(call: Call) -> Any:
    return [agent_view(call.broker, agent) for agent in call.broker.agents]


def op_stop_agents(call: Call) -> Any:
    """Ask every connected agent to stop gracefully; ``wait_agents`` follows them out."""
    broker = call.broker
    stopping = []
    for agent in broker.agents:
        broker.send(agent.ident, m.Stop())
        stopping.append(agent.agent_id)
    return {"stopping": stopping}


def op_wait_agents(call: Call) -> Any:
    broker = call.broker
    ids = set(call.strings("ids"))

    def remaining() -> list[str]:
        return sorted(a.agent_id for a in broker.agents if a.agent_id in ids)

    def check() -> Any:
        return None if remaining() else {"remaining": []}

    for agent in broker.agents:  # again: a Stop can be lost when an agent reconnects
        if agent.agent_id in ids and agent.departing_since is None:
            broker.send(agent.ident, m.Stop())
    if not remaining() or call.hold() == 0:
        return {"remaining": remaining()}
    return call.park("agents", check, lambda: {"remaining": remaining()})


def op_queue_list(call: Call) -> Any:
    return call.broker.queues.overview()


def _queue_changed(call: Call, name: str) -> Any:
    call.broker.dirty = True  # a queue may have opened: dispatch now
    for row in call.broker.queues.overview():
        if row["name"] == name:
            return row
    return {"name": name, "paused": False, "limit": None, "pending": 0, "processing": 0}


def _queue_name(call: Call) -> str:
    return jobspec.queue_name(call.arg("name", str), field="name")


def op_queue_pause(call: Call) -> Any:
    name = _queue_name(call)
    call.broker.queues.pause(name, True)
    return _queue_changed(call, name)


def op_queue_resume(call: Call) -> Any:
    name = _queue_name(call)
    call.broker.queues.pause(name, False)
    return _queue_changed(call, name)


def op_queue_limit(call: Call) -> Any:
    name = _queue_name(call)
    limit = call.arg("limit", int, nullable=True)
    if limit is not None and not 1 <= limit <= MAX_QUEUE_LIMIT:
        raise SpecError("limit", f"must be from 1 to {MAX_QUEUE_LIMIT}, or none to remove it")
    call.broker.queues.limit(name, limit)
    return _queue_changed(call, name)


# Operations that never write nor park: after a failed batch they are answered
# again on their own, so a full or read-only store still serves reads.
READ_ONLY = frozenset({"ping", "get", "list", "status", "metrics", "dlq_list", "config_show",
                       "config_get", "agents", "queue_list"})

OPS: dict[str, Callable[[Call], Any]] = {
    "ping": op_ping, "enqueue": op_enqueue, "get": op_get, "list": op_list,
    "batch_add": op_batch_add, "batch_commit": op_batch_commit, "batch_abort": op_batch_abort,
    "status": op_status, "metrics": op_metrics, "wait": op_wait, "cancel": op_cancel, "logs": op_logs,
    "dlq_list": op_dlq_list, "dlq_retry": op_dlq_retry, "config_show": op_config_show,
    "config_get": op_config_get, "config_set": op_config_set, "agents": op_agents,
    "stop_agents": op_stop_agents, "wait_agents": op_wait_agents,
    "queue_list": op_queue_list, "queue_pause": op_queue_pause, "queue_resume": op_queue_resume,
    "queue_limit": op_queue_limit,
}


def handle(broker: "Broker", ident: bytes, req: m.Request) -> Any:
    op = OPS.get(req.op)
    if op is None:
        raise JobError("invalid", f"unknown operation {req.op[:40]!r}")
    return op(Call(broker, ident, req))
