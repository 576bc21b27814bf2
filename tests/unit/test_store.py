"""The broker's store: the transition table enforced on real rows, claiming,
scheduling, placement, counters, all-or-none inserts, output and migrations."""

from __future__ import annotations

import collections
import itertools
import json

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuectl.broker import lifecycle
from queuectl.broker.lifecycle import TRANSITIONS, InvalidTransition
from queuectl.broker.rows import Job
from queuectl.broker.store import MIGRATIONS, DuplicateId, NewJob, StaleState, Store
from queuectl.proto.states import ALL_STATES, JobState

NOW = 1_700_000_000.0
AGENT = "agent-1"
P, R, C, F, D, X = (JobState.PENDING, JobState.PROCESSING, JobState.COMPLETED,
                    JobState.FAILED, JobState.DEAD, JobState.CANCELED)


def new_job(job_id: str, *, priority: int = 100, run_at: float = NOW, requires=None,
            command: str = "true", max_retries: int = 3, queue: str = "default") -> NewJob:
    return NewJob(id=job_id, command=command, queue=queue, priority=priority, run_at=run_at,
                  timeout_sec=60.0, max_retries=max_retries, env=None, cwd=None, requires=requires)


def claim_id(store: Store, now: float = NOW, labels: dict | None = None) -> str | None:
    labels_json = json.dumps(labels, sort_keys=True) if labels else None
    claimed = store.claim(now, AGENT, b"owner", labels_json)
    return claimed[0].id if claimed else None


def claimed(store: Store, now: float = NOW,
            closed: frozenset[str] = frozenset()) -> tuple[Job, int]:
    """The job and token the next claim leases (the test has made a job due)."""
    lease = store.claim(now, AGENT, b"owner", None, closed)
    assert lease is not None
    return lease


def next_job(store: Store, closed: frozenset[str] = frozenset()) -> Job:
    """The job the next claim leases (the test has made one due)."""
    return claimed(store, closed=closed)[0]


def stored(store: Store, job_id: str) -> Job:
    """Job ``job_id``, which the test has stored."""
    job = store.job(job_id)
    assert job is not None, job_id
    return job


def make_job_in(store: Store, state: JobState, job_id: str = "j1"):
    """Drive real store calls until job ``job_id`` is in ``state``."""
    store.insert_jobs([new_job(job_id)], NOW)
    job = stored(store, job_id)
    if state is P:
        return job
    if state is X:
        return store.transition(job, X, NOW + 1, last_error="canceled")
    job, token = claimed(store, NOW + 1)
    assert job.id == job_id and job.state is R and job.token == token
    if state is R:
        return job
    ended = {"attempts": 1, "token": None, "started_at": NOW + 1, "finished_at": NOW + 2}
    if state is C:
        return store.transition(job, C, NOW + 2, exit_code=0, **ended)
    if state is F:
        return store.transition(job, F, NOW + 2, run_at=NOW + 4, exit_code=1,
                                last_error="exit code 1", **ended)
    if state is D:
        return store.transition(job, D, NOW + 2, exit_code=1, last_error="exit code 1", **ended)
    raise AssertionError(state)


def recount(store: Store) -> dict[str, int]:
    counts = dict.fromkeys(ALL_STATES, 0)
    counts.update(collections.Counter(j.state.value for j in store.list_jobs(limit=-1)))
    return counts


# --- the transition table on real rows --------------------------------------------------

ALLOWED = [(old, new) for old in JobState for new in sorted(TRANSITIONS[old])]
FORBIDDEN = [(old, new) for old in JobState for new in JobState if new not in TRANSITIONS[old]]


def pair_id(value):
    return value.value if isinstance(value, JobState) else str(value)


def test_the_table_covers_every_state_and_terminal_states_are_final():
    assert set(TRANSITIONS) == set(JobState)
    assert TRANSITIONS[C] == TRANSITIONS[X] == frozenset()
    assert len(ALLOWED) + len(FORBIDDEN) == len(JobState) ** 2


@pytest.mark.parametrize("state", list(JobState), ids=pair_id)
def test_jobs_can_be_driven_into_every_state(store, state):
    job = make_job_in(store, state)
    assert job.state is state
    assert store.job("j1") == job
    assert store.counts()[state.value] == 1


