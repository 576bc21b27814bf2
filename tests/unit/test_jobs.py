"""Job actions on a real store: finish, retry with backoff, DLQ, stale results,
cancel, DLQ retry, release of never-started leases, and enqueue defaults."""

from __future__ import annotations

import itertools

import pytest

from queuectl.broker.jobs import JobError, JobService
from queuectl.proto import config as config_keys
from queuectl.proto.jobspec import SpecError
from queuectl.proto.states import JobState, Outcome

NOW = 1_700_000_000.0
AGENT = "agent-1"
P, R, C, F, D, X = (JobState.PENDING, JobState.PROCESSING, JobState.COMPLETED,
                    JobState.FAILED, JobState.DEAD, JobState.CANCELED)


class Service:
    """A JobService with the default config and a record of on_change calls."""

    def __init__(self, store, **config):
        self.store = store
        self.config = {**config_keys.defaults(), **config}
        self.changed: list = []
        self.jobs = JobService(store, self.config, self.changed.append)

    def enqueue(self, now=NOW, **spec):
        spec.setdefault("command", "true")
        return self.jobs.enqueue([spec], now)[0]

    def claim(self, now=NOW, expect=None):
        claimed = self.store.claim(now, AGENT, b"owner", None)
        assert claimed is not None, "nothing was claimable"
        job, token = claimed
        if expect is not None:
            assert job.id == expect
        return token

    def fail(self, token, now, outcome=Outcome.EXIT, exit_code=1, detail=""):
        return self.jobs.finish(token, outcome, exit_code=exit_code, detail=detail,
                                started_at=now - 0.5, finished_at=now, now=now)

    def ok(self, token, now):
        return self.jobs.finish(token, Outcome.OK, exit_code=0, detail="",
                                started_at=now - 2, finished_at=now, now=now)


@pytest.fixture
def svc(store):
    return Service(store)


def make_dead(svc, job_id="doomed", now=NOW):
    svc.enqueue(id=job_id, max_retries=1, now=now)
    job = svc.fail(svc.claim(now, expect=job_id), now + 1)
    assert job.state is D
    return job


# --- finish -------------------------------------------------------------------------

def test_ok_completes_the_job(svc):
    svc.enqueue(id="a")
    token = svc.claim()
    svc.store.start_attempt(token, pid=4242, started_at=NOW + 1)
    job = svc.ok(token, NOW + 3)
    assert job.state is C
    assert (job.attempts, job.exit_code, job.last_error, job.token) == (1, 0, None, None)
    assert (job.started_at, job.finished_at) == (NOW + 1, NOW + 3)
    assert svc.store.job("a") == job
    assert svc.changed[-1] == job
    attempt = svc.store.attempt(token)
    assert (attempt.exit_code, attempt.reason, attempt.stale, attempt.pid) == (0, None, False, 4242)
    assert attempt.finished_at == NOW + 3
    assert svc.store.completed_duration() == (1, pytest.approx(2.0))
    assert svc.store.counts()["completed"] == 1 and svc.store.counts()["processing"] == 0


def test_a_failure_with_retries_left_schedules_a_retry_after_the_backoff(svc):
    svc.enqueue(id="a")
    job = svc.fail(svc.claim(), NOW + 10, exit_code=2)
    assert job.state is F
    assert job.attempts == 1
    assert job.run_at == NOW + 10 + 2  # base_backoff 2 ** 1
    assert (job.exit_code, job.last_error, job.token) == (2, "exit code 2", None)
    assert svc.store.next_due() == NOW + 12
    assert svc.store.claim(NOW + 11, AGENT, b"owner", None) is None
    svc.store.promote_due(NOW + 12)
    svc.claim(NOW + 12, expect="a")


def test_a_job_that_always_fails_runs_max_retries_times_then_is_dead(svc):
    """The contract's example: defaults 3 and 2 -> runs 3 times, 2 s then 4 s apart."""
    svc.enqueue(id="a")
    now, starts = NOW, []
    while True:
        svc.store.promote_due(now)
        starts.append(now)
        job = svc.fail(svc.claim(now, expect="a"), now)
        if job.state is D:
            break
        assert job.state is F
        now = job.run_at
    assert [b - a for a, b in itertools.pairwise(starts)] == [2.0, 4.0]
    assert job.attempts == 3 == job.max_retries
    assert job.last_error == "exit code 1"
    assert job.token is None
    attempts = svc.store.attempts(job.seq)
    assert [a.number for a in attempts] == [1, 2, 3]
    assert all(a.reason == "exit code 1" and a.finished_at is not None for a in attempts)
    assert [j.id for j in svc.store.dead_jobs()] == ["a"]
    assert svc.store.next_due() is None
    assert svc.store.claim(now + 3600, AGENT, b"owner", None) is None


