"""Batches streamed in chunks: all or none, without holding the loop.

A big ``enqueue --file`` (or ``Client.enqueue_many``) sends its jobs in
chunks: ``batch_add`` opens a batch with the first chunk and adds one chunk
per request, ``batch_commit`` commits it, ``batch_abort`` gives it up. A
chunk's jobs are inserted at once but hidden (``Store.insert_jobs(stage=)``):
no claim, timer, read or count sees them, yet their ids are taken. The commit
is one durable row change; the broker then makes the rows visible a slice
per loop iteration (``advance``) and answers the commit once all are. An
abort, a client silent for ``batch_idle_sec``, or a broker restart before
the commit deletes the rows, also a slice per iteration.

A batch is its client's: the first ``batch_add`` answers with a secret key,
which every later request about the batch must show (the store keeps only a
digest, so it holds across restarts). To anyone else the batch does not
exist: no other client can add to it, commit it half sent, or abort it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from queuectl.proto.states import ErrorCode

from .jobs import JobError
from .store import Batch, BatchState, Store

log = logging.getLogger(__name__)

SLICE = 10_000  # seqs of a committed or aborted batch one loop iteration walks
KEEP = 3600.0  # seconds an ended batch is remembered: a commit asked again gets its answer


class Batches:
    def __init__(self, store: Store):
        self.store = store
        self.heard: dict[int, float] = {}  # open batch -> monotonic time of its last chunk
        self.work: list[Batch] = []  # committed or aborted, with rows left to walk

    def load(self, mono: float) -> None:
        """Rebuild from the store: at start, and after a transaction failed."""
        heard, self.heard, self.work = self.heard, {}, []
        for batch in self.store.live_batches():
            if batch.state is BatchState.OPEN:
                self.heard[batch.id] = heard.get(batch.id, mono)
            else:
                self.work.append(batch)

    def recover(self, now: float, mono: float) -> None:
        """At broker start: a batch not committed before the restart is aborted
        (its client has lost its connection); a committed one goes on."""
        for batch_id in self.store.abort_open_batches(now, "the broker restarted before it was "
                                                          "committed"):
            log.warning("batch %d was open when the broker stopped: aborted", batch_id)
        self.load(mono)

    def open(self, batch_id: int | None, key: str | None, now: float) -> tuple[int, str]:
        """The batch a chunk goes to and its key: a new one, or ``batch_id`` if it is
        open and ``key`` is its key."""
        if batch_id is None:
            key = secrets.token_hex(16)
            return self.store.open_batch(now, KEEP, _digest(key)), key
        batch = self.get(batch_id, key)
        if batch.state is not BatchState.OPEN:
            raise self._closed(batch)
        assert key is not None  # get() refuses a batch to a client without its key
        return batch_id, key

    def added(self, batch_id: int, mono: float) -> None:
        self.heard[batch_id] = mono

    def commit(self, batch_id: int, key: str | None, count: int, now: float) -> Batch:
        """Commit an open batch of ``count`` jobs; a committed one is left as it is."""
        batch = self.get(batch_id, key)
        if batch.state is BatchState.ABORTED:
            raise self._closed(batch)
        if batch.state is BatchState.OPEN:
            if batch.rows != count:
                raise JobError(ErrorCode.CONFLICT, f"batch {batch_id} holds {batch.rows} jobs, not "
                                           f"{count}: a chunk is missing")
            self._end(batch_id, BatchState.COMMITTED, now)
            batch = self.get(batch_id, key)
        return batch

    def abort(self, batch_id: int, key: str | None, reason: str, now: float) -> None:
        batch = self.get(batch_id, key)
        if batch.state in (BatchState.COMMITTED, BatchState.DONE):
            raise self._closed(batch)
        if batch.state is BatchState.OPEN:
            self._end(batch_id, BatchState.ABORTED, now, reason)

    def expire(self, mono: float, idle: float, now: float) -> None:
        """Abort the open batches whose client has sent nothing for ``idle`` seconds."""
        for batch_id, heard in list(self.heard.items()):
            if mono - heard > idle:
                log.warning("batch %d aborted: no chunk or commit for %.0fs", batch_id, idle)
                self._end(batch_id, BatchState.ABORTED, now,
                          f"its client sent nothing for {idle:g}s")

    def advance(self, now: float) -> tuple[int, float | None, Batch | None]:
        """One slice of the oldest batch with rows left to walk. Returns how many
        rows became visible, the earliest run_at of those that wait for their
        time, and the batch if it is now finished."""
        batch, visible, waiting = self.store.advance_batch(self.work[0], now, SLICE)
        if batch.unfinished:
            self.work[0] = batch
            return visible, waiting, None
        self.work.pop(0)
        return visible, waiting, batch

    def _end(self, batch_id: int, state: BatchState, now: float, reason: str | None = None) -> None:
        self.store.end_batch(batch_id, state, now, reason)
        self.heard.pop(batch_id, None)
        batch = self.store.batch(batch_id)
        assert batch is not None  # it was open: a row is forgotten only an hour after it ends
        self.work.append(batch)

    @staticmethod
    def _closed(batch: Batch) -> JobError:
        if batch.state is BatchState.ABORTED:
            return JobError(ErrorCode.CONFLICT, f"batch {batch.id} was aborted ({batch.reason}); "
                                        "nothing from it was enqueued")
        return JobError(ErrorCode.CONFLICT, f"batch {batch.id} is committed already")

    def get(self, batch_id: int, key: str | None) -> Batch:
        """Batch ``batch_id``, to the client that shows its key; to anyone else it is
        as unknown as a batch that never was."""
        batch = self.store.batch(batch_id)
        if batch is None or key is None or batch.key is None or \
                not hmac.compare_digest(batch.key, _digest(key)):
            raise JobError(ErrorCode.NOT_FOUND, f"no batch {batch_id} of this client (batches are "
                                        "forgotten an hour after they end)")
        return batch


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=16).digest()
