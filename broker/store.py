"""The broker's SQLite store (APSW): the one ``Store`` every caller uses.

Its SQL for jobs, claiming, queues, counts and config is here; attempts and
output are in store_attempts.py, streamed batches in store_batches.py, the
loop's transaction and store failures in store_failures.py (all parts of
``Store``), the schema in migrations.py and the row types in rows.py.

Only the broker process opens this file. Methods return dataclasses, never
rows. Timestamps are epoch seconds (UTC) in REAL columns.

Two hidden columns make the hot paths index probes:
* ``due`` is 1 exactly when a job may be claimed now (pending or failed, and
  its run_at has come). ``promote_due`` sets it when the broker's timer
  fires, so scheduled jobs never slow down claiming.
* ``token`` is the token of the job's current attempt (``attempts.id``, a
  fencing token) while it is processing.
Per-state counts and the completed-duration totals are kept by triggers in
the same transactions that change the jobs, so ``status`` is O(1).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import apsw
import apsw.bestpractice

from queuectl.proto.states import ALL_STATES, TERMINAL_STATES, JobState

from . import lifecycle
from .migrations import MIGRATIONS as MIGRATIONS  # re-exported, for tests
from .migrations import migrate
from .rows import JOBS, Row, literal, one_of

# Re-exported (explicitly, "X as X"): callers import the row types from here.
from .rows import Attempt as Attempt
from .rows import Batch as Batch
from .rows import BatchState as BatchState
from .rows import Job as Job
from .rows import NewJob as NewJob
from .store_attempts import AttemptStore
from .store_batches import BatchStore
from .store_failures import StoreFailures
from .store_failures import StoreUnavailable as StoreUnavailable  # re-exported, for callers
from .store_failures import copy_store as copy_store  # re-exported, for callers

log = logging.getLogger(__name__)

# States in SQL text come from the enums, never retyped. Literals, not bound
# parameters, where the planner must match a partial index's WHERE.
_PENDING, _PROCESSING, _DEAD = (
    literal(s) for s in (JobState.PENDING, JobState.PROCESSING, JobState.DEAD))
_RUNNABLE = one_of(lifecycle.RUNNABLE)  # as in jobs_timer's WHERE (tests/unit/test_rows.py)
_ACTIVE = one_of(s for s in JobState if s not in TERMINAL_STATES)

_JOB = JOBS.select
# A new job's row: the fields its spec gives (rows.Job), then these.
_NEW_JOB_EXTRA = ("state", "due", "created_at", "updated_at", "batch")
_INSERT_JOB = JOBS.insert_sql(_NEW_JOB_EXTRA)
_CLAIM_JOB = (
    "UPDATE jobs SET state = :state, due = 0, token = :token, agent = :agent,"
    " updated_at = :updated_at, started_at = NULL, finished_at = NULL, exit_code = NULL"
    f" WHERE seq = :seq AND state = :was RETURNING {_JOB}")


@functools.cache
def _job_update(names: tuple[str, ...],
                fixed: str) -> tuple[str, tuple[tuple[str, Callable[[Any], Any]], ...]]:
    """The guarded UPDATE that sets ``fixed`` and the columns ``names`` (each
    bound by its name), and the dumps those columns need. Raises ValueError for
    a column a caller may not set. Cached: the call sites pass a few fixed sets."""
    unknown = set(names) - JOBS.settable
    if unknown:
        raise ValueError(f"cannot set {sorted(unknown)}")
    assignments = ", ".join(part for part in (fixed, JOBS.assignments(names)) if part)
    dumps = tuple((name, JOBS.dumps[name]) for name in names if name in JOBS.dumps)
    return (f"UPDATE jobs SET {assignments} WHERE seq = :seq AND state = :was"
            f" RETURNING {_JOB}", dumps)


# Rows of closed queues a claim walks past before it takes each open queue's head.
CLOSED_SKIP = 64


class DuplicateId(Exception):
    def __init__(self, job_id: str, in_batch: bool = False, staged: bool = False):
        super().__init__(f"id {job_id!r} appears more than once in the batch" if in_batch
                         else f"a job with id {job_id!r} is being enqueued by another batch"
                         if staged else f"a job with id {job_id!r} already exists")
        self.job_id = job_id


class StaleState(Exception):
    """The job was not in the state the caller read; nothing was changed."""


def _labels_match(requires: str | None, labels: str | None) -> int:
    """SQL function: does an agent with ``labels`` satisfy ``requires``? (both JSON)"""
    if requires is None:
        return 1
    needed = json.loads(requires)
    have = json.loads(labels) if labels else {}
    return int(all(have.get(key) == value for key, value in needed.items()))


class Store(AttemptStore, BatchStore, StoreFailures):
    """The broker's store: jobs, claiming, queues, counts and config here; attempts
    and output (store_attempts.py), streamed batches (store_batches.py) and the
    loop's transaction with its failures (store_failures.py) are parts of it, so
    callers see one object."""

    def __init__(self, path: str, synchronous: str = "NORMAL"):
        self.path = path
        self.conn = apsw.Connection(path)
        for setup in (apsw.bestpractice.connection_wal,
                      apsw.bestpractice.connection_enable_foreign_keys,
                      apsw.bestpractice.connection_dqs,
                      apsw.bestpractice.connection_recursive_triggers):
            setup(self.conn)
        # Only the broker writes this file, so a lock belongs to someone else (a
        # backup, a sqlite3 shell). Wait a little, then fail the batch: clients
        # get "database is locked" well within their timeout, and the broker
        # retries with backoff instead of freezing for long.
        self.conn.set_busy_timeout(1000)
        # NORMAL in WAL mode survives a crash of the process; FULL also
        # survives a power loss, at about a tenth of the commit rate.
        self.conn.pragma("synchronous", synchronous)
        # apsw types a scalar function as taking any SQLite values, however many;
        # this one takes 2, and SQL calls it with the TEXT (or NULL) label columns.
        self.conn.create_scalar_function("qc_labels_match", _labels_match, 2,  # type: ignore[arg-type]
                                         deterministic=True)
        # Claim cache: label sets (with the queues closed to them) that matched
        # no due placed job, and the generation of placed jobs they were checked against.
        self._placed_generation = 0
        self._no_placed_match: dict[tuple[str, frozenset[str]], int] = {}
        migrate(self.conn, path)

    def close(self) -> None:
        with contextlib.suppress(apsw.Error):
            apsw.bestpractice.connection_optimize(self.conn)
        self.conn.close()

    def transaction(self) -> apsw.Connection:
        """A transaction, or a savepoint when nested inside one: ``with store.transaction():``.
        (The connection itself is that context manager; no wrapper on the hot path.)"""
        return self.conn

    def total_changes(self) -> int:
        """Rows changed through this connection since it opened (committed or not)."""
        return self.conn.total_changes()

    def _one(self, sql: str, params: Any = ()) -> Row | None:
        row: Row  # APSW's rows are Any to mypy: typed here, where they come out
        for row in self.conn.execute(sql, params):
            return row
        return None

    # --- jobs -------------------------------------------------------------

    def insert_jobs(self, jobs: list[NewJob], now: float, stage: int | None = None) -> None:
        """Insert all of ``jobs`` or none (raises DuplicateId). With ``stage``, as
        hidden rows of that open batch: uncounted, and with due = 2."""
        seen: set[str] = set()
        for job in jobs:
            if job.id in seen:
                raise DuplicateId(job.id, in_batch=True)
            seen.add(job.id)
        dump, pending = JOBS.dump_given, JobState.PENDING.value
        rows = [  # in the order of _INSERT_JOB's columns: given, then _NEW_JOB_EXTRA
            dump(j) + [pending, 2 if stage is not None else 1 if j.run_at <= now else 0,
                       now, now, stage]
            for j in jobs
        ]
        try:
            with self.conn:
                self.conn.executemany(_INSERT_JOB, rows)
                if stage is None:
                    self.conn.execute(f"UPDATE counts SET n = n + ? WHERE state = {_PENDING}",
                                      (len(rows),))
                else:  # new rows take seqs above every row there is: the range grows
                    self.conn.execute(
                        "UPDATE batches SET rows = rows + ?,"
                        " last_seq = (SELECT max(seq) FROM jobs) WHERE id = ?", (len(rows), stage))
        except apsw.ConstraintError:
            for job in jobs:
                owner = self._one("SELECT batch FROM jobs WHERE id = ?", (job.id,))
                if owner is not None:
                    raise DuplicateId(job.id, in_batch=owner[0] is not None and owner[0] == stage,
                                      staged=owner[0] is not None) from None
            raise
        if stage is None and any(j.requires and j.run_at <= now for j in jobs):
            self._placed_generation += 1

    def job(self, job_id: str) -> Job | None:
        row = self._one(f"SELECT {_JOB} FROM jobs WHERE id = ? AND batch IS NULL", (job_id,))
        return JOBS.load(row) if row else None

    def job_by_token(self, token: int) -> Job | None:
        row = self._one(f"SELECT {_JOB} FROM jobs WHERE token = ?", (token,))
        return JOBS.load(row) if row else None

    def list_jobs(self, state: str | None = None, queue: str | None = None,
                  limit: int = 100, search: str | None = None) -> list[Job]:
        """Newest first; ``search`` is a case-insensitive substring of the id or command."""
        where = ["batch IS NULL"]
        params: list[str | int] = []
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if queue is not None:
            where.append("queue = ?")
            params.append(queue)
        if search:
            pattern = "%" + re.sub(r"([\\%_])", r"\\\1", search) + "%"
            where.append("(id LIKE ? ESCAPE '\\' OR command LIKE ? ESCAPE '\\')")
            params += [pattern, pattern]
        clause = f"WHERE {' AND '.join(where)}"
        params.append(limit)
        sql = f"SELECT {_JOB} FROM jobs {clause} ORDER BY seq DESC LIMIT ?"
        return [JOBS.load(row) for row in self.conn.execute(sql, params)]

    def _next_free(self, closed: frozenset[str]) -> Row | None:
        """The best due job that needs no labels, from a queue not in ``closed``
        (paused, or at its limit): (priority, run_at, seq, state, attempts).

        With every queue open, one probe of ``jobs_claim``, however many queues
        there are. With some closed, the same order is walked past the closed
        queues' jobs for up to CLOSED_SKIP rows; a longer closed backlog ahead
        switches to ``jobs_claim_queue``: the head of each queue in turn, one
        seek each, skipping the closed ones whatever their backlog."""
        if not closed:
            return self._one("SELECT priority, run_at, seq, state, attempts FROM jobs"
                             " WHERE due = 1 AND requires IS NULL"
                             " ORDER BY priority, run_at, seq LIMIT 1")
        limit = CLOSED_SKIP if self._has_queue_index() else None
        row: Row | None  # APSW's rows are Any to mypy
        rows = self.conn.execute(
            "SELECT queue, priority, run_at, seq, state, attempts FROM jobs"
            " WHERE due = 1 AND requires IS NULL ORDER BY priority, run_at, seq")
        try:
            for skipped, row in enumerate(rows):
                if row[0] not in closed:
                    return row[1:]
                if limit is not None and skipped >= limit:
                    break
            else:
                return None
        finally:
            rows.close()
        best, queue = None, None
        while True:
            row = self._one(
                "SELECT queue, priority, run_at, seq, state, attempts FROM jobs"
                " WHERE due = 1 AND requires IS NULL AND queue > ?"
                " ORDER BY queue, priority, run_at, seq LIMIT 1",
                ("" if queue is None else queue,))
            if row is None:
                return best
            queue = row[0]
            if queue not in closed and (best is None or row[1:4] < best[:3]):
                best = row[1:]

    def _next_due(self, labels_json: str | None, closed: frozenset[str]) -> Row | None:
        """The best due job for an agent with these labels: (seq, state, attempts) or None."""
        free = self._next_free(closed)
        placed = None
        cache_key = (labels_json or "", closed)
        if labels_json is not None and \
                self._no_placed_match.get(cache_key) != self._placed_generation:
            skip = ""
            if closed:
                skip = f" AND queue NOT IN ({', '.join('?' * len(closed))})"
            placed = self._one(f"SELECT priority, run_at, seq, state, attempts FROM jobs"
                               f" WHERE due = 1 AND requires IS NOT NULL"
                               f" AND qc_labels_match(requires, ?){skip}"
                               f" ORDER BY priority, run_at, seq LIMIT 1",
                               (labels_json, *sorted(closed)))
            if placed is None:
                if len(self._no_placed_match) > 10_000:  # label sets x closed sets: bounded
                    self._no_placed_match.clear()
                self._no_placed_match[cache_key] = self._placed_generation
        best = min((row for row in (free, placed) if row is not None), default=None)
        return best[2:] if best else None

    def claim(self, now: float, agent_id: str, owner: bytes, labels_json: str | None,
              closed: frozenset[str] = frozenset()) -> tuple[Job, int] | None:
        """Lease the next due job this agent may run, from a queue not in
        ``closed`` (paused, or at its limit); returns (job, token) or None.
        ``owner`` is the connection's digest (broker/intake.py): only it may
        report the attempt.

        The broker is the only writer and runs one thread, so select, insert
        and update inside one transaction cannot interleave with another claim.
        """
        row = self._next_due(labels_json, closed)
        if row is None:
            return None
        seq, state, attempts = row
        lifecycle.check(JobState(state), JobState.PROCESSING)
        with self.conn:
            self.conn.execute(
                "INSERT INTO attempts (job_seq, number, agent, owner, dispatched_at)"
                " VALUES (:job_seq, :number, :agent, :owner, :dispatched_at)",
                {"job_seq": seq, "number": attempts + 1, "agent": agent_id, "owner": owner,
                 "dispatched_at": now})
            token = self.conn.last_insert_rowid()
            job_row = self._one(_CLAIM_JOB, {
                "state": JobState.PROCESSING.value, "token": token, "agent": agent_id,
                "updated_at": now, "seq": seq, "was": state})
        assert job_row is not None  # single writer: the row we just read is unchanged
        return JOBS.load(job_row), token

    def transition(self, job: Job, new: JobState, now: float, **fields: Any) -> Job:
        """Move ``job`` from the state it was read in to ``new``, setting ``fields``.

        One ``UPDATE ... WHERE seq = :seq AND state = :was``: raises
        InvalidTransition when the lifecycle forbids the change, StaleState when
        the job is no longer in ``job.state``, ValueError for a column that is
        not settable (rows.Job).
        """
        lifecycle.check(job.state, new)
        sql, dumps = _job_update(tuple(fields), "state = :state, updated_at = :updated_at,"
                                                " due = :due")
        run_at = fields.get("run_at", job.run_at)
        due = 1 if new in lifecycle.RUNNABLE and run_at <= now else 0
        for name, dump in dumps:
            if fields[name] is not None:
                fields[name] = dump(fields[name])
        fields.update(state=new.value, updated_at=now, due=due, seq=job.seq, was=job.state.value)
        row = self._one(sql, fields)
        if row is None:
            raise StaleState(f"job {job.id} is no longer {job.state.value}")
        if due and job.requires is not None:
            self._placed_generation += 1
        return JOBS.load(row)

    def set_fields(self, job: Job, now: float, **fields: Any) -> Job:
        """Change bookkeeping fields of a job without changing its state."""
        sql, dumps = _job_update(tuple(fields), "updated_at = :updated_at")
        for name, dump in dumps:
            if fields[name] is not None:
                fields[name] = dump(fields[name])
        fields.update(updated_at=now, seq=job.seq, was=job.state.value)
        row = self._one(sql, fields)
        if row is None:
            raise StaleState(f"job {job.id} is no longer {job.state.value}")
        return JOBS.load(row)

    def promote_due(self, now: float) -> int:
        """Make every waiting job whose run_at has come claimable; returns how many."""
        self.conn.execute(
            f"UPDATE jobs SET due = 1 WHERE due = 0 AND state IN {_RUNNABLE}"
            " AND run_at <= ?", (now,))
        promoted = self.conn.changes()
        if promoted:
            self._placed_generation += 1  # some of them may require labels
        return promoted

    # --- queues ---------------------------------------------------------------

    def _has_queue_index(self) -> bool:
        return self._one("SELECT 1 FROM sqlite_master WHERE type = 'index'"
                         " AND name = 'jobs_claim_queue'") is not None

    def use_queue_index(self, wanted: bool) -> None:
        """The per-queue claim index exists while some queue has a rule (it lets
        a claim step over a closed queue's backlog), and not otherwise: it would
        cost every enqueue a b-tree more. Building it reads the due jobs once."""
        if wanted and not self._has_queue_index():
            self.conn.execute("CREATE INDEX jobs_claim_queue ON jobs(queue, priority, run_at, seq)"
                              " WHERE due = 1 AND requires IS NULL")
        elif not wanted and self._has_queue_index():
            self.conn.execute("DROP INDEX jobs_claim_queue")

    def queue_rules(self) -> dict[str, tuple[bool, int | None]]:
        """name -> (paused, max_running) for every queue with a rule."""
        return {name: (bool(paused), limit) for name, paused, limit in
                self.conn.execute("SELECT name, paused, max_running FROM queues")}

    def set_queue_rule(self, name: str, paused: bool, max_running: int | None) -> None:
        if not paused and max_running is None:
            self.conn.execute("DELETE FROM queues WHERE name = ?", (name,))
        else:
            self.conn.execute(
                "INSERT INTO queues (name, paused, max_running) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused,"
                " max_running = excluded.max_running", (name, int(paused), max_running))

    def running_by_queue(self) -> dict[str, int]:
        """Leased jobs per queue (at most the fleet's slots and prefetch: cheap)."""
        return dict(self.conn.execute(
            f"SELECT queue, count(*) FROM jobs WHERE state = {_PROCESSING} GROUP BY queue"))

    def active_by_queue(self) -> dict[str, dict[str, int]]:
        """Jobs not yet finished, per queue and state."""
        result: dict[str, dict[str, int]] = {}
        for queue, state, n in self.conn.execute(
                "SELECT queue, state, count(*) FROM jobs"
                f" WHERE state IN {_ACTIVE} AND batch IS NULL"
                " GROUP BY queue, state"):
            result.setdefault(queue, {})[state] = n
        return result

    def ahead_of(self, job: Job) -> int:
        """Due jobs of the same queue that a free slot would take first (up to 1,000)."""
        row = self._one(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE due = 1 AND requires IS NULL"
            " AND queue = ? AND (priority, run_at, seq) < (?, ?, ?) LIMIT 1000)",
            (job.queue, job.priority, job.run_at, job.seq))
        return row[0] if row else 0

    def next_due(self) -> float | None:
        """The earliest run_at the timer waits for. Through ``jobs_timer`` by name:
        left to itself the planner walked ``jobs_state`` over every pending job
        (74 ms with 300,000 due jobs, against 0.01 ms)."""
        row = self._one("SELECT min(run_at) FROM jobs INDEXED BY jobs_timer"
                        f" WHERE due = 0 AND state IN {_RUNNABLE}")
        return row[0] if row else None

    def leased_jobs(self) -> list[Job]:
        return [JOBS.load(r) for r in self.conn.execute(
            f"SELECT {_JOB} FROM jobs WHERE token IS NOT NULL")]

    def leases(self) -> list[tuple[int, str | None, bytes | None, bool]]:
        """(token, agent id, owner, started?) of every job being processed."""
        return [(token, agent, owner, bool(started)) for token, agent, owner, started in
                self.conn.execute(
                    "SELECT j.token, j.agent, a.owner, a.started_at IS NOT NULL"
                    " FROM jobs j LEFT JOIN attempts a ON a.id = j.token"
                    " WHERE j.token IS NOT NULL")]

    def dead_jobs(self, limit: int | None = None) -> list[Job]:
        return [JOBS.load(r) for r in self.conn.execute(
            f"SELECT {_JOB} FROM jobs WHERE state = {_DEAD} ORDER BY finished_at DESC, seq DESC"
            f" LIMIT ?", (limit if limit is not None else -1,))]

    # --- stats and config -------------------------------------------------

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(ALL_STATES, 0)
        counts.update(self.conn.execute("SELECT state, n FROM counts"))
        return counts

    def completed_duration(self) -> tuple[int, float]:
        totals = dict(self.conn.execute("SELECT name, value FROM totals"))
        return int(totals["completed_n"]), float(totals["completed_seconds"])

    def config(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self.conn.execute(
            "SELECT key, value FROM config")}

    def set_config(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT INTO config (key, value) VALUES (?, ?)"
                          " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                          (key, json.dumps(value)))