@pytest.mark.parametrize("max_retries, base, cap, delays", [
    (5, 10, 50, [10, 50, 50, 50]),
    (4, 3, 3600, [3, 9, 27]),
    (3, 1.5, 3600, [1.5, 2.25]),
    (3, 2, 0, [0, 0]),
])
def test_retry_delays_follow_the_config(store, max_retries, base, cap, delays):
    svc = Service(store, base_backoff=base, max_backoff=cap)
    svc.enqueue(id="a", max_retries=max_retries)
    now, seen = NOW, []
    for _ in range(max_retries):
        svc.store.promote_due(now)
        job = svc.fail(svc.claim(now, expect="a"), now)
        if job.state is F:
            seen.append(job.run_at - now)
            now = job.run_at
    assert job.state is D and job.attempts == max_retries
    assert seen == pytest.approx(delays)


def test_a_new_base_backoff_applies_to_the_next_retry(svc):
    svc.enqueue(id="a", max_retries=5)
    job = svc.fail(svc.claim(), NOW)
    assert job.run_at == NOW + 2
    svc.config["base_backoff"] = 5  # what `config set` does to the broker's dict
    svc.store.promote_due(job.run_at)
    job = svc.fail(svc.claim(job.run_at), job.run_at)
    assert job.run_at - (NOW + 2) == 25  # 5 ** 2
    svc.config["max_backoff"] = 7
    svc.store.promote_due(job.run_at)
    then = job.run_at
    job = svc.fail(svc.claim(then), then)
    assert job.run_at == then + 7


def test_max_retries_one_goes_straight_to_the_dlq(svc):
    job = make_dead(svc)
    assert (job.attempts, job.last_error) == (1, "exit code 1")


@pytest.mark.parametrize("outcome, exit_code, detail, reason", [
    (Outcome.TIMEOUT, None, "", "timeout"),
    (Outcome.SIGNAL, None, "SIGSEGV", "killed by signal SIGSEGV"),
    (Outcome.LEASE_LOST, None, "", "agent lost"),
    (Outcome.SPAWN_ERROR, None, "bad cwd", "could not start: bad cwd"),
    (Outcome.STOPPED, None, "", "agent stopped before the job finished"),
    (Outcome.EXIT, 127, "", "exit code 127"),
])
def test_every_failure_kind_is_retried_with_its_reason(svc, outcome, exit_code, detail, reason):
    svc.enqueue(id="a")
    token = svc.claim()
    job = svc.fail(token, NOW + 1, outcome=outcome, exit_code=exit_code, detail=detail)
    assert job.state is F and job.attempts == 1
    assert job.last_error == reason and job.exit_code == exit_code
    assert svc.store.attempt(token).reason == reason


def test_finish_keeps_the_started_time_the_agent_reported_earlier(svc):
    svc.enqueue(id="a")
    token = svc.claim()
    svc.store.start_attempt(token, pid=1, started_at=NOW + 1)
    job = svc.jobs.finish(token, Outcome.LEASE_LOST, exit_code=None, detail="",
                          started_at=None, finished_at=NOW + 9, now=NOW + 9)
    assert job.started_at == NOW + 1
    assert svc.store.attempt(token).started_at == NOW + 1


# --- stale results --------------------------------------------------------------------

def test_a_late_result_from_a_lost_lease_changes_nothing(svc):
    svc.enqueue(id="a")
    old = svc.claim()
    lost = svc.fail(old, NOW + 10, outcome=Outcome.LEASE_LOST, exit_code=None)
    assert lost.state is F
    svc.store.promote_due(lost.run_at)
    new = svc.claim(lost.run_at, expect="a")
    running = svc.store.job("a")
    old_attempt = svc.store.attempt(old)
    changes = len(svc.changed)

    assert svc.ok(old, lost.run_at + 1) is None  # the old agent reports success, too late

    assert svc.store.job("a") == running
    assert running.state is R and running.token == new
    late = svc.store.attempt(old)
    assert (late.finished_at, late.reason, late.exit_code) == (
        old_attempt.finished_at, "agent lost", None)  # the first recorded end stands
    assert late.late_result == "exit code 0"  # and what the old run did is kept
    assert svc.store.attempt(new).finished_at is None
    assert len(svc.changed) == changes
    assert svc.store.completed_duration() == (0, 0.0)


