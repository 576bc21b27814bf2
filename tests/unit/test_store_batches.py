"""Streamed batches in the store and in broker/batches.py: staged rows are hidden
from every read yet hold their ids; a commit makes them visible and an abort
deletes them, a bounded slice at a time; a restart aborts what was not committed
and finishes what was."""

from __future__ import annotations

import json

import pytest

from queuectl.broker.batches import Batches
from queuectl.broker.jobs import JobError
from queuectl.broker.store import Batch, BatchState, DuplicateId, NewJob, Store
from queuectl.proto.states import JobState

NOW = 1_700_000_000.0
LABELS = json.dumps({"gpu": "1"})


def job(job_id: str, *, run_at: float = NOW, requires=None, queue: str = "default") -> NewJob:
    return NewJob(id=job_id, command="true", queue=queue, priority=100, run_at=run_at,
                  timeout_sec=60.0, max_retries=3, env=None, cwd=None, requires=requires)


def staged_batch(store: Store, *chunks: list[NewJob]) -> int:
    """An open batch holding ``chunks``, each inserted as one batch_add would."""
    batch = store.open_batch(NOW, 3600, b"key")
    for chunk in chunks:
        store.insert_jobs(chunk, NOW, stage=batch)
    return batch


def stored_batch(store: Store, batch_id: int) -> Batch:
    """Batch ``batch_id``, which the test has opened."""
    batch = store.batch(batch_id)
    assert batch is not None, batch_id
    return batch


def walk(store: Store, batch_id: int, span: int, now: float = NOW + 1) -> list[int]:
    """Advance the batch to its end; returns the rows made visible by each slice."""
    batch, visible = stored_batch(store, batch_id), []
    while batch.unfinished:
        batch, count, _ = store.advance_batch(batch, now, span)
        visible.append(count)
    return visible


def visible_ids(store: Store) -> set[str]:
    return {j.id for j in store.list_jobs(limit=-1)}


def a_mixed_batch(store: Store) -> int:
    return staged_batch(store, [job("due"), job("later", run_at=NOW + 3600)],
                        [job("placed", requires={"gpu": "1"}), job("other", queue="q")])


def test_staged_jobs_are_hidden_from_every_read(store):
    a_mixed_batch(store)
    assert [store.job(i) for i in ("due", "later", "placed", "other")] == [None] * 4
    assert store.list_jobs(limit=-1) == []
    assert store.list_jobs(state="pending") == [] and store.list_jobs(queue="q") == []
    assert store.list_jobs(search="due") == []
    assert store.counts()["pending"] == 0
    assert store.active_by_queue() == {}
    assert store.claim(NOW + 7200, "a1", b"owner", None) is None
    assert store.claim(NOW + 7200, "a1", b"owner", LABELS) is None
    assert store.next_due() is None  # the timer does not wait for "later"
    assert store.promote_due(NOW + 7200) == 0
    assert store.claim(NOW + 7200, "a1", b"owner", None) is None


def test_a_staged_id_is_taken_and_a_clash_inserts_nothing(store):
    batch = staged_batch(store, [job("x"), job("y")])
    with pytest.raises(DuplicateId, match="being enqueued by another batch"):
        store.insert_jobs([job("new"), job("x")], NOW)
    with pytest.raises(DuplicateId, match="appears more than once in the batch"):
        store.insert_jobs([job("z"), job("y")], NOW, stage=batch)
    other = store.open_batch(NOW, 3600, b"key")
    with pytest.raises(DuplicateId, match="being enqueued by another batch"):
        store.insert_jobs([job("x")], NOW, stage=other)
    assert store.job("new") is None
    assert store.batch(batch).rows == 2
    store.end_batch(batch, BatchState.ABORTED, NOW)
    walk(store, batch, span=10)
    store.insert_jobs([job("x")], NOW)  # free again once the batch is gone
    assert visible_ids(store) == {"x"}


def test_a_commit_makes_the_rows_visible_a_slice_at_a_time(store):
    first = staged_batch(store, [job(f"a{n}") for n in range(4)])
    store.insert_jobs([job("plain")], NOW)  # another client's job, between two chunks
    store.insert_jobs([job(f"b{n}") for n in range(3)] + [job("later", run_at=NOW + 60)],
                      NOW, stage=first)
    store.end_batch(first, BatchState.COMMITTED, NOW)
    assert store.batch(first).state is BatchState.COMMITTED
    assert visible_ids(store) == {"plain"}

    batch = store.batch(first)
    batch, count, waiting = store.advance_batch(batch, NOW + 1, 3)
    assert count == 3 and waiting is None and batch.state is BatchState.COMMITTED
    assert store.counts()["pending"] == 4
    assert visible_ids(store) == {"plain", "a0", "a1", "a2"}
    assert walk(store, first, span=3) == [2, 3]  # the plain job's seq is in the range
    assert store.batch(first).state is BatchState.DONE
    assert visible_ids(store) == {"plain", *(f"a{n}" for n in range(4)),
                                  *(f"b{n}" for n in range(3)), "later"}
    assert store.counts()["pending"] == 9
    assert store.job("later").state is JobState.PENDING
    assert store.next_due() == NOW + 60  # waits for the timer like any future job
    assert store.claim(NOW + 2, "a1", b"owner", None)[0].id in {"a0", "plain"}