@pytest.mark.parametrize("old, new", ALLOWED, ids=pair_id)
def test_allowed_transition_succeeds(store, old, new):
    job = make_job_in(store, old)
    moved = store.transition(job, new, NOW + 10)
    assert moved.state is new
    assert moved.updated_at == NOW + 10
    assert store.job("j1") == moved
    counts = store.counts()
    assert counts[new.value] == 1 and counts[old.value] == 0
    # a job that lands in a runnable state with its run_at passed can be claimed; others cannot
    runnable = new in lifecycle.RUNNABLE and moved.run_at <= NOW + 10
    assert (claim_id(store, NOW + 10) == "j1") == runnable


@pytest.mark.parametrize("old, new", FORBIDDEN, ids=pair_id)
def test_forbidden_transition_raises_and_leaves_the_row_unchanged(store, old, new):
    job = make_job_in(store, old)
    counts = store.counts()
    with pytest.raises(InvalidTransition) as info:
        store.transition(job, new, NOW + 10, last_error="should not be written")
    assert (info.value.old, info.value.new) == (old, new)
    assert old.value in str(info.value) and new.value in str(info.value)
    assert store.job("j1") == job
    assert store.counts() == counts


def test_transition_refuses_columns_it_must_not_set(store):
    job = make_job_in(store, P)
    with pytest.raises(ValueError):
        store.transition(job, X, NOW, command="rm -rf /")
    assert store.job("j1") == job


# --- stale reads ---------------------------------------------------------------------------

def test_transition_from_a_state_the_job_has_left_raises_stale_state(store):
    read = make_job_in(store, P)
    store.transition(read, X, NOW + 1)
    with pytest.raises(StaleState):
        store.transition(read, R, NOW + 2)  # P -> R is allowed, but the job is canceled now
    assert store.job("j1").state is X
    assert store.counts()["canceled"] == 1 and store.counts()["processing"] == 0


def test_cancel_racing_a_claim_does_not_cancel_the_running_job(store):
    read = make_job_in(store, P)
    claimed, token = store.claim(NOW + 1, AGENT, b"owner", None)
    with pytest.raises(StaleState):
        store.transition(read, X, NOW + 2)
    after = store.job("j1")
    assert after == claimed
    assert after.state is R and after.token == token


def test_set_fields_on_a_stale_read_raises_and_changes_nothing(store):
    read = make_job_in(store, P)
    claimed, _ = store.claim(NOW + 1, AGENT, b"owner", None)
    with pytest.raises(StaleState):
        store.set_fields(read, NOW + 2, cancel_requested=1)
    assert store.job("j1") == claimed


# --- claim order and scheduling ---------------------------------------------------------------

def test_claim_order_is_priority_then_run_at_then_insertion(store):
    store.insert_jobs([new_job("late-urgent", priority=1, run_at=NOW - 5),
                       new_job("normal", priority=100, run_at=NOW - 50)], NOW)
    store.insert_jobs([new_job("early-urgent-1", priority=1, run_at=NOW - 20)], NOW)
    store.insert_jobs([new_job("early-urgent-2", priority=1, run_at=NOW - 20),
                       new_job("very-urgent", priority=-10, run_at=NOW),
                       new_job("lazy", priority=1000, run_at=NOW - 1000)], NOW)
    order = [claim_id(store) for _ in range(7)]
    assert order == ["very-urgent", "early-urgent-1", "early-urgent-2", "late-urgent",
                     "normal", "lazy", None]


def test_equal_priority_and_run_at_is_fifo(store):
    ids = [f"job-{n}" for n in range(20)]
    store.insert_jobs([new_job(i) for i in ids[:10]], NOW)
    store.insert_jobs([new_job(i) for i in ids[10:]], NOW)
    assert [claim_id(store) for _ in ids] == ids


def test_claim_records_an_attempt_and_a_lease(store):
    store.insert_jobs([new_job("a")], NOW)
    job, token = store.claim(NOW + 1, AGENT, b"owner", None)
    assert job.state is R and job.token == token and job.agent == AGENT
    attempt = store.attempt(token)
    assert attempt.job_seq == job.seq and attempt.number == 1 and attempt.agent == AGENT
    assert attempt.dispatched_at == NOW + 1 and attempt.finished_at is None
    assert store.job_by_token(token) == job
    assert store.leased_jobs() == [job]


def test_a_failed_job_is_claimed_again_with_the_next_attempt_number(store):
    failed = make_job_in(store, F)  # run_at NOW + 4
    assert claim_id(store, NOW + 3) is None
    store.promote_due(NOW + 4)
    job, token = store.claim(NOW + 4, AGENT, b"owner", None)
    assert job.id == "j1" and store.attempt(token).number == failed.attempts + 1 == 2