def test_a_result_for_a_token_that_is_not_the_lease_is_recorded_as_stale(svc):
    svc.enqueue(id="a")
    token = svc.claim()
    job = svc.store.job("a")
    # the job moved on without this attempt ending (e.g. a broker-side reset)
    moved = svc.store.transition(job, P, NOW + 1, token=None, agent=None)
    assert svc.jobs.finish(token, Outcome.EXIT, exit_code=3, detail="", started_at=NOW + 0.5,
                           finished_at=NOW + 2, now=NOW + 2) is None
    attempt = svc.store.attempt(token)
    assert attempt.stale is True
    assert (attempt.exit_code, attempt.reason, attempt.finished_at) == (3, "exit code 3", NOW + 2)
    assert svc.store.job("a") == moved
    assert svc.changed == []


def test_a_result_resent_after_it_was_applied_changes_nothing(svc):
    svc.enqueue(id="a")
    token = svc.claim()
    done = svc.ok(token, NOW + 2)
    attempt = svc.store.attempt(token)
    # the agent resends the same result (same timestamps) when the Ack was lost
    assert svc.jobs.finish(token, Outcome.OK, exit_code=0, detail="", started_at=NOW,
                           finished_at=NOW + 2, now=NOW + 5) is None
    assert svc.store.job("a") == done
    assert svc.store.attempt(token) == attempt
    assert svc.store.completed_duration() == (1, pytest.approx(2.0))


def test_a_result_for_an_unknown_token_is_ignored(svc):
    assert svc.ok(12345, NOW) is None
    assert svc.store.attempt(12345) is None


# --- cancel -------------------------------------------------------------------------------

def test_cancel_pending(svc):
    svc.enqueue(id="a")
    job = svc.jobs.cancel("a", NOW + 1)
    assert job.state is X and job.last_error == "canceled"
    assert svc.store.job("a") == job
    assert svc.changed[-1] == job
    assert svc.store.claim(NOW + 1, AGENT, b"owner", None) is None


def test_cancel_a_scheduled_job_stops_it_from_ever_running(svc):
    svc.enqueue(id="a", delay="5m")
    svc.jobs.cancel("a", NOW + 1)
    assert svc.store.next_due() is None
    svc.store.promote_due(NOW + 3600)
    assert svc.store.claim(NOW + 3600, AGENT, b"owner", None) is None


def test_cancel_failed_waiting_for_retry(svc):
    svc.enqueue(id="a")
    svc.fail(svc.claim(), NOW + 1)
    job = svc.jobs.cancel("a", NOW + 2)
    assert job.state is X and job.attempts == 1
    svc.store.promote_due(NOW + 3600)
    assert svc.store.claim(NOW + 3600, AGENT, b"owner", None) is None


def test_cancel_processing_marks_it_and_its_end_cancels_it(svc):
    svc.enqueue(id="a")
    token = svc.claim()
    marked = svc.jobs.cancel("a", NOW + 1)
    assert marked.state is R and marked.cancel_requested is True and marked.token == token
    assert svc.jobs.cancel("a", NOW + 1.5).cancel_requested is True  # asking twice is fine
    job = svc.fail(token, NOW + 2, outcome=Outcome.CANCELED, exit_code=None)
    assert job.state is X and job.attempts == 1 and job.last_error == "canceled"
    assert svc.store.next_due() is None


def test_a_canceled_job_killed_with_an_exit_code_is_canceled_not_retried(svc):
    svc.enqueue(id="a")
    token = svc.claim()
    svc.jobs.cancel("a", NOW + 1)
    job = svc.fail(token, NOW + 2, outcome=Outcome.SIGNAL, exit_code=None, detail="SIGTERM")
    assert job.state is X


def test_a_job_that_finishes_before_the_cancel_lands_is_completed(svc):
    svc.enqueue(id="a")
    token = svc.claim()
    svc.jobs.cancel("a", NOW + 1)
    assert svc.ok(token, NOW + 2).state is C


@pytest.mark.parametrize("final", [C, D, X])
def test_cancel_of_a_finished_job_is_a_conflict(svc, final):
    svc.enqueue(id="a", max_retries=1)
    if final is X:
        svc.jobs.cancel("a", NOW)
    else:
        token = svc.claim()
        svc.ok(token, NOW + 1) if final is C else svc.fail(token, NOW + 1)
    before = svc.store.job("a")
    assert before.state is final
    with pytest.raises(JobError) as info:
        svc.jobs.cancel("a", NOW + 5)
    assert info.value.code == "conflict"
    assert final.value in str(info.value)
    assert svc.store.job("a") == before


