"""The store's SQL for attempts and their output: a part of ``Store`` (broker/store.py).

An attempt row is one lease of a job; its id is the token. Output is
stored per attempt and stream in chunks, trimmed to the output limit.
"""

from __future__ import annotations

from collections.abc import Callable

import apsw

from queuectl.proto import messages as m
from queuectl.proto.states import JobState, Outcome

from .intake import Lease
from .rows import ATTEMPTS, Attempt, Chunk, Row, literal

_OK, _CANCELED_RUN = literal(Outcome.OK), literal(Outcome.CANCELED)
_CANCELED = literal(JobState.CANCELED)
_LEASE_SELECT = ", ".join(Lease._fields)


class AttemptStore:
    """Attempts and output; Store provides ``conn`` and ``_one``."""

    conn: apsw.Connection
    _one: Callable[..., Row | None]

    # --- attempts ---------------------------------------------------------

    def finished_since(self, since: float) -> list[tuple[float, bool]]:
        """(finished_at, completed?) of attempts that ended at or after ``since``,
        leaving out stale ones and those that ended their job as canceled (even
        with another reason, such as a timeout while the cancel was pending): as
        the broker counts them live (broker/metrics.py)."""
        return [(finished_at, bool(ok)) for finished_at, ok in self.conn.execute(
            f"SELECT a.finished_at, a.outcome = {_OK} FROM attempts a JOIN jobs j"
            " ON j.seq = a.job_seq WHERE a.finished_at >= ? AND a.stale = 0"
            f" AND a.outcome IS NOT {_CANCELED_RUN}"
            f" AND NOT (j.state = {_CANCELED} AND j.finished_at IS a.finished_at)", (since,))]

    def attempt(self, token: int) -> Attempt | None:
        row = self._one(f"SELECT {ATTEMPTS.select} FROM attempts WHERE id = ?", (token,))
        return ATTEMPTS.load(row) if row else None

    def attempts(self, job_seq: int) -> list[Attempt]:
        return [ATTEMPTS.load(r) for r in self.conn.execute(
            f"SELECT {ATTEMPTS.select} FROM attempts WHERE job_seq = ? ORDER BY id", (job_seq,))]

    def latest_attempt(self, job_seq: int) -> Attempt | None:
        row = self._one(f"SELECT {ATTEMPTS.select} FROM attempts WHERE job_seq = ?"
                        f" ORDER BY id DESC LIMIT 1", (job_seq,))
        return ATTEMPTS.load(row) if row else None

    def start_attempt(self, token: int, pid: int | None, started_at: float) -> None:
        self.conn.execute("UPDATE attempts SET pid = :pid, started_at = :started_at WHERE id = :id",
                          {"pid": pid, "started_at": started_at, "id": token})
        self.conn.execute("UPDATE jobs SET started_at = :started_at WHERE token = :token",
                          {"started_at": started_at, "token": token})

    def end_attempt(self, token: int, *, outcome: Outcome, started_at: float | None,
                    finished_at: float, exit_code: int | None, reason: str | None,
                    stale: bool = False, pid: int | None = None) -> None:
        self.conn.execute(
            "UPDATE attempts SET started_at = coalesce(:started_at, started_at),"
            " finished_at = :finished_at, exit_code = :exit_code, outcome = :outcome,"
            " reason = :reason, stale = :stale, pid = coalesce(:pid, pid)"
            " WHERE id = :id AND finished_at IS NULL",
            {"started_at": started_at, "finished_at": finished_at, "exit_code": exit_code,
             "outcome": outcome.value, "reason": reason, "stale": stale, "pid": pid,
             "id": token})

    def record_late_result(self, token: int, text: str) -> None:
        """Keep what an already ended attempt reported too late (its first end stands)."""
        self.conn.execute("UPDATE attempts SET late_result = ? WHERE id = ?"
                          " AND finished_at IS NOT NULL AND late_result IS NULL", (text, token))

    def lease(self, token: int) -> Lease | None:
        """What an agent's message about attempt ``token`` is checked against: who
        may report it, when it was dispatched and started, how far its output is stored."""
        row = self._one(f"SELECT {_LEASE_SELECT} FROM attempts WHERE id = ?", (token,))
        return Lease(*row) if row else None

    def output_ends(self, token: int) -> tuple[int, int] | None:
        """Stream offsets after the last stored byte of stdout and stderr."""
        return self._one("SELECT stdout_end, stderr_end FROM attempts WHERE id = ?", (token,))

    def delete_attempt(self, token: int) -> None:
        """Forget an attempt that never started (rejected or undeliverable)."""
        self.conn.execute("DELETE FROM attempts WHERE id = ?", (token,))

    # --- output -----------------------------------------------------------

    def append_output(self, token: int, stream: int, offset: int, data: bytes, limit: int,
                      gap_ok: bool = False) -> int | None:
        """Store a chunk and drop the oldest bytes beyond ``limit`` for this stream.

        Bytes before the stream's stored end were stored already (an agent
        resends output after a reconnect) and are skipped. A chunk that starts
        past the stored end is refused unless ``gap_ok`` (the agent dropped
        those bytes): returns the stored end then, so the agent can resend.
        """
        name = "stdout" if stream == m.STDOUT else "stderr"
        with self.conn:
            row = self._one(f"SELECT {name}_end, {name}_bytes FROM attempts WHERE id = ?", (token,))
            if row is None:
                return None
            end: int
            stored: int
            end, stored = row
            if offset > end and not gap_ok:
                return end
            if offset + len(data) <= end:
                return None
            if offset < end:
                data, offset = data[end - offset:], end
            self.conn.execute("INSERT INTO output (attempt_id, stream, offset, data)"
                              " VALUES (?, ?, ?, ?)", (token, stream, offset, data))
            stored += len(data)
            while stored > limit:
                first = self._one(
                    "SELECT offset, length(data) FROM output WHERE attempt_id = ? AND stream = ?"
                    " ORDER BY offset LIMIT 1", (token, stream))
                # stored counts the bytes of this stream's output rows: above 0, a row holds some
                assert first is not None
                first_offset, size = first
                excess = stored - limit
                if size <= excess:
                    self.conn.execute("DELETE FROM output WHERE attempt_id = ? AND stream = ?"
                                      " AND offset = ?", (token, stream, first_offset))
                    stored -= size
                else:
                    self.conn.execute(
                        "UPDATE output SET data = substr(data, ?), offset = offset + ?"
                        " WHERE attempt_id = ? AND stream = ? AND offset = ?",
                        (excess + 1, excess, token, stream, first_offset))
                    stored -= excess
            self.conn.execute(f"UPDATE attempts SET {name}_bytes = ?, {name}_end = ? WHERE id = ?",
                              (stored, offset + len(data), token))
        return None

    def output(self, token: int, after: dict[int, int] | None = None,
               max_bytes: int = 8 * 1024 * 1024) -> list[Chunk]:
        """Chunks of one attempt in arrival order, skipping bytes before ``after[stream]``."""
        after = after or {}
        chunks, total = [], 0
        for stream, offset, data in self.conn.execute(
                "SELECT stream, offset, data FROM output WHERE attempt_id = ?"
                " ORDER BY rowid", (token,)):
            start = after.get(stream, 0)
            end = offset + len(data)
            if end <= start:
                continue
            if offset < start:
                data, offset = data[start - offset:], start
            chunks.append(Chunk(stream, offset, bytes(data)))
            total += len(data)
            if total >= max_bytes:
                break
        return chunks