def test_future_job_waits_for_its_run_at(store):
    store.insert_jobs([new_job("later", run_at=NOW + 60)], NOW)
    assert claim_id(store, NOW) is None
    assert store.next_due() == NOW + 60
    assert store.promote_due(NOW + 59.9) == 0
    assert claim_id(store, NOW + 59.9) is None
    assert store.promote_due(NOW + 60) == 1
    assert store.next_due() is None
    assert claim_id(store, NOW + 60) == "later"


def test_next_due_is_the_earliest_waiting_run_at(store):
    assert store.next_due() is None
    store.insert_jobs([new_job("now"), new_job("in-30", run_at=NOW + 30),
                       new_job("in-10", run_at=NOW + 10), new_job("in-20", run_at=NOW + 20)], NOW)
    assert store.next_due() == NOW + 10  # the job that is already due is not waiting
    store.transition(store.job("in-10"), X, NOW)  # canceled jobs wait for nothing
    assert store.next_due() == NOW + 20
    assert store.promote_due(NOW + 25) == 1
    assert store.next_due() == NOW + 30
    assert [claim_id(store, NOW + 25) for _ in range(3)] == ["now", "in-20", None]


def test_a_failed_job_waiting_for_its_retry_counts_for_next_due(store):
    make_job_in(store, F)
    assert store.next_due() == NOW + 4


def test_a_job_scheduled_exactly_now_is_claimable_at_once(store):
    store.insert_jobs([new_job("a", run_at=NOW)], NOW)
    assert claim_id(store, NOW) == "a"


# --- placement --------------------------------------------------------------------------------

def test_an_agent_without_the_required_labels_cannot_claim(store):
    store.insert_jobs([new_job("gpu-job", requires={"gpu": "1", "zone": "eu"})], NOW)
    assert claim_id(store, labels=None) is None
    assert claim_id(store, labels={"gpu": "1"}) is None
    assert claim_id(store, labels={"gpu": "0", "zone": "eu"}) is None
    assert claim_id(store, labels={"GPU": "1", "zone": "eu"}) is None
    assert store.job("gpu-job").state is P
    assert claim_id(store, labels={"gpu": "1", "zone": "eu", "extra": "yes"}) == "gpu-job"


def test_an_unplaceable_job_does_not_block_the_jobs_behind_it(store):
    store.insert_jobs([new_job("needs-gpu", priority=1, requires={"gpu": "1"}),
                       new_job("anywhere", priority=50)], NOW)
    assert claim_id(store, labels={"cpu": "x86"}) == "anywhere"
    assert claim_id(store, labels={"cpu": "x86"}) is None
    assert claim_id(store, labels={"gpu": "1"}) == "needs-gpu"


def test_a_job_without_requires_runs_on_any_agent(store):
    store.insert_jobs([new_job("a"), new_job("b")], NOW)
    assert claim_id(store, labels={"gpu": "1"}) == "a"
    assert claim_id(store, labels=None) == "b"


def test_empty_requires_runs_anywhere(store):
    store.insert_jobs([new_job("a", requires={})], NOW)
    assert claim_id(store, labels=None) == "a"


# --- counters ------------------------------------------------------------------------------

def test_counts_stay_exact_through_every_kind_of_change(store):
    def check():
        assert store.counts() == recount(store)

    check()
    store.insert_jobs([new_job(f"j{n}", run_at=NOW + (100 if n >= 8 else 0)) for n in range(10)],
                      NOW)
    check()
    assert store.counts()["pending"] == 10
    running = [next_job(store) for _ in range(5)]
    check()
    done = store.transition(running[0], C, NOW + 1, started_at=NOW, finished_at=NOW + 1, token=None)
    store.transition(running[1], F, NOW + 1, run_at=NOW + 3, attempts=1, token=None)
    store.transition(running[2], D, NOW + 1, attempts=3, token=None)
    store.transition(running[3], X, NOW + 1, token=None)
    store.transition(running[4], P, NOW + 1, token=None)
    check()
    store.transition(store.job("j9"), X, NOW + 1)
    check()
    store.transition(store.job("j2"), P, NOW + 2, attempts=0, run_at=NOW + 2)  # dlq retry
    check()
    store.promote_due(NOW + 100)
    while store.claim(NOW + 100, AGENT, b"owner", None):
        check()
    with pytest.raises(InvalidTransition):
        store.transition(done, P, NOW + 3)
    with pytest.raises(StaleState):
        store.transition(running[3], C, NOW + 3)  # canceled meanwhile
    with pytest.raises(DuplicateId):
        store.insert_jobs([new_job("new"), new_job("j0")], NOW + 3)
    check()
    assert store.counts() == {"pending": 0, "processing": 7, "completed": 1, "failed": 0,
                              "dead": 0, "canceled": 2}


