"""What the store answers for the stats page: job search, and the recently
ended attempts that seed the per-minute chart (with the index migration)."""

from __future__ import annotations

import apsw

from queuectl.broker.lifecycle import reason_text
from queuectl.broker.store import MIGRATIONS, NewJob, Store
from queuectl.proto.states import JobState, Outcome

NOW = 1_700_000_000.0


def add(store: Store, job_id: str, command: str, queue: str = "default") -> None:
    store.insert_jobs([NewJob(id=job_id, command=command, queue=queue, priority=100, run_at=NOW,
                              timeout_sec=60.0, max_retries=3, env=None, cwd=None,
                              requires=None)], NOW)


def ids(jobs) -> list[str]:
    return [job.id for job in jobs]


def test_search_matches_a_part_of_the_id_or_the_command_in_any_case(store):
    add(store, "backup-db", "pg_dump prod")
    add(store, "mail-1", "SEND_MAIL --to ops")
    add(store, "other", "echo nothing")
    assert ids(store.list_jobs(search="BACKUP")) == ["backup-db"]
    assert ids(store.list_jobs(search="send_mail")) == ["mail-1"]
    assert ids(store.list_jobs(search="o")) == ["other", "mail-1", "backup-db"]  # newest first
    assert ids(store.list_jobs(search="nope")) == []


def test_search_takes_wildcards_and_quotes_literally(store):
    add(store, "a", "echo 100%")
    add(store, "b", "echo 1000")
    add(store, "c", "rm a_b")
    add(store, "d", "rm axb")
    add(store, "e", "echo '\\' done")
    assert ids(store.list_jobs(search="100%")) == ["a"]
    assert ids(store.list_jobs(search="a_b")) == ["c"]
    assert ids(store.list_jobs(search="\\")) == ["e"]
    assert ids(store.list_jobs(search="'")) == ["e"]
    assert ids(store.list_jobs(search="%")) == ["a"]


def test_search_combines_with_state_queue_and_limit(store):
    for n in range(5):
        add(store, f"build-{n}", "make", queue="ci" if n % 2 else "default")
    job = store.job("build-4")
    store.transition(job, JobState.CANCELED, NOW + 1, last_error="canceled")
    assert ids(store.list_jobs(queue="ci", search="build")) == ["build-3", "build-1"]
    assert ids(store.list_jobs(state="pending", search="BUILD", limit=2)) == ["build-3", "build-2"]
    assert ids(store.list_jobs(state="canceled", search="build")) == ["build-4"]


def run_attempt(store: Store, job_id: str, *, finished_at: float, outcome: Outcome,
                stale: bool = False) -> None:
    add(store, job_id, "true")
    lease = store.claim(NOW, "agent", b"owner", None)
    assert lease is not None
    job, token = lease
    assert job.id == job_id
    exit_code = {Outcome.OK: 0, Outcome.EXIT: 1}.get(outcome)
    store.end_attempt(token, outcome=outcome, started_at=finished_at - 1,
                      finished_at=finished_at, exit_code=exit_code, stale=stale,
                      reason=reason_text(outcome, exit_code, ""))


def test_finished_since_lists_recent_ended_attempts_without_cancels_or_stale_ones(store):
    run_attempt(store, "ok", finished_at=NOW - 30, outcome=Outcome.OK)
    run_attempt(store, "bad", finished_at=NOW - 20, outcome=Outcome.EXIT)
    run_attempt(store, "lost", finished_at=NOW - 10, outcome=Outcome.LEASE_LOST)
    run_attempt(store, "old", finished_at=NOW - 7200, outcome=Outcome.OK)
    run_attempt(store, "stopped", finished_at=NOW - 5, outcome=Outcome.CANCELED)
    run_attempt(store, "late", finished_at=NOW - 5, outcome=Outcome.OK, stale=True)
    add(store, "running", "sleep 9")
    store.claim(NOW, "agent", b"owner", None)  # an attempt that has not ended
    assert sorted(store.finished_since(NOW - 3600)) == [
        (NOW - 30, True), (NOW - 20, False), (NOW - 10, False)]


def test_an_attempt_that_ended_its_job_as_canceled_is_not_a_failure_whatever_its_reason(store):
    """A timeout while a cancel was pending ends the job canceled: live, the broker
    counts no failed attempt (broker/metrics.py), so the seed must not either."""
    run_attempt(store, "timed-out-while-canceling", finished_at=NOW - 30, outcome=Outcome.TIMEOUT)
    job = store.job("timed-out-while-canceling")
    store.transition(job, JobState.CANCELED, NOW - 30, attempts=1, token=None,
                     started_at=NOW - 31, finished_at=NOW - 30, last_error="timeout")
    # A job that died, was retried from the DLQ and then canceled while pending:
    # its failed attempt stays a failure.
    run_attempt(store, "died-then-canceled", finished_at=NOW - 20, outcome=Outcome.EXIT)
    job = store.job("died-then-canceled")
    job = store.transition(job, JobState.DEAD, NOW - 20, attempts=1, token=None,
                           started_at=NOW - 21, finished_at=NOW - 20, last_error="exit code 1")
    job = store.transition(job, JobState.PENDING, NOW - 15, attempts=0, run_at=NOW + 3600,
                           started_at=None, finished_at=None, last_error=None)
    store.transition(job, JobState.CANCELED, NOW - 10, last_error="canceled")
    assert store.finished_since(NOW - 3600) == [(NOW - 20, False)]


def old_store(tmp_path, version: int, state: str) -> str:
    """A store at schema ``version`` holding one job 'old' in ``state``; returns its path."""
    path = str(tmp_path / "queue.db")
    old = apsw.Connection(path)
    with old:
        for number in range(version):
            old.execute(MIGRATIONS[number])
        old.pragma("user_version", version)
        old.execute("INSERT INTO jobs (id, command, queue, priority, state, run_at, timeout_sec,"
                    " max_retries, created_at, updated_at) VALUES ('old', 'true', 'default', 0,"
                    " ?, 1, 60, 3, 1, 2)", (state,))
    old.close()
    return path


def test_a_version_3_store_gets_the_finished_index_and_keeps_its_attempts(tmp_path):
    path = old_store(tmp_path, 3, "completed")
    old = apsw.Connection(path)
    with old:
        old.execute("INSERT INTO attempts (job_seq, number, agent, dispatched_at, finished_at,"
                    " exit_code) VALUES (1, 1, 'a', 1, ?, 0)", (NOW - 60,))
    old.close()
    store = Store(path)
    try:
        assert store.conn.pragma("user_version") == len(MIGRATIONS)
        plan = " ".join(str(row) for row in store.conn.execute(
            "EXPLAIN QUERY PLAN SELECT finished_at FROM attempts WHERE finished_at >= ?", (0,)))
        assert "attempts_finished" in plan
        assert store.finished_since(NOW - 3600) == [(NOW - 60, True)]
    finally:
        store.close()


def test_a_version_4_store_keeps_its_counts_when_new_jobs_are_counted_per_batch(tmp_path):
    path = old_store(tmp_path, 4, "pending")  # counted by the version-1 trigger
    store = Store(path)
    try:
        assert store.counts()["pending"] == 1
        store.insert_jobs([NewJob(id=f"new-{n}", command="true", queue="default", priority=100,
                                  run_at=NOW, timeout_sec=60, max_retries=3, env=None, cwd=None,
                                  requires=None) for n in range(3)], NOW)
        assert store.counts()["pending"] == 4
        assert store.conn.execute("SELECT count(*) FROM jobs").fetchall() == [(4,)]
    finally:
        store.close()
