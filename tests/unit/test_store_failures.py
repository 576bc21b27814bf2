"""The broker loop when its store fails in the middle of a batch.

``PRAGMA max_page_count`` makes SQLite answer SQLITE_FULL, as a full disk does;
a statement too large for the room left makes it roll the whole transaction
back on its own. The loop is driven one step at a time with a socket that
records what the broker sends, so these run in milliseconds; the same cases
on a real full disk are in tests/faults/test_storage_faults.py. So are the
store's files deleted, renamed or replaced under a running broker, which the
last tests here drive through the loop's look at them (``StoreFiles.check``).
"""

from __future__ import annotations

from typing import Any

import apsw
import pytest
import zmq

from queuectl.broker.server import Broker
from queuectl.proto import decode_batch, encode
from queuectl.proto import messages as m

CLIENT = b"client"
FULL = "the broker could not write its store: database or disk is full"


class Wire:
    """Stands in for the ROUTER socket: keeps every frame the broker sends; a peer
    in ``gone`` has closed its connection (ROUTER_MANDATORY refuses it)."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.gone: set[bytes] = set()

    def send_multipart(self, parts: list[bytes], flags: int = 0) -> None:
        if parts[0] in self.gone:
            raise zmq.ZMQError(zmq.EHOSTUNREACH)
        self.sent.append(parts)

    def replies(self) -> dict[int, m.Reply]:
        return {msg.req_id: msg for _, frame in self.sent for msg in decode_batch(frame)
                if isinstance(msg, m.Reply)}


@pytest.fixture
def broker(store):
    broker = Broker(store, "inproc://unused")
    broker.socket = Wire()
    return broker


def request(req_id: int, op: str, **args: Any) -> tuple[bytes, bytes, None]:
    return CLIENT, encode(m.Request(req_id=req_id, op=op, args=args)), None


def answer(broker: Broker, *frames: tuple[bytes, bytes, None]) -> dict[int, m.Reply]:
    broker.socket.sent.clear()
    broker.step(list(frames))
    return broker.socket.replies()


def too_big(shape: str) -> list[dict[str, Any]]:
    if shape == "10,000 jobs":  # the most one plain request may carry
        return [{"id": f"big-{n}", "command": f"echo {n} " + "x" * 200} for n in range(10_000)]
    # One job whose environment is larger than the room left, in values of 100 KiB
    # (900 KiB: within what a job's environment may hold).
    return [{"id": "big-env", "command": "env",
             "env": {f"VALUE_{n}": "v" * 100 * 1024 for n in range(9)}}]


@pytest.mark.parametrize("shape", ["10,000 jobs", "one job with 900 KiB of env"])
def test_a_batch_too_big_for_the_store_fails_whole_with_one_clear_error_and_the_loop_goes_on(
        broker, store, shape):
    assert answer(broker, request(1, "enqueue", job={"id": "kept", "command": "true"}))[1].ok
    store.conn.pragma("max_page_count", store.conn.pragma("page_count") + 100)  # ~400 KiB left

    replies = answer(broker, request(2, "enqueue", job={"id": "same-batch", "command": "true"}),
                     request(3, "enqueue", jobs=too_big(shape)),
                     request(4, "status"))

    for req_id in (2, 3):  # every write of the batch is refused, with why
        assert not replies[req_id].ok
        assert (replies[req_id].error_code, replies[req_id].error) == ("unavailable", FULL)
    assert replies[4].ok and replies[4].result["counts"]["pending"] == 1  # reads answered alone
    assert not store.conn.in_transaction
    assert [job.id for job in store.list_jobs(limit=-1)] == ["kept"]

    after = answer(broker, request(5, "enqueue", job={"id": "after", "command": "true"}))
    assert after[5].ok, after[5].error  # the room left takes a small job: no restart needed
    assert {job.id for job in store.list_jobs(limit=-1)} == {"kept", "after"}


# --- the store's files are deleted, renamed or replaced under the broker ------------------

def test_a_renamed_store_file_refuses_writes_with_one_clear_error_until_it_is_back(
        broker, store, tmp_path):
    db = tmp_path / "queue.db"
    assert answer(broker, request(1, "enqueue", job={"id": "before", "command": "true"}))[1].ok
    db.rename(tmp_path / "queue.db.away")
    broker.files.check()  # the loop's look (every 0.25 s)

    replies = answer(broker, request(2, "enqueue", job={"id": "refused", "command": "true"}),
                     request(3, "status"))
    assert (replies[2].ok, replies[2].error_code) == (False, "unavailable")
    assert replies[2].error == (f"the broker could not write its store: the store file {db} was "
                                "deleted, renamed or replaced while the broker ran; writes are "
                                "refused; restart the broker")
    assert replies[3].ok and replies[3].result["counts"]["pending"] == 1

    (tmp_path / "queue.db.away").rename(db)
    broker.files.check()
    assert answer(broker, request(4, "enqueue", job={"id": "after", "command": "true"}))[4].ok
    assert {job.id for job in store.list_jobs(limit=-1)} == {"before", "after"}


def test_a_store_path_that_cannot_be_looked_at_refuses_writes_and_ends_nothing(
        broker, store, tmp_path):
    """The store's folder replaced by a file: stat says "not a directory" (found by
    review: the look raised it and ended the broker)."""
    db, away = tmp_path / "queue.db", tmp_path.with_name(tmp_path.name + "-away")
    tmp_path.rename(away)
    tmp_path.write_text("not a folder")
    broker.files.check()
    replies = answer(broker, request(1, "enqueue", job={"id": "refused", "command": "true"}),
                     request(2, "status"))
    assert (replies[1].ok, replies[1].error_code) == (False, "unavailable")
    assert f"the store file {db} was deleted, renamed or replaced" in (replies[1].error or "")
    assert replies[2].ok
    tmp_path.unlink()
    away.rename(tmp_path)
    broker.files.check()
    assert answer(broker, request(3, "enqueue", job={"id": "after", "command": "true"}))[3].ok


def test_a_deleted_wal_file_is_renewed_with_every_commit_in_the_store_file(
        broker, store, tmp_path):
    wal = tmp_path / "queue.db-wal"
    answer(broker, request(1, "enqueue", jobs=[{"id": f"j{n}", "command": "true"}
                                               for n in range(20)]))
    wal.unlink()
    broker.files.check()

    assert wal.exists()  # a new one: what the old one held is in the store file
    other = apsw.Connection(str(tmp_path / "queue.db"), flags=apsw.SQLITE_OPEN_READONLY)
    assert other.execute("SELECT count(*) FROM jobs").fetchall() == [(20,)]
    other.close()
    assert answer(broker, request(2, "enqueue", job={"id": "after", "command": "true"}))[2].ok


AGENT = b"agent-1/" + b"s" * 32


def test_a_bye_in_a_batch_that_failed_leaves_no_job_processing(broker, store):
    """The agent said Bye with a job still leased (its results could not be
    stored: the disk was full) in a batch that failed; the resync gave the job
    back to the departing agent. Once its connection closed, the job must run
    again, not stay processing for good."""
    import time

    hello = m.Hello(agent_id="agent-1", host="h", pid=1, slots=1, labels={}, routing=AGENT.decode())
    broker.step([(AGENT, encode(hello), None)])
    answer(broker, request(1, "enqueue", job={"id": "j", "command": "sleep 9"}))
    token = next(msg.token for _, frame in broker.socket.sent for msg in decode_batch(frame)
                 if isinstance(msg, m.Dispatch))
    broker.step([(AGENT, encode(m.Started(token=token, pid=5, started_at=time.time())), None)])
    store.conn.pragma("max_page_count", store.conn.pragma("page_count") + 20)
    big = [{"id": f"b{n}", "command": "x" * 300} for n in range(5000)]
    broker.step([(AGENT, encode(m.Bye()), None), request(2, "enqueue", jobs=big)])
    assert store.job("j").state.value == "processing"  # the batch was rolled back
    store.conn.pragma("max_page_count", 2**30)  # room again
    broker.socket.gone.add(AGENT)  # and the agent's connection has closed
    broker.store_retry_at = broker.ctx.next_maintenance = 0.0
    broker.step([])
    assert len(broker.agents) == 0
    job = store.job("j")
    assert (job.state.value, job.token, job.last_error) == ("failed", None, "agent lost")


def test_a_wait_answered_in_a_batch_that_failed_is_answered_again_later(broker, store):
    """A parked `wait` woken in a failed batch: the change that woke it is rolled
    back, and so is its answer. It waits on and gets one answer, when the change
    is made for good (found by review: its reply was thrown away with the batch's,
    and none came after)."""
    answer(broker, request(1, "enqueue", job={"id": "j", "command": "true", "delay": 3600}))
    assert answer(broker, request(2, "wait", id="j", hold=30)) == {}  # parked
    store.conn.pragma("max_page_count", store.conn.pragma("page_count") + 20)
    big = [{"id": f"b{n}", "command": "x" * 300} for n in range(5000)]
    replies = answer(broker, request(3, "cancel", id="j"), request(4, "enqueue", jobs=big))
    assert set(replies) == {3, 4} and not replies[3].ok  # the cancel failed with the batch
    store.conn.pragma("max_page_count", 2**30)
    broker.store_retry_at = 0.0
    replies = answer(broker, request(5, "cancel", id="j"))
    assert replies[5].ok and replies[2].ok  # the wait, once, with the job canceled for good
    assert replies[2].result["job"]["state"] == "canceled"


def test_a_wait_parked_in_a_batch_that_failed_gets_one_answer_only(broker, store):
    answer(broker, request(1, "enqueue", job={"id": "j", "command": "true", "delay": 3600}))
    store.conn.pragma("max_page_count", store.conn.pragma("page_count") + 20)
    big = [{"id": f"b{n}", "command": "x" * 300} for n in range(5000)]
    replies = answer(broker, request(2, "wait", id="j", hold=30), request(3, "enqueue", jobs=big))
    assert not replies[2].ok and replies[2].error_code == "unavailable"
    store.conn.pragma("max_page_count", 2**30)
    broker.store_retry_at = 0.0
    replies = answer(broker, request(4, "cancel", id="j"))
    assert 2 not in replies  # the client had its answer; no second one