def test_set_fields_does_not_move_counts(store):
    job = make_job_in(store, R)
    before = store.counts()
    store.set_fields(job, NOW + 5, cancel_requested=1)
    assert store.counts() == before
    assert store.job("j1").cancel_requested is True


def test_completed_duration_sums_completed_jobs_only(store):
    assert store.completed_duration() == (0, 0.0)
    store.insert_jobs([new_job(f"j{n}") for n in range(4)], NOW)
    jobs = [next_job(store) for _ in range(4)]
    store.transition(jobs[0], C, NOW + 10, started_at=NOW, finished_at=NOW + 10, token=None)
    store.transition(jobs[1], C, NOW + 3, started_at=NOW + 0.5, finished_at=NOW + 3, token=None)
    store.transition(jobs[2], F, NOW + 3, started_at=NOW, finished_at=NOW + 100, token=None,
                     run_at=NOW + 5)
    store.transition(jobs[3], D, NOW + 3, started_at=NOW, finished_at=NOW + 100, token=None)
    count, seconds = store.completed_duration()
    assert count == 2
    assert seconds == pytest.approx(12.5)


def test_a_job_completing_after_a_dlq_retry_adds_its_new_duration(store):
    dead = make_job_in(store, D)
    revived = store.transition(dead, P, NOW + 10, attempts=0, run_at=NOW + 10)
    job, _ = store.claim(NOW + 10, AGENT, b"owner", None)
    assert job.id == revived.id
    store.transition(job, C, NOW + 14, started_at=NOW + 11, finished_at=NOW + 14, token=None)
    assert store.completed_duration() == (1, pytest.approx(3.0))


# --- all-or-none inserts -------------------------------------------------------------------

def test_insert_with_an_existing_id_inserts_nothing(store):
    store.insert_jobs([new_job("taken")], NOW)
    with pytest.raises(DuplicateId) as info:
        store.insert_jobs([new_job("fresh-1"), new_job("taken"), new_job("fresh-2")], NOW)
    assert info.value.job_id == "taken"
    assert "taken" in str(info.value)
    assert store.job("fresh-1") is None and store.job("fresh-2") is None
    assert [j.id for j in store.list_jobs()] == ["taken"]
    assert store.counts()["pending"] == 1


def test_insert_with_a_duplicate_inside_the_batch_inserts_nothing(store):
    with pytest.raises(DuplicateId) as info:
        store.insert_jobs([new_job("a"), new_job("b"), new_job("a"), new_job("c")], NOW)
    assert info.value.job_id == "a"
    assert store.list_jobs() == []
    assert store.counts()["pending"] == 0


def test_an_id_stays_taken_after_its_job_ends(store):
    make_job_in(store, C)
    with pytest.raises(DuplicateId):
        store.insert_jobs([new_job("j1")], NOW + 10)


def test_a_large_batch_is_inserted_whole_and_in_order(store):
    ids = [f"batch-{n:05d}" for n in range(2000)]
    store.insert_jobs([new_job(i) for i in ids], NOW)
    assert store.counts()["pending"] == 2000
    assert [j.id for j in store.list_jobs(limit=3)] == ids[:-4:-1]  # newest first


def test_inserted_job_keeps_what_was_enqueued(store):
    spec = NewJob(id="full", command="make -j4", queue="ci", priority=-3, run_at=NOW + 5,
                  timeout_sec=12.5, max_retries=7, env={"A": "1", "B": "x y"}, cwd="/src",
                  requires={"arch": "arm64"})
    store.insert_jobs([spec], NOW)
    job = store.job("full")
    assert (job.command, job.queue, job.priority, job.run_at, job.timeout_sec, job.max_retries,
            job.env, job.cwd, job.requires) == (
        "make -j4", "ci", -3, NOW + 5, 12.5, 7, {"A": "1", "B": "x y"}, "/src", {"arch": "arm64"})
    assert (job.state, job.attempts, job.created_at, job.updated_at) == (P, 0, NOW, NOW)
    assert (job.started_at, job.finished_at, job.exit_code, job.last_error, job.token) == (
        None, None, None, None, None)