def test_the_last_slice_reports_the_earliest_future_run_at(store):
    batch = staged_batch(store, [job("soon", run_at=NOW + 30), job("late", run_at=NOW + 90),
                                 job("now")])
    store.end_batch(batch, BatchState.COMMITTED, NOW)
    _, count, waiting = store.advance_batch(store.batch(batch), NOW + 1, 10)
    assert (count, waiting) == (3, NOW + 30)
    assert store.claim(NOW + 1, "a1", b"owner", None)[0].id == "now"


def test_an_abort_deletes_the_rows_a_slice_at_a_time_and_counts_nothing(store):
    store.insert_jobs([job("kept")], NOW)
    batch = staged_batch(store, [job(f"s{n}") for n in range(5)], [job("t")])
    store.insert_jobs([job("kept2")], NOW)
    store.end_batch(batch, BatchState.ABORTED, NOW, "aborted by its client")
    rows = lambda: store.conn.execute("SELECT count(*) FROM jobs").fetchall()[0][0]  # noqa: E731
    assert rows() == 8
    visible = walk(store, batch, span=2)
    assert len(visible) >= 3 and set(visible) == {0}
    assert rows() == 2 and visible_ids(store) == {"kept", "kept2"}
    assert store.counts()["pending"] == 2
    assert store.batch(batch).reason == "aborted by its client"


def test_a_restart_aborts_open_batches_and_finishes_committed_ones(tmp_path):
    path = str(tmp_path / "queue.db")
    store = Store(path)
    open_id = staged_batch(store, [job("o1"), job("o2")])
    done_id = staged_batch(store, [job(f"c{n}") for n in range(5)])
    store.end_batch(done_id, BatchState.COMMITTED, NOW)
    store.advance_batch(stored_batch(store, done_id), NOW, 2)  # then the broker dies
    store.close()

    store = Store(path)
    try:
        batches = Batches(store)
        batches.recover(NOW + 10, mono=0.0)
        assert stored_batch(store, open_id).state is BatchState.ABORTED
        assert "restarted" in (stored_batch(store, open_id).reason or "")
        assert [b.id for b in batches.work] == [open_id, done_id]
        while batches.work:
            batches.advance(NOW + 10)
        assert visible_ids(store) == {f"c{n}" for n in range(5)}
        assert stored_batch(store, done_id).state is BatchState.DONE
        store.insert_jobs([job("o1")], NOW)  # the aborted batch's ids are free
    finally:
        store.close()


# --- broker/batches.py: the rules around the store ----------------------------------------

def test_a_silent_batch_is_aborted_after_the_idle_time(store):
    batches = Batches(store)
    batch_id, key = batches.open(None, None, NOW)
    store.insert_jobs([job("a")], NOW, stage=batch_id)
    batches.added(batch_id, mono=100.0)
    batches.expire(mono=150.0, idle=60, now=NOW)
    assert store.batch(batch_id).state is BatchState.OPEN
    batches.expire(mono=161.0, idle=60, now=NOW)
    assert store.batch(batch_id).state is BatchState.ABORTED
    with pytest.raises(JobError, match=r"client sent nothing for 60s\); nothing from it"):
        batches.open(batch_id, key, NOW)
    with pytest.raises(JobError, match="was aborted"):
        batches.commit(batch_id, key, 1, NOW)


def test_a_commit_checks_the_count_and_may_be_asked_again(store):
    batches = Batches(store)
    batch_id, key = batches.open(None, None, NOW)
    store.insert_jobs([job("a"), job("b")], NOW, stage=batch_id)
    with pytest.raises(JobError, match="holds 2 jobs, not 3"):
        batches.commit(batch_id, key, 3, NOW)
    assert batches.commit(batch_id, key, 2, NOW).state is BatchState.COMMITTED
    assert batches.commit(batch_id, key, 2, NOW).state is BatchState.COMMITTED
    with pytest.raises(JobError, match="committed already"):
        batches.abort(batch_id, key, "late", NOW)
    with pytest.raises(JobError, match="committed already"):
        batches.open(batch_id, key, NOW)
    visible, _, finished = batches.advance(NOW)
    assert visible == 2 and finished is not None and finished.state is BatchState.DONE
    assert batches.commit(batch_id, key, 2, NOW).state is BatchState.DONE
    with pytest.raises(JobError, match="no batch 99"):
        batches.commit(99, key, 1, NOW)


def test_a_batch_is_its_clients_alone(store):
    """Another client knows the batch's number (they are sequential), not its key:
    for it the batch does not exist (found by review: it could commit a batch half
    sent, so that part of a file was enqueued while its client reported an error)."""
    batches = Batches(store)
    batch_id, key = batches.open(None, None, NOW)
    store.insert_jobs([job("a")], NOW, stage=batch_id)
    _other_id, other_key = batches.open(None, None, NOW)
    assert other_key != key
    for wrong in (None, other_key, key + "0"):
        with pytest.raises(JobError, match=f"no batch {batch_id} of this client") as refused:
            batches.commit(batch_id, wrong, 1, NOW)
        assert "1 job" not in str(refused.value)  # it learns nothing of the batch
        with pytest.raises(JobError, match="of this client"):
            batches.abort(batch_id, wrong, "not yours", NOW)
        with pytest.raises(JobError, match="of this client"):
            batches.open(batch_id, wrong, NOW)
    assert store.batch(batch_id).state is BatchState.OPEN
    assert batches.commit(batch_id, key, 1, NOW).state is BatchState.COMMITTED
    assert store.batch(batch_id).key != key.encode()  # the store keeps a digest only
