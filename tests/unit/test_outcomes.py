"""An attempt's outcome is stored as its Outcome value (schema version 9) and
matched by it; the reason users read is unchanged, for attempts that ended
before the migration and after it."""

from __future__ import annotations

import apsw
import pytest

from queuectl.broker.lifecycle import reason_text
from queuectl.broker.store import MIGRATIONS, NewJob, Store
from queuectl.broker.views import attempt_view
from queuectl.proto.states import Outcome

NOW = 1_700_000_000.0
# (outcome, exit code, detail) of every reason lifecycle.reason_text writes
ENDS = [(Outcome.OK, 0, ""), (Outcome.EXIT, 3, ""), (Outcome.SIGNAL, None, "SIGKILL"),
        (Outcome.SIGNAL, None, ""), (Outcome.TIMEOUT, None, ""), (Outcome.CANCELED, None, ""),
        (Outcome.SPAWN_ERROR, None, "[Errno 2] No such file or directory: '/x'"),
        (Outcome.LEASE_LOST, None, ""), (Outcome.STOPPED, None, "")]


def version_8_store(path: str) -> None:
    """A store at schema 8 with one ended attempt per reason, and one still running."""
    old = apsw.Connection(path)
    with old:
        for number in range(8):
            old.execute(MIGRATIONS[number])
        old.pragma("user_version", 8)
        old.execute("INSERT INTO jobs (id, command, queue, priority, state, run_at, timeout_sec,"
                    " max_retries, created_at, updated_at) VALUES ('j', 'true', 'default', 0,"
                    " 'dead', 1, 60, 3, 1, 2)")
        for number, (outcome, exit_code, detail) in enumerate(ENDS, 1):
            old.execute("INSERT INTO attempts (job_seq, number, agent, dispatched_at,"
                        " finished_at, exit_code, reason) VALUES (1, ?, 'a', ?, ?, ?, ?)",
                        (number, NOW - 60, NOW - 30, exit_code,
                         reason_text(outcome, exit_code, detail)))
        old.execute("INSERT INTO attempts (job_seq, number, agent, dispatched_at)"
                    " VALUES (1, 99, 'a', ?)", (NOW - 1,))
    old.close()


def test_a_version_8_store_gets_each_ended_attempts_outcome_from_its_reason(tmp_path):
    path = str(tmp_path / "queue.db")
    version_8_store(path)
    before = apsw.Connection(path)
    reasons = [row[0] for row in before.execute("SELECT reason FROM attempts ORDER BY id")]
    before.close()
    store = Store(path)
    try:
        assert store.conn.pragma("user_version") == len(MIGRATIONS)
        attempts = store.attempts(1)
        assert [a.outcome for a in attempts] == [end[0] for end in ENDS] + [None]
        assert [a.reason for a in attempts] == reasons  # what users read is unchanged
        assert all("outcome" not in attempt_view(a) for a in attempts)  # the views as before
        # counted as the broker counts live: ok, failures, but no cancel (the job is dead)
        finished = store.finished_since(NOW - 3600)
        assert finished == [(NOW - 30, outcome is Outcome.OK) for outcome, _, _ in ENDS
                            if outcome is not Outcome.CANCELED]
    finally:
        store.close()


@pytest.mark.parametrize("outcome, exit_code, detail", ENDS)
def test_an_ended_attempt_stores_its_outcome_and_its_reason(store, outcome, exit_code, detail):
    store.insert_jobs([NewJob(id="j", command="true", queue="default", priority=0, run_at=NOW,
                              timeout_sec=60.0, max_retries=3)], NOW)
    _, token = store.claim(NOW, "a", b"o", None)
    reason = reason_text(outcome, exit_code, detail)
    store.end_attempt(token, outcome=outcome, started_at=NOW, finished_at=NOW + 1,
                      exit_code=exit_code, reason=reason)
    attempt = store.attempt(token)
    assert (attempt.outcome, attempt.reason) == (outcome, reason)
    stored = store.conn.execute("SELECT outcome FROM attempts WHERE id = ?", (token,)).fetchone()
    assert stored == (outcome.value,)
