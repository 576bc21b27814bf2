"""The broker loop when its store fails in the middle of a batch.

``PRAGMA max_page_count`` makes SQLite answer SQLITE_FULL, as a full disk does;
a statement too large for the room left makes it roll the whole transaction
back on its own. The loop is driven one step at a time with a socket that
records what the broker sends, so these run in milliseconds; the same cases
on a real full disk are in tests/faults/test_storage_faults.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from queuectl.broker.server import Broker
from queuectl.proto import decode_batch, encode
from queuectl.proto import messages as m

CLIENT = b"client"
FULL = "the broker could not write its store: database or disk is full"


class Wire:
    """Stands in for the ROUTER socket: keeps every frame the broker sends."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send_multipart(self, parts: list[bytes], flags: int = 0) -> None:
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
    if shape == "50,000 jobs":
        return [{"id": f"big-{n}", "command": f"echo {n} " + "x" * 100} for n in range(50_000)]
    # One job whose environment is larger than the room left, in values of 100 KiB.
    return [{"id": "big-env", "command": "env",
             "env": {f"VALUE_{n}": "v" * 100 * 1024 for n in range(40)}}]


@pytest.mark.parametrize("shape", ["50,000 jobs", "one job with 4 MB of env"])
def test_a_batch_too_big_for_the_store_fails_whole_with_one_clear_error_and_the_loop_goes_on(
        broker, store, shape):
    assert answer(broker, request(1, "enqueue", job={"id": "kept", "command": "true"}))[1].ok
    store.conn.pragma("max_page_count", store.conn.pragma("page_count") + 200)  # ~800 KiB left

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