def test_cancel_of_an_unknown_job_is_not_found(svc):
    with pytest.raises(JobError) as info:
        svc.jobs.cancel("nope", NOW)
    assert info.value.code == "not_found"


# --- DLQ retry -------------------------------------------------------------------------------

def test_dlq_retry_makes_the_job_pending_with_attempts_reset_and_claimable(svc):
    make_dead(svc)
    assert svc.jobs.dlq_retry(["doomed"], NOW + 100) == ["doomed"]
    job = svc.store.job("doomed")
    assert job.state is P
    assert (job.attempts, job.last_error, job.exit_code, job.token) == (0, None, None, None)
    assert (job.started_at, job.finished_at) == (None, None)
    assert job.run_at == NOW + 100
    assert svc.store.dead_jobs() == []
    token = svc.claim(NOW + 100, expect="doomed")
    # the history stays in the attempts log; numbering restarts with the reset count
    assert [(a.number, a.reason) for a in svc.store.attempts(job.seq)] == [
        (1, "exit code 1"), (1, None)]
    assert svc.store.attempt(token).number == 1


def test_a_retried_job_gets_its_full_retries_again(svc):
    svc.enqueue(id="a", max_retries=2)
    svc.fail(svc.claim(NOW), NOW)
    svc.store.promote_due(NOW + 2)
    assert svc.fail(svc.claim(NOW + 2), NOW + 2).state is D
    svc.jobs.dlq_retry(["a"], NOW + 10)
    job = svc.fail(svc.claim(NOW + 10), NOW + 10)
    assert job.state is F and job.attempts == 1


def test_dlq_retry_all_moves_every_dead_job_and_nothing_else(svc):
    make_dead(svc, "d1")
    make_dead(svc, "d2")
    svc.enqueue(id="waiting")
    assert sorted(svc.jobs.dlq_retry(None, NOW + 5)) == ["d1", "d2"]
    assert {j.id: j.state for j in svc.store.list_jobs()} == {"d1": P, "d2": P, "waiting": P}
    assert svc.jobs.dlq_retry(None, NOW + 6) == []


def test_dlq_retry_of_a_job_not_in_the_dlq_is_a_conflict_and_retries_none(svc):
    make_dead(svc, "dead-one")
    svc.enqueue(id="alive")
    with pytest.raises(JobError) as info:
        svc.jobs.dlq_retry(["dead-one", "alive"], NOW + 5)
    assert info.value.code == "conflict"
    assert svc.store.job("dead-one").state is D
    with pytest.raises(JobError) as info:
        svc.jobs.dlq_retry(["missing"], NOW + 5)
    assert info.value.code == "not_found"


# --- release -----------------------------------------------------------------------------------

def test_release_puts_a_never_started_job_back_and_forgets_the_attempt(svc):
    svc.enqueue(id="a")
    token = svc.claim()
    job = svc.jobs.release(token, NOW + 1)
    assert job.state is P
    assert (job.token, job.agent, job.attempts) == (None, None, 0)
    assert svc.store.attempt(token) is None
    assert svc.store.attempts(job.seq) == []
    assert svc.changed[-1] == job
    again = svc.claim(NOW + 1, expect="a")
    assert svc.store.attempt(again).number == 1


def test_release_of_a_job_whose_cancel_was_requested_cancels_it(svc):
    svc.enqueue(id="a")
    token = svc.claim()
    svc.jobs.cancel("a", NOW + 1)
    job = svc.jobs.release(token, NOW + 2)
    assert job.state is X and job.last_error == "canceled"
    assert svc.store.claim(NOW + 2, AGENT, b"owner", None) is None


def test_release_of_an_unknown_or_finished_lease_changes_nothing(svc):
    assert svc.jobs.release(999, NOW) is None
    svc.enqueue(id="a")
    token = svc.claim()
    done = svc.ok(token, NOW + 1)
    assert svc.jobs.release(token, NOW + 2) is None
    assert svc.store.job("a") == done


# --- enqueue ------------------------------------------------------------------------------------

def test_enqueue_applies_the_config_defaults(store):
    svc = Service(store, timeout_sec=7.5, max_retries=5)
    new = svc.enqueue(id="a")
    job = store.job("a")
    assert (job.timeout_sec, job.max_retries) == (7.5, 5)
    assert (job.priority, job.queue, job.run_at, job.state) == (100, "default", NOW, P)
    assert (new.timeout_sec, new.max_retries) == (7.5, 5)


