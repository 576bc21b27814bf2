"""Job lifecycle actions: enqueue, lease, finish, retry or bury, cancel, revive.

Each action is a few store calls inside the caller's transaction, following
``lifecycle`` for what is allowed. No sockets here: the broker turns the
returned jobs into messages, and ``on_change`` tells it which job changed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

from queuectl.proto import jobspec
from queuectl.proto.states import ErrorCode, JobState, Outcome
from queuectl.proto.timefmt import parse_iso

from . import lifecycle
from .rows import FROM_CONFIG, JOBS
from .store import DuplicateId, Job, NewJob, Store

log = logging.getLogger(__name__)

# What a job canceled before it ran shows as its last error: a canceled run's reason.
CANCELED_REASON = lifecycle.reason_text(Outcome.CANCELED, None, "")


class JobError(Exception):
    """A user-caused error: unknown job, wrong state, duplicate id."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


class IdMaker:
    """Ids for jobs enqueued without one: 16 hex digits of a 64-bit number, the
    time in milliseconds above 20 bits of a counter. They only grow, even when
    the clock steps back, so a batch lands at the end of the id index instead of
    all over it (random ids made a 100,000-job batch a fifth slower), and they
    sort by enqueue time."""

    def __init__(self) -> None:
        self.last = 0

    def next(self, now: float) -> str:
        self.last = max(int(now * 1000) << 20, self.last + 1)
        return f"{self.last:016x}"

    def numbers(self, now: float) -> Iterator[int]:
        """Successive id numbers from ``now`` on, for a batch; ``used`` ends it."""
        return itertools.count(max(int(now * 1000) << 20, self.last + 1))

    def used(self, numbers: Iterator[int]) -> None:
        self.last = next(numbers) - 1

    def skip(self) -> None:
        """An id was taken (a clock that stepped back past a previous broker's ids):
        move a second ahead."""
        self.last += 1000 << 20


