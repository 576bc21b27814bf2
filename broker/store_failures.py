"""When the store itself fails: a part of ``Store`` (broker/store.py), and the copy
that backs it up.

A loop iteration is one transaction; a failure of the store anywhere in it
(disk full, read-only, locked, an I/O error) comes out as one StoreUnavailable,
with nothing of the iteration stored (docs/DECISIONS.md, "Other choices").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import cast

import apsw

# Errors that mean the store cannot write right now (disk full, read-only,
# locked by another process, I/O failure), as opposed to bugs in our SQL.
UNAVAILABLE_ERRORS = (apsw.FullError, apsw.IOError, apsw.ReadOnlyError, apsw.BusyError,
                      apsw.LockedError, apsw.CantOpenError, apsw.CorruptError, apsw.NotADBError)


class StoreFailures:
    """The loop's transaction and what a store failure means; Store provides ``conn``."""

    conn: apsw.Connection

    refused: str | None = None  # why writes are refused (refuse_writes), else None

    @contextlib.contextmanager
    def iteration(self) -> Iterator[None]:
        """The transaction of one loop iteration (``store.transaction()`` nests in it).
        A failure of the store anywhere in it comes out as StoreUnavailable (see
        ``failure``), with nothing of it stored and no transaction left open; any
        other exception (a bug) rolls it back and propagates."""
        self.conn.execute("BEGIN")
        try:
            yield
            self.conn.execute("COMMIT")
        except Exception as exc:
            failed = self.failure(exc)
            if self.conn.in_transaction:  # SQLite may have rolled it back already
                with contextlib.suppress(apsw.Error):
                    self.conn.execute("ROLLBACK")
            if failed is None or failed is exc:
                raise
            raise failed from exc

    def failure(self, exc: BaseException) -> StoreUnavailable | None:
        """The store failure behind ``exc``, raised inside a transaction; None for a bug.
        On SQLITE_FULL or an I/O error in a large statement SQLite rolls the whole
        transaction back itself: APSW then reports "no such savepoint" (or "cannot
        commit - no transaction is active") over the error that caused it, so the
        cause is looked for in the chain, and any error once the transaction is
        gone is a store failure too."""
        for err in _chain(exc):
            if isinstance(err, StoreUnavailable):
                return err
            if isinstance(err, UNAVAILABLE_ERRORS):
                return StoreUnavailable(self.refused or str(err), err)
        if not self.conn.in_transaction:
            return StoreUnavailable(f"SQLite rolled the transaction back ({exc})")
        return None

    def reclaim_space(self, failed: StoreUnavailable) -> None:
        """After a batch failed on a full disk: its pages stay in the WAL file, which
        SQLite reuses but never shrinks while the store is open, so the disk would
        stay full. Copy the committed pages into the store file and truncate the
        WAL. Best effort: the store file may need room to grow first."""
        if isinstance(failed.cause, apsw.FullError):
            with contextlib.suppress(apsw.Error):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def refuse_writes(self, why: str | None) -> None:
        """While ``why`` is set, every write fails (SQLite's query_only: reads still
        work) and the failure reports ``why``; None accepts writes again."""
        self.refused = why
        self.conn.pragma("query_only", why is not None)

    def renew_wal(self) -> None:
        """Copy every commit into the store file and start a new WAL file (leaving WAL
        mode checkpoints and closes the old one). Outside a transaction; raises
        apsw.BusyError while another connection has the store open."""
        self.conn.pragma("journal_mode", "delete")
        self.conn.pragma("journal_mode", "wal")
        self.conn.pragma("user_version")  # the first read creates the new WAL file


def copy_store(source_path: str, target_path: str) -> int:
    """Copy the store at ``source_path`` to a new file, with SQLite's online backup,
    while its broker may keep writing; returns how many jobs the copy holds.
    Raises RuntimeError if the copy fails its check."""
    source = apsw.Connection(source_path, flags=apsw.SQLITE_OPEN_READWRITE)  # reads only
    try:
        source.set_busy_timeout(5000)
        copy = apsw.Connection(target_path)
        try:
            with copy.backup("main", source, "main") as step:
                step.step(-1)  # every page, in one read transaction: one consistent instant
            problems = [row[0] for row in copy.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise RuntimeError(f"the copy failed its check: {problems[:3]}")
            return cast(int, copy.execute("SELECT count(*) FROM jobs").fetchall()[0][0])
        finally:
            copy.close()
    finally:
        source.close()


class StoreUnavailable(Exception):
    """The store could not write: the batch it happened in is rolled back whole.
    ``cause`` is the SQLite error behind it (None: SQLite had rolled back on its own)."""

    def __init__(self, why: str, cause: BaseException | None = None):
        super().__init__(why)
        self.cause = cause


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, newest first."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain
