"""The store's SQL for streamed batches (broker/batches.py): a part of ``Store``
(broker/store.py).

A batch's rows are staged in ``jobs`` with its id in ``batch`` and due = 2
(docs/DECISIONS.md, section 10); committing or aborting walks them a slice at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import apsw

from queuectl.proto.states import JobState

from .rows import BATCHES, Batch, BatchState, Row, literal

_PENDING = literal(JobState.PENDING)


class BatchStore:
    """Streamed batches; Store provides ``conn``, ``_one`` and ``_placed_generation``."""

    conn: apsw.Connection
    _one: Callable[..., Row | None]
    _placed_generation: int

    # --- streamed batches (broker/batches.py) -------------------------------

    def open_batch(self, now: float, keep: float, key: bytes) -> int:
        """A new open batch, for the client that holds the secret behind ``key``; its
        rows will take seqs above every row there is now. Forgets batches whose rows
        were all handled more than ``keep`` seconds ago."""
        self.conn.execute("DELETE FROM batches WHERE ended_at < ? AND next_seq > last_seq",
                          (now - keep,))
        self.conn.execute(
            "INSERT INTO batches (state, first_seq, last_seq, created_at, key)"
            " SELECT ?, coalesce(max(seq), 0) + 1, coalesce(max(seq), 0), ?, ? FROM jobs",
            (BatchState.OPEN.value, now, key))
        return self.conn.last_insert_rowid()

    def batch(self, batch_id: int) -> Batch | None:
        row = self._one(f"SELECT {BATCHES.select} FROM batches WHERE id = ?", (batch_id,))
        return BATCHES.load(row) if row else None

    def live_batches(self) -> list[Batch]:
        """Batches that are open, or whose rows are still being made visible or deleted."""
        return [BATCHES.load(row) for row in self.conn.execute(
            f"SELECT {BATCHES.select} FROM batches WHERE state = ? OR next_seq <= last_seq",
            (BatchState.OPEN.value,))]

    def end_batch(self, batch_id: int, state: BatchState, now: float,
                  reason: str | None = None) -> None:
        """Commit or abort an open batch: its rows are then walked from the first."""
        self.conn.execute("UPDATE batches SET state = ?, next_seq = first_seq, reason = ?,"
                          " ended_at = ? WHERE id = ? AND state = ?",
                          (state.value, reason, now, batch_id, BatchState.OPEN.value))

    def abort_open_batches(self, now: float, reason: str) -> list[int]:
        return [batch_id for (batch_id,) in self.conn.execute(
            "UPDATE batches SET state = ?, next_seq = first_seq, reason = ?, ended_at = ?"
            " WHERE state = ? RETURNING id",
            (BatchState.ABORTED.value, reason, now, BatchState.OPEN.value))]

    def advance_batch(self, batch: Batch, now: float,
                      span: int) -> tuple[Batch, int, float | None]:
        """One slice of a committed or aborted batch: its rows among the next ``span``
        seqs become visible (and counted) or are deleted. Returns the batch as it
        now is, how many rows became visible, and the earliest run_at among those
        that wait for the timer (or None)."""
        low = batch.next_seq
        assert low is not None  # a committed or aborted batch walks from next_seq (end_batch)
        high = min(low + span - 1, batch.last_seq)
        visible, waiting = 0, None
        if batch.state is BatchState.ABORTED:
            self.conn.execute("DELETE FROM jobs WHERE seq BETWEEN ? AND ? AND batch = ?",
                              (low, high, batch.id))
        else:
            self.conn.execute("UPDATE jobs SET batch = NULL, due = run_at <= ?"
                              " WHERE seq BETWEEN ? AND ? AND batch = ?",
                              (now, low, high, batch.id))
            visible = self.conn.changes()
            self.conn.execute(f"UPDATE counts SET n = n + ? WHERE state = {_PENDING}",
                              (visible,))
            self._placed_generation += 1  # some of them may require labels
            # (not next_due(): the planner reads it through jobs_state, O(pending jobs))
            row = self._one("SELECT min(run_at) FROM jobs WHERE seq BETWEEN ? AND ?"
                            " AND due = 0", (low, high))
            assert row is not None  # an aggregate without GROUP BY is one row
            waiting = row[0]
        state = batch.state
        if high >= batch.last_seq and state is BatchState.COMMITTED:
            state = BatchState.DONE
        self.conn.execute("UPDATE batches SET next_seq = ?, state = ?, ended_at = ? WHERE id = ?",
                          (high + 1, state.value, now, batch.id))
        return dataclasses.replace(batch, state=state, next_seq=high + 1), visible, waiting