def test_list_jobs_filters_by_state_and_queue_newest_first(store):
    store.insert_jobs([new_job("a"), new_job("b")], NOW)
    store.insert_jobs([NewJob(id="c", command="x", queue="other", priority=1, run_at=NOW,
                              timeout_sec=1, max_retries=1, env=None, cwd=None, requires=None)],
                      NOW)
    store.transition(store.job("a"), X, NOW)
    assert [j.id for j in store.list_jobs()] == ["c", "b", "a"]
    assert [j.id for j in store.list_jobs(state="pending")] == ["c", "b"]
    assert [j.id for j in store.list_jobs(queue="other")] == ["c"]
    assert [j.id for j in store.list_jobs(state="canceled", queue="default")] == ["a"]
    assert [j.id for j in store.list_jobs(limit=1)] == ["c"]


# --- output ----------------------------------------------------------------------------------

def claimed_token(store: Store, job_id: str) -> int:
    store.insert_jobs([new_job(job_id)], NOW)
    job, token = claimed(store)
    assert job.id == job_id
    return token


def stream_text(store: Store, token: int, stream: int,
                after=None) -> tuple[int | None, bytes]:
    chunks = [c for c in store.output(token, after) if c.stream == stream]
    for first, second in itertools.pairwise(chunks):
        assert second.offset == first.offset + len(first.data)  # contiguous
    return (chunks[0].offset if chunks else None), b"".join(c.data for c in chunks)


def test_output_comes_back_in_arrival_order_across_streams(store):
    token = claimed_token(store, "a")
    store.append_output(token, 1, 0, b"out1 ", 1024)
    store.append_output(token, 2, 0, b"err1 ", 1024)
    store.append_output(token, 1, 5, b"out2", 1024)
    chunks = store.output(token)
    assert [(c.stream, c.offset, c.data) for c in chunks] == [
        (1, 0, b"out1 "), (2, 0, b"err1 "), (1, 5, b"out2")]


def test_output_keeps_only_the_newest_limit_bytes_per_stream(store):
    token = claimed_token(store, "a")
    store.append_output(token, 1, 0, b"0123456789", 10)
    store.append_output(token, 2, 0, b"stderr", 10)
    store.append_output(token, 1, 10, b"abcd", 10)
    assert stream_text(store, token, 1) == (4, b"456789abcd")
    assert stream_text(store, token, 2) == (0, b"stderr")  # the other stream is untouched
    store.append_output(token, 1, 14, b"ABCDEFGHIJKLMNOP", 10)  # one chunk over the limit
    assert stream_text(store, token, 1) == (20, b"GHIJKLMNOP")


def test_a_resent_chunk_is_stored_once(store):
    token = claimed_token(store, "a")
    store.append_output(token, 1, 0, b"hello", 100)
    store.append_output(token, 1, 0, b"hello", 100)
    store.append_output(token, 1, 5, b" world", 100)
    store.append_output(token, 1, 5, b" world", 100)
    assert stream_text(store, token, 1) == (0, b"hello world")


def test_a_chunk_past_a_lost_one_is_refused_unless_the_agent_dropped_those_bytes(store):
    token = claimed_token(store, "a")
    assert store.append_output(token, 1, 0, b"first ", 100) is None
    # "second " (offset 6) was lost with a failed batch: the next chunk is refused
    assert store.append_output(token, 1, 13, b"third", 100) == 6
    assert stream_text(store, token, 1) == (0, b"first ")
    assert store.append_output(token, 1, 6, b"second third", 100) is None  # the resend
    assert stream_text(store, token, 1) == (0, b"first second third")
    # bytes the agent itself dropped (its buffer was full): the gap is accepted
    assert store.append_output(token, 1, 40, b"tail", 100, gap_ok=True) is None
    assert b"".join(c.data for c in store.output(token)) == b"first second thirdtail"
    assert store.output_ends(token) == (44, 0)


def test_output_after_offsets_skips_what_the_reader_has(store):
    token = claimed_token(store, "a")
    store.append_output(token, 1, 0, b"abc", 100)
    store.append_output(token, 2, 0, b"ERR", 100)
    store.append_output(token, 1, 3, b"def", 100)
    chunks = store.output(token, after={1: 4, 2: 3})
    assert [(c.stream, c.offset, c.data) for c in chunks] == [(1, 4, b"ef")]
    assert store.output(token, after={1: 6, 2: 3}) == []
    assert stream_text(store, token, 2, after={1: 6}) == (0, b"ERR")


