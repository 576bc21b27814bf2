"""The job lifecycle: which state changes are allowed, and the retry policy.

Pure functions and tables, no I/O, so they are tested on their own and the
store can enforce them on every UPDATE.
"""

from __future__ import annotations

from typing import assert_never

from queuectl.proto.states import JobState, Outcome

P, R, C, F, D, X = (JobState.PENDING, JobState.PROCESSING, JobState.COMPLETED,
                    JobState.FAILED, JobState.DEAD, JobState.CANCELED)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    P: frozenset({R, X}),           # claimed by an agent; canceled
    F: frozenset({R, X}),           # retried; canceled while waiting
    # finished; failed with retries left; retries exhausted; canceled; and
    # back to pending when the attempt never started (rejected, undeliverable)
    R: frozenset({C, F, D, X, P}),
    D: frozenset({P}),              # dlq retry
    C: frozenset(),
    X: frozenset(),
}

# States from which a job can be claimed once its run_at has come.
RUNNABLE = (P, F)


class InvalidTransition(Exception):
    def __init__(self, old: JobState, new: JobState):
        super().__init__(f"a job cannot go from {old.value} to {new.value}")
        self.old, self.new = old, new


def check(old: JobState, new: JobState) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(old, new)


def backoff_delay(failed_attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt number ``failed_attempts`` (1, 2, ...)."""
    try:
        delay = float(base) ** failed_attempts
    except OverflowError:
        return float(cap)
    return min(delay, float(cap))


def after_failure(failed_attempts: int, max_retries: int) -> JobState:
    """``failed`` (a retry is due later) or ``dead`` (retries exhausted)."""
    return F if failed_attempts < max_retries else D


def reason_text(outcome: Outcome, exit_code: int | None, detail: str) -> str | None:
    """The short reason users see in ``last_error``, the DLQ and the attempts log."""
    if outcome is Outcome.OK:
        return None
    if outcome is Outcome.EXIT:
        return f"exit code {exit_code}"
    if outcome is Outcome.SIGNAL:
        return f"killed by signal {detail}" if detail else "killed by a signal"
    if outcome is Outcome.TIMEOUT:
        return "timeout"
    if outcome is Outcome.CANCELED:
        return "canceled"
    if outcome is Outcome.SPAWN_ERROR:
        return f"could not start: {detail}"
    if outcome is Outcome.LEASE_LOST:
        return "agent lost"
    if outcome is Outcome.STOPPED:
        return "agent stopped before the job finished"
    assert_never(outcome)  # every Outcome is handled above (mypy checks it)