class JobService:
    def __init__(self, store: Store, config: dict[str, Any],
                 on_change: Callable[[Job], None]):
        self.store = store
        self.config = config
        self.on_change = on_change
        self.ids = IdMaker()

    def _changed(self, job: Job) -> Job:
        self.on_change(job)
        return job

    # --- enqueue ----------------------------------------------------------

    def enqueue(self, specs: list[dict[str, Any]], now: float, batch: bool = False,
                stage: int | None = None) -> list[NewJob]:
        """Validate and insert all of ``specs`` or none. Raises SpecError or JobError.
        With ``stage``, the jobs are hidden rows of that open batch (broker/batches.py).

        In a batch, an error names the job as ``job N: `` (counted from 1), which
        the client turns into the user's own label (a line number). A spec
        becomes a row of the fields it gives (rows.Job, ``given``) with today's
        defaults; this loop is the enqueue rate's hot path, hence the locals.
        """
        validate, numbers = jobspec.validate, self.ids.numbers(now)
        names = [name for name, _ in JOBS.given]
        defaults = [self.config[name] if default is FROM_CONFIG else default
                    for name, default in JOBS.given]  # the config is read once per request
        make = NewJob._make
        jobs = []
        for number, raw in enumerate(specs, 1):
            try:
                spec = validate(raw)  # a new dict: the resolved fields are set in it
                if "run_at" in spec:
                    spec["run_at"] = parse_iso(spec["run_at"])
                else:
                    spec["run_at"] = now + spec.get("delay", 0.0)
            except jobspec.SpecError as exc:
                if not batch:
                    raise
                raise jobspec.SpecError(None, f"job {number}: {exc}") from None
            if "id" not in spec:
                spec["id"] = format(next(numbers), "016x")
            jobs.append(make(map(spec.get, names, defaults)))
        self.ids.used(numbers)
        for retry in range(3):
            try:
                self.store.insert_jobs(jobs, now, stage)
                break
            except DuplicateId as exc:
                number = next(n for n, job in enumerate(jobs, 1) if job.id == exc.job_id)
                if "id" in specs[number - 1] or retry == 2:  # the user's own id
                    if not batch:
                        raise JobError(ErrorCode.CONFLICT, str(exc)) from None
                    raise JobError(ErrorCode.CONFLICT, f"job {number}: {exc}") from None
                self.ids.skip()
                jobs = [job if "id" in spec else job._replace(id=self.ids.next(now))
                        for job, spec in zip(jobs, specs, strict=True)]
        return jobs

    # --- leases -----------------------------------------------------------

    def finish(self, token: int, outcome: Outcome, *, exit_code: int | None, detail: str,
               started_at: float | None, finished_at: float, now: float,
               pid: int | None = None) -> Job | None:
        """Apply the end of attempt ``token``. Returns the job, or None if the lease is stale.

        A stale result (the lease expired, or the job was canceled or moved
        on) changes nothing: it is recorded and dropped. An attempt still open
        is ended and marked stale; an attempt already ended (as "agent lost")
        keeps that end and records the late result next to it. A resent copy
        of the result that ended the attempt changes nothing at all.
        """
        reason = lifecycle.reason_text(outcome, exit_code, detail)
        job = self.store.job_by_token(token)
        if job is None or job.state is not JobState.PROCESSING:
            attempt = self.store.attempt(token)
            if attempt is None:
                return None
            if attempt.finished_at is None:
                self.store.end_attempt(token, outcome=outcome, started_at=started_at,
                                       finished_at=finished_at, exit_code=exit_code,
                                       reason=reason, stale=True)
            elif attempt.finished_at == finished_at:
                return None  # the result that ended it, resent (its Ack was lost)
            else:
                self.store.record_late_result(token, reason or f"exit code {exit_code}")
            log.info("stale result for attempt %d recorded and dropped (%s)", token,
                     reason or "ok")
            return None
        self.store.end_attempt(token, outcome=outcome, started_at=started_at,
                               finished_at=finished_at, exit_code=exit_code, reason=reason,
                               pid=pid)
        attempts = job.attempts + 1
        ended = {"attempts": attempts, "token": None, "exit_code": exit_code,
                 "started_at": started_at if started_at is not None else job.started_at,
                 "finished_at": finished_at}
        if outcome is Outcome.OK:
            job = self.store.transition(job, JobState.COMPLETED, now, last_error=None, **ended)
        elif job.cancel_requested or outcome is Outcome.CANCELED:
            job = self.store.transition(job, JobState.CANCELED, now, last_error=reason, **ended)
        else:
            new_state = lifecycle.after_failure(attempts, job.max_retries)
            run_at = job.run_at
            if new_state is JobState.FAILED:
                run_at = now + lifecycle.backoff_delay(
                    attempts, self.config["base_backoff"], self.config["max_backoff"])
            job = self.store.transition(job, new_state, now, last_error=reason,
                                        run_at=run_at, **ended)
        log.debug("job %s attempt %d (token %d) -> %s", job.id, attempts, token, job.state.value)
        return self._changed(job)

    def release(self, token: int, now: float) -> Job | None:
        """Undo a lease whose job never started (rejected or undeliverable)."""
        job = self.store.job_by_token(token)
        self.store.delete_attempt(token)
        if job is None or job.state is not JobState.PROCESSING:
            return None
        if job.cancel_requested:
            job = self.store.transition(job, JobState.CANCELED, now, token=None,
                                        last_error=CANCELED_REASON)
        else:
            job = self.store.transition(job, JobState.PENDING, now, token=None, agent=None)
        return self._changed(job)

    # --- user actions -----------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self.store.job(job_id)
        if job is None:
            raise JobError(ErrorCode.NOT_FOUND, f"no job with id {job_id!r}")
        return job

    def cancel(self, job_id: str, now: float) -> Job:
        """Cancel a waiting job now; mark a processing one (the caller kills it)."""
        job = self.get(job_id)
        if job.state in (JobState.PENDING, JobState.FAILED):
            return self._changed(self.store.transition(
                job, JobState.CANCELED, now, last_error=CANCELED_REASON))
        if job.state is JobState.PROCESSING:
            if not job.cancel_requested:
                job = self.store.set_fields(job, now, cancel_requested=1)
            return job
        raise JobError(ErrorCode.CONFLICT, f"job {job_id!r} is {job.state.value}; only pending,"
                                   " failed and processing jobs can be canceled")

    def dlq_retry(self, job_ids: list[str] | None, now: float) -> list[str]:
        """Move dead jobs back to pending with attempts reset (None = every dead job)."""
        if job_ids is None:
            jobs = self.store.dead_jobs()
        else:
            jobs = []
            for job_id in dict.fromkeys(job_ids):  # each id once, in the order given
                job = self.get(job_id)
                if job.state is not JobState.DEAD:
                    raise JobError(ErrorCode.CONFLICT,
                                   f"job {job_id!r} is {job.state.value}, not in the DLQ")
                jobs.append(job)
        for job in jobs:
            self._changed(self.store.transition(
                job, JobState.PENDING, now, attempts=0, run_at=now, token=None,
                exit_code=None, last_error=None, started_at=None, finished_at=None))
        return [job.id for job in jobs]