def test_output_of_different_attempts_is_separate(store):
    first = claimed_token(store, "a")
    second = claimed_token(store, "b")
    store.append_output(first, 1, 0, b"first", 100)
    store.append_output(second, 1, 0, b"second", 100)
    assert stream_text(store, first, 1) == (0, b"first")
    assert stream_text(store, second, 1) == (0, b"second")
    assert store.output(999) == []


def test_output_max_bytes_stops_a_large_read(store):
    token = claimed_token(store, "a")
    for n in range(10):
        store.append_output(token, 1, n * 100, b"x" * 100, 10_000)
    chunks = store.output(token, max_bytes=250)
    assert 250 <= sum(len(c.data) for c in chunks) < 1000
    assert chunks[0].offset == 0


def test_output_bound_holds_for_any_chunking(store):
    jobs = itertools.count()

    @settings(max_examples=60, deadline=None)
    @given(limit=st.integers(1, 64), sizes=st.lists(st.integers(0, 50), max_size=12),
           seed=st.binary(min_size=1, max_size=1))
    def check(limit, sizes, seed):
        token = claimed_token(store, f"job-{next(jobs)}")
        stream, offset = b"", 0
        for n, size in enumerate(sizes):
            data = bytes((seed[0] + n + i) % 256 for i in range(size))
            if data:
                store.append_output(token, 1, offset, data, limit)
            stream += data
            offset += len(data)
            first, kept = stream_text(store, token, 1)
            assert kept == stream[-limit:] if stream else kept == b""
            if kept:
                assert first == len(stream) - len(kept)

    check()


# --- migrations and config --------------------------------------------------------------------

def test_a_new_store_is_at_the_latest_schema_version(store):
    assert store.conn.pragma("user_version") == len(MIGRATIONS)


def test_a_version_1_store_is_migrated_in_place_keeping_its_jobs_and_attempts(tmp_path):
    path = str(tmp_path / "queue.db")
    old = apsw.Connection(path)
    with old:
        old.execute(MIGRATIONS[0])
        old.pragma("user_version", 1)
        old.execute("INSERT INTO jobs (id, command, queue, priority, state, run_at, timeout_sec,"
                    " max_retries, created_at, updated_at) VALUES ('old', 'true', 'default', 0,"
                    " 'completed', 1, 60, 3, 1, 2)")
        old.execute("INSERT INTO attempts (job_seq, number, agent, dispatched_at, finished_at,"
                    " exit_code) VALUES (1, 1, 'a', 1, 2, 0)")
    old.close()

    store = Store(path)
    try:
        assert store.conn.pragma("user_version") == len(MIGRATIONS)
        job = stored(store, "old")
        assert job.state is JobState.COMPLETED
        [attempt] = store.attempts(job.seq)
        assert (attempt.exit_code, attempt.late_result) == (0, None)
        assert store.counts()["completed"] == 1
    finally:
        store.close()


def test_an_attempt_token_is_never_issued_twice_even_after_a_release(store):
    store.insert_jobs([new_job("a"), new_job("b")], NOW)
    _, first = store.claim(NOW, AGENT, b"owner", None)
    store.delete_attempt(first)  # the dispatch was rejected: its row goes away
    _, second = store.claim(NOW, AGENT, b"owner", None)
    assert second > first


def test_a_version_2_store_keeps_its_attempts_and_output_through_the_token_migration(tmp_path):
    path = str(tmp_path / "queue.db")
    old = apsw.Connection(path)
    with old:
        old.execute(MIGRATIONS[0])
        old.execute(MIGRATIONS[1])
        old.pragma("user_version", 2)
        old.execute("INSERT INTO jobs (id, command, queue, priority, state, run_at, timeout_sec,"
                    " max_retries, created_at, updated_at, lease, agent) VALUES ('run', 'true',"
                    " 'default', 0, 'processing', 1, 60, 3, 1, 2, 9, 'a')")
        old.execute("INSERT INTO attempts (id, job_seq, number, agent, dispatched_at,"
                    " late_result) VALUES (7, 1, 1, 'a', 1, 'exit code 0')")
        old.execute("INSERT INTO output (attempt_id, stream, offset, data)"
                    " VALUES (7, 1, 0, X'6869')")
    old.close()

    store = Store(path)
    try:
        [attempt] = store.attempts(stored(store, "run").seq)
        assert (attempt.id, attempt.late_result) == (7, "exit code 0")
        assert b"".join(c.data for c in store.output(7)) == b"hi"
        store.insert_jobs([new_job("next")], NOW)
        _, token = claimed(store)
        assert token > 9, "a token past every one the old store issued, leases included"
    finally:
        store.close()


