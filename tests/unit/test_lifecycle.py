"""The retry policy and failure reasons: pure functions of broker/lifecycle."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuectl.broker import lifecycle
from queuectl.proto.states import JobState, Outcome

# --- backoff_delay ------------------------------------------------------------

@pytest.mark.parametrize("n, expected", [(1, 2.0), (2, 4.0), (3, 8.0), (10, 1024.0)])
def test_backoff_is_base_to_the_power_of_the_failed_attempt(n, expected):
    assert lifecycle.backoff_delay(n, 2, 3600) == expected


def test_backoff_with_a_fractional_base():
    assert lifecycle.backoff_delay(2, 1.5, 3600) == pytest.approx(2.25)
    assert lifecycle.backoff_delay(3, 1.5, 3600) == pytest.approx(3.375)


def test_backoff_base_one_retries_every_second():
    assert [lifecycle.backoff_delay(n, 1, 3600) for n in (1, 2, 50)] == [1.0, 1.0, 1.0]


def test_backoff_is_capped_by_max_backoff():
    assert lifecycle.backoff_delay(12, 2, 3600) == 3600.0  # 4096 > 3600
    assert lifecycle.backoff_delay(11, 2, 3600) == 2048.0  # below the cap: untouched
    assert lifecycle.backoff_delay(3, 10, 50) == 50.0


def test_backoff_cap_of_zero_retries_immediately():
    assert lifecycle.backoff_delay(5, 2, 0) == 0.0


@pytest.mark.parametrize("n, base", [(10_000, 2), (10**6, 1e6), (10**100, 2), (5000, 1.5)])
def test_backoff_for_huge_attempt_numbers_is_the_cap_not_an_overflow(n, base):
    delay = lifecycle.backoff_delay(n, base, 3600)
    assert delay == 3600.0
    assert math.isfinite(delay)


@given(n=st.integers(1, 10_000), base=st.floats(1, 1e6), cap=st.floats(0, 1e9))
def test_backoff_never_exceeds_the_cap_and_never_shrinks_as_attempts_grow(n, base, cap):
    delay = lifecycle.backoff_delay(n, base, cap)
    following = lifecycle.backoff_delay(n + 1, base, cap)
    assert 0 <= delay <= cap
    assert following >= delay
    assert math.isfinite(delay)
    # and it is base ** n until that reaches the cap (compared in logarithms: no overflow)
    if cap > 0 and n * math.log(base) < math.log(cap):
        assert delay == pytest.approx(base ** n, rel=1e-9)
    else:
        assert delay == pytest.approx(cap, rel=1e-9)


# --- after_failure -------------------------------------------------------------

def test_a_job_with_default_retries_fails_twice_then_dies():
    assert [lifecycle.after_failure(n, 3) for n in (1, 2, 3)] == [
        JobState.FAILED, JobState.FAILED, JobState.DEAD]


def test_max_retries_one_means_no_retry():
    assert lifecycle.after_failure(1, 1) is JobState.DEAD


def test_more_failures_than_max_retries_is_dead():
    # e.g. max_retries was lowered for a job that already failed more often
    assert lifecycle.after_failure(7, 3) is JobState.DEAD


def test_default_schedule_runs_three_times_two_then_four_seconds_apart():
    """The contract's example: max_retries 3, base_backoff 2."""
    waits, n = [], 0
    while True:
        n += 1
        if lifecycle.after_failure(n, 3) is JobState.DEAD:
            break
        waits.append(lifecycle.backoff_delay(n, 2, 3600))
    assert n == 3
    assert waits == [2.0, 4.0]


# --- reason_text -----------------------------------------------------------------

REASONS = [
    (Outcome.OK, 0, "", None),
    (Outcome.EXIT, 1, "", "exit code 1"),
    (Outcome.EXIT, 127, "", "exit code 127"),
    (Outcome.SIGNAL, None, "SIGKILL", "killed by signal SIGKILL"),
    (Outcome.SIGNAL, None, "", "killed by a signal"),
    (Outcome.TIMEOUT, None, "", "timeout"),
    (Outcome.CANCELED, None, "", "canceled"),
    (Outcome.SPAWN_ERROR, None, "No such file or directory: /nope",
     "could not start: No such file or directory: /nope"),
    (Outcome.LEASE_LOST, None, "", "agent lost"),
    (Outcome.STOPPED, None, "", "agent stopped before the job finished"),
]


@pytest.mark.parametrize("outcome, exit_code, detail, expected", REASONS)
def test_reason_text(outcome, exit_code, detail, expected):
    assert lifecycle.reason_text(outcome, exit_code, detail) == expected


def test_every_outcome_has_a_reason_case():
    assert {outcome for outcome, *_ in REASONS} == set(Outcome)


@pytest.mark.parametrize("outcome", [o for o in Outcome if o is not Outcome.OK])
def test_every_failure_has_a_non_empty_reason(outcome):
    reason = lifecycle.reason_text(outcome, 3, "")
    assert isinstance(reason, str) and reason


# --- the transition table ---------------------------------------------------------

def test_transition_table_is_the_contracts_lifecycle():
    """Spelled out, so a change to the table is a deliberate change to this test."""
    P, R, C, F, D, X = (JobState.PENDING, JobState.PROCESSING, JobState.COMPLETED,
                        JobState.FAILED, JobState.DEAD, JobState.CANCELED)
    assert {
        P: {R, X},           # claimed; canceled
        F: {R, X},           # retried; canceled while waiting for the retry
        R: {C, F, D, X, P},  # done; retry later; DLQ; canceled; never started (released)
        D: {P},              # dlq retry
        C: set(),
        X: set(),
    } == lifecycle.TRANSITIONS
    assert set(lifecycle.RUNNABLE) == {P, F}


def test_check_raises_invalid_transition_naming_both_states():
    with pytest.raises(lifecycle.InvalidTransition) as info:
        lifecycle.check(JobState.COMPLETED, JobState.PENDING)
    assert "completed" in str(info.value) and "pending" in str(info.value)
    lifecycle.check(JobState.DEAD, JobState.PENDING)  # allowed: no exception
