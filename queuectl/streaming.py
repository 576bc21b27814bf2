"""``Client.enqueue_many``: many jobs, all or none, in bounded memory.

Jobs are read from any iterable, validated and cut into chunks (by count,
size and age). A batch that fits one chunk goes as one ``enqueue`` request:
one round trip. A bigger one is streamed (broker/batches.py): ``batch_add``
per chunk, one request at a time, so the broker interleaves other clients'
requests between chunks; then ``batch_commit``, which returns once every job
is visible. Only two chunks are held at a time; the ids of each stored chunk
go to ``on_ids``. Any failure before the commit aborts the batch, so nothing
of it is enqueued.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .transport import (
    BrokerUnreachable,
    Conflict,
    Connection,
    InvalidInput,
    QueueError,
    size_allowance,
)

CHUNK_JOBS = 5_000  # jobs per request; the broker takes up to 10,000 (broker/admin.py)
# Estimated bytes per request: far below the 64 MiB frame limit even when the
# estimate (characters, not UTF-8 bytes) is off by 4x.
CHUNK_BYTES = 4 * 1024 * 1024
CHUNK_AGE = 10.0  # seconds: a slow producer (stdin) still sends well within batch_idle_sec
HOLD = 10.0  # seconds the broker may park a commit while it makes the jobs visible
_BATCH_ITEM = re.compile(r"^job (\d+): ")  # how the broker names a job of a request

Chunk = tuple[list[dict[str, Any]], list[str]]  # validated jobs and their labels


def _weight(spec: dict[str, Any]) -> int:
    size = 64 + len(spec["command"]) + len(spec.get("cwd") or "")
    for field in ("env", "requires"):
        if field in spec:
            size += sum(len(key) + len(value) + 8 for key, value in spec[field].items())
    return size


def chunks(jobs: Iterable[Any], labels: Iterable[str],
           check: Callable[[Any, str], dict[str, Any]]) -> Iterator[Chunk]:
    """Validated chunks; at least one, maybe empty. An id twice in one chunk is
    refused here (naming both labels); across chunks, the broker refuses it."""
    specs: list[dict[str, Any]] = []
    names: list[str] = []
    first: dict[str, str] = {}
    size, started, sent = 0, time.monotonic(), False
    for job, label in zip(jobs, labels, strict=False):  # labels may be endless (job 1, 2, ...)
        spec = check(job, label)
        job_id = spec.get("id")
        if job_id is not None:
            if job_id in first:
                raise Conflict(f"{label}: id {job_id!r} appears twice in the batch "
                               f"(first at {first[job_id]})")
            first[job_id] = label
        specs.append(spec)
        names.append(label)
        size += _weight(spec)
        if (len(specs) >= CHUNK_JOBS or size >= CHUNK_BYTES
                or time.monotonic() - started >= CHUNK_AGE):
            yield specs, names
            specs, names, first, size, started, sent = [], [], {}, 0, time.monotonic(), True
    if specs or not sent:
        yield specs, names


def _labelled(exc: QueueError, names: list[str]) -> QueueError:
    """The broker's ``job N: ...`` error, with the job's own label (a line number)."""
    numbered = _BATCH_ITEM.match(str(exc))
    if numbered and 1 <= int(numbered.group(1)) <= len(names):
        label = names[int(numbered.group(1)) - 1]
        return type(exc)(f"{label}: {str(exc)[numbered.end():]}; nothing from the batch "
                         "was enqueued")
    return exc


def _reply(names: list[str], wait: Callable[[], Any]) -> Any:
    try:
        return wait()
    except (Conflict, InvalidInput) as exc:
        raise _labelled(exc, names) from None


def enqueue_all(conn: Connection, check: Callable[[Any, str], dict[str, Any]],
                jobs: Iterable[Any], labels: Iterable[str],
                on_ids: Callable[[list[str]], None]) -> int:
    """Enqueue every job or none; returns how many."""
    stream = chunks(jobs, labels, check)
    specs, names = next(stream)
    ahead = next(stream, None)
    if ahead is None:
        result = _reply(names, lambda: conn.call("enqueue", extra=size_allowance(len(specs)),
                                                 jobs=specs))
        on_ids(result["ids"])
        return result["enqueued"]
    batch, count = None, 0
    try:
        reply = _reply(names, conn.submit("batch_add", extra=size_allowance(len(specs)),
                                          batch=None, jobs=specs))
        batch, count = (reply["batch"], reply["key"]), len(specs)
        on_ids(reply["ids"])
        while ahead is not None:
            specs, names = ahead
            sent = conn.submit("batch_add", extra=size_allowance(len(specs)), batch=batch[0],
                               key=batch[1], jobs=specs)
            ahead = next(stream, None)  # read and check the next chunk while the broker works
            on_ids(_reply(names, sent)["ids"])
            count += len(specs)
    except BrokerUnreachable as exc:
        raise BrokerUnreachable(f"{exc}; nothing from the batch was enqueued (the broker "
                                "aborts it)") from None
    except BaseException:
        if batch is not None:
            _abort(conn, batch)
        raise
    return _commit(conn, batch, count)


def _abort(conn: Connection, batch: tuple[int, str]) -> None:
    """Best effort: a batch left open is aborted by the broker after batch_idle_sec."""
    try:
        conn.call("batch_abort", batch=batch[0], key=batch[1])
    except QueueError:
        pass


def _commit(conn: Connection, batch: tuple[int, str], count: int) -> int:
    """Commit, and wait until every job is visible, across broker restarts: a batch
    committed before a crash becomes visible after it, one still open is aborted."""
    while True:
        result = conn.survive_restarts(
            lambda: conn.call("batch_commit", hold=HOLD, batch=batch[0], key=batch[1],
                              count=count))
        if result["done"]:
            return result["jobs"]