def test_a_reopened_store_keeps_its_data_and_schema_version(tmp_path):
    path = str(tmp_path / "queue.db")
    first = Store(path)
    first.insert_jobs([new_job("kept"), new_job("also-kept", run_at=NOW + 50)], NOW)
    make_job = claimed(first)
    first.append_output(make_job[1], 1, 0, b"output survives", 1024)
    first.set_config("max_retries", 5)
    counts = first.counts()
    first.close()

    second = Store(path)
    try:
        assert second.conn.pragma("user_version") == len(MIGRATIONS)
        assert stored(second, "kept").state is R
        assert stored(second, "also-kept").state is P
        assert second.counts() == counts
        assert second.next_due() == NOW + 50
        assert b"".join(c.data for c in second.output(make_job[1])) == b"output survives"
        assert second.config() == {"max_retries": 5}
    finally:
        second.close()


def test_a_store_from_a_newer_queuectl_is_refused(tmp_path):
    path = str(tmp_path / "queue.db")
    Store(path).close()
    conn = apsw.Connection(path)
    conn.pragma("user_version", len(MIGRATIONS) + 1)
    conn.close()
    with pytest.raises(RuntimeError) as info:
        Store(path)
    assert "Upgrade" in str(info.value)


def test_config_round_trip_keeps_types_and_overwrites(store):
    assert store.config() == {}
    store.set_config("max_retries", 5)
    store.set_config("base_backoff", 1.5)
    store.set_config("max_retries", 7)
    config = store.config()
    assert config == {"max_retries": 7, "base_backoff": 1.5}
    assert type(config["max_retries"]) is int and type(config["base_backoff"]) is float


def test_resending_output_after_trimming_stores_no_byte_twice(store):
    """An agent resends unacknowledged output after a reconnect; trimming must
    not make an old chunk look new."""
    token = claimed_token(store, "a")
    store.append_output(token, 1, 0, b"0123456789", 12)
    store.append_output(token, 1, 10, b"abcdef", 12)       # trims "0123" away
    assert stream_text(store, token, 1) == (4, b"456789abcdef")
    store.append_output(token, 1, 0, b"0123456789", 12)    # the resend of both chunks
    store.append_output(token, 1, 10, b"abcdef", 12)
    store.append_output(token, 1, 12, b"cdefXY", 12)       # overlaps: only "XY" is new
    assert stream_text(store, token, 1) == (6, b"6789abcdefXY")


def test_an_unplaceable_backlog_does_not_hide_a_job_that_becomes_placeable(store):
    """Claims remember that no due job matches a label set; that memory must
    end when a matching job becomes due (inserted, promoted or retried)."""
    gpu = {"gpu": "a100"}
    store.insert_jobs([new_job(f"tpu{n}", priority=1, requires={"tpu": "v5"}) for n in range(50)],
                      NOW)
    assert claim_id(store, labels=gpu) is None
    store.insert_jobs([new_job("inserted", requires=gpu)], NOW)
    assert claim_id(store, labels=gpu) == "inserted"
    assert claim_id(store, labels=gpu) is None
    store.insert_jobs([new_job("later", requires=gpu, run_at=NOW + 60)], NOW)
    assert claim_id(store, labels=gpu) is None
    store.promote_due(NOW + 61)
    assert claim_id(store, NOW + 61, labels=gpu) == "later"
    # A failed attempt that becomes due again is found too.
    assert claim_id(store, NOW + 61, labels=gpu) is None
    job = store.job("later")
    store.transition(job, JobState.FAILED, NOW + 62, token=None, attempts=1, run_at=NOW + 62)
    assert claim_id(store, NOW + 62, labels=gpu) == "later"
    # Jobs without requirements were never hidden behind the backlog.
    store.insert_jobs([new_job("free", priority=500)], NOW)
    assert claim_id(store, NOW + 62, labels=gpu) == "free"


# --- queues ----------------------------------------------------------------------------------