def test_a_new_default_applies_only_to_jobs_enqueued_after_it(svc):
    svc.enqueue(id="before")
    svc.config["max_retries"] = 9
    svc.config["timeout_sec"] = 1
    svc.enqueue(id="after")
    assert (svc.store.job("before").max_retries, svc.store.job("before").timeout_sec) == (3, 60)
    assert (svc.store.job("after").max_retries, svc.store.job("after").timeout_sec) == (9, 1)


def test_job_fields_override_the_defaults(svc):
    svc.enqueue(id="a", timeout_sec=3, max_retries=1, priority=-1, queue="fast")
    job = svc.store.job("a")
    assert (job.timeout_sec, job.max_retries, job.priority, job.queue) == (3, 1, -1, "fast")


def test_enqueue_generates_unique_ids(svc):
    ids = {svc.enqueue().id for _ in range(50)}
    assert len(ids) == 50
    assert all(svc.store.job(i) is not None for i in ids)


def test_delay_is_counted_from_the_brokers_now(svc):
    svc.enqueue(id="a", delay="5m", now=NOW)
    assert svc.store.job("a").run_at == NOW + 300
    assert svc.store.claim(NOW, AGENT, b"owner", None) is None
    svc.store.promote_due(NOW + 300)
    svc.claim(NOW + 300, expect="a")


def test_run_at_is_honoured(svc):
    svc.enqueue(id="later", run_at="2030-01-01T00:00:00Z", now=NOW)
    assert svc.store.job("later").run_at == 1893456000.0
    svc.enqueue(id="past", run_at="2001-01-01T00:00:00Z", now=NOW)
    svc.claim(NOW, expect="past")


def test_enqueue_of_a_duplicate_id_is_a_conflict(svc):
    svc.enqueue(id="a")
    with pytest.raises(JobError) as info:
        svc.enqueue(id="a")
    assert info.value.code == "conflict"


def test_a_batch_with_one_bad_job_inserts_nothing_and_names_the_job(svc):
    with pytest.raises(SpecError) as info:
        svc.jobs.enqueue([{"id": "ok", "command": "true"}, {"id": "bad", "command": ""}], NOW,
                         batch=True)
    assert "job 2" in str(info.value) and "command" in str(info.value)
    assert svc.store.list_jobs() == []
    with pytest.raises(JobError):
        svc.jobs.enqueue([{"id": "x", "command": "true"}, {"id": "x", "command": "true"}], NOW,
                         batch=True)
    assert svc.store.list_jobs() == []
    svc.enqueue(id="taken")
    with pytest.raises(JobError) as taken:  # an id already stored: the batch names the job
        svc.jobs.enqueue([{"command": "true"}, {"id": "taken", "command": "true"}], NOW,
                         batch=True)
    assert str(taken.value).startswith("job 2: ") and "taken" in str(taken.value)


# --- generated ids ------------------------------------------------------------------

def test_generated_ids_are_16_hex_digits_that_sort_by_enqueue_time(store):
    service = Service(store)
    first = [service.enqueue(now=NOW).id for _ in range(3)]
    later = service.enqueue(now=NOW + 1).id
    assert all(len(job_id) == 16 and int(job_id, 16) for job_id in first + [later])
    assert first + [later] == sorted(first + [later])
    assert len(set(first)) == 3


def test_generated_ids_keep_growing_when_the_clock_steps_back(store):
    service = Service(store)
    before = service.enqueue(now=NOW).id
    after = service.enqueue(now=NOW - 3600).id  # an NTP step back
    assert after > before


def test_a_generated_id_already_taken_is_replaced_not_reported(store):
    service = Service(store)
    taken = service.jobs.ids.next(NOW)  # what the next job would get...
    service.jobs.ids.last -= 1          # ...handed out again by a clock that went back
    service.enqueue(id=taken)           # and already used, by a user or an older broker
    jobs = service.jobs.enqueue([{"command": "true"}, {"command": "true"}], NOW, batch=True)
    assert taken not in [job.id for job in jobs]
    assert store.counts()["pending"] == 3
    with pytest.raises(JobError, match="already exists"):
        service.enqueue(id=taken)  # a user's own id is still a conflict


def test_a_batch_is_counted_once_it_is_stored(store):
    service = Service(store)
    service.jobs.enqueue([{"command": "true"} for _ in range(500)], NOW, batch=True)
    with pytest.raises(JobError):
        service.jobs.enqueue([{"command": "true"}, {"id": "dup", "command": "true"},
                              {"id": "dup", "command": "true"}], NOW, batch=True)
    assert store.counts()["pending"] == 500