def test_claims_take_the_best_job_across_queues_and_skip_closed_ones(store):
    store.insert_jobs([new_job("a-late", queue="a", priority=5),
                       new_job("b-first", queue="b", priority=1),
                       new_job("c-mid", queue="c", priority=3),
                       new_job("b-placed", queue="b", priority=0, requires={"gpu": "x"})], NOW)
    closed = frozenset({"b"})
    job, _ = store.claim(NOW, AGENT, b"owner", json.dumps({"gpu": "x"}), closed)
    assert job.id == "c-mid"  # b's jobs (placed or not) are closed; c's head beats a's
    job, _ = store.claim(NOW, AGENT, b"owner", json.dumps({"gpu": "x"}))
    assert job.id == "b-placed"  # open again: the cached "no placed match" did not stick
    assert [next_job(store).id for _ in range(2)] == ["b-first", "a-late"]
    assert store.claim(NOW, AGENT, b"owner", None) is None


def test_queue_rules_persist_and_running_counts_follow_leases(tmp_path):
    path = str(tmp_path / "queue.db")
    store = Store(path)
    store.insert_jobs([new_job("x1", queue="x"), new_job("x2", queue="x")], NOW)
    store.set_queue_rule("x", True, 2)
    store.set_queue_rule("y", False, None)  # no rule at all: not stored
    store.claim(NOW, AGENT, b"owner", None)
    assert store.running_by_queue() == {"x": 1}
    assert store.active_by_queue() == {"x": {"pending": 1, "processing": 1}}
    store.close()
    store = Store(path)
    try:
        assert store.queue_rules() == {"x": (True, 2)}
        store.set_queue_rule("x", False, None)
        assert store.queue_rules() == {}
    finally:
        store.close()


def test_a_version_5_store_keeps_its_due_jobs_claimable(tmp_path):
    path = str(tmp_path / "queue.db")
    old = apsw.Connection(path)
    with old:
        for number in range(5):
            old.execute(MIGRATIONS[number])
        old.pragma("user_version", 5)
        old.execute("INSERT INTO jobs (id, command, queue, priority, state, run_at, due,"
                    " timeout_sec, max_retries, created_at, updated_at) VALUES ('due', 'true',"
                    " 'default', 0, 'pending', 1, 1, 60, 3, 1, 1)")
    old.close()
    store = Store(path)
    try:
        assert store.conn.pragma("user_version") == len(MIGRATIONS)
        assert next_job(store).id == "due"
    finally:
        store.close()


def test_a_long_closed_backlog_ahead_switches_to_the_head_of_each_queue(store):
    from queuectl.broker.store import CLOSED_SKIP

    store.use_queue_index(True)  # as while any queue has a rule
    backlog = [new_job(f"paused-{n}", queue="paused", priority=1) for n in range(CLOSED_SKIP * 2)]
    store.insert_jobs(backlog + [new_job("z-open", queue="z", priority=7),
                                 new_job("a-open", queue="a", priority=9)], NOW)
    closed = frozenset({"paused"})
    assert [next_job(store, closed).id for _ in range(2)] == ["z-open", "a-open"]
    assert store.claim(NOW, AGENT, b"owner", None, closed) is None
    assert next_job(store).id == "paused-0"  # open again: its backlog first
    store.use_queue_index(False)  # without the index, the same answers (by walking)
    assert store.claim(NOW, AGENT, b"owner", None, frozenset({"paused"})) is None
    assert next_job(store).id == "paused-1"


def test_the_queue_index_exists_only_while_a_queue_has_a_rule(tmp_path):
    from queuectl.broker.queues import Queues

    store = Store(str(tmp_path / "queue.db"))
    try:
        queues = Queues(store)
        assert not store._has_queue_index()
        queues.limit("batch", 2)
        queues.pause("nightly", True)
        assert store._has_queue_index()
        queues.limit("batch", None)
        assert store._has_queue_index()
        queues.pause("nightly", False)
        assert not store._has_queue_index() and queues.rules == {}
    finally:
        store.close()


def test_a_claim_among_thousands_of_open_queues_runs_a_constant_number_of_statements(store):
    store.use_queue_index(True)
    store.insert_jobs([new_job(f"t-{n}", queue=f"tenant-{n}", priority=100) for n in range(2000)]
                      + [new_job("hot", queue="hot", priority=1)], NOW)
    statements: list[str] = []

    def trace(cursor, sql, bindings):
        statements.append(sql)
        return True

    store.conn.exec_trace = trace
    try:
        assert next_job(store).id == "hot"
    finally:
        store.conn.exec_trace = None
    assert len(statements) <= 6, statements  # not one seek per queue
