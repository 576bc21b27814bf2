"""Watches that the store's paths still name the files the broker has open.

SQLite keeps writing into the files it opened, whatever happens to their
names. If the store file is deleted, renamed or replaced while the broker
runs, every write it acknowledges from then on goes to a file that the next
start will not open: so writes are refused, with the reason, until the path
names the open file again (renamed back). If the WAL file (PATH-wal) is
deleted or replaced, the commits not yet copied into the store file live only
in a file no one else can find: a crash loses them, and a backup that opens
the store meanwhile resets SQLite's index over them. So the broker copies them
into the store file at once and starts a new WAL file.

A look is two ``stat`` calls; the loop takes one every ``CHECK_EVERY`` seconds.
"""

from __future__ import annotations

import logging
import os

import apsw

from .store import Store

log = logging.getLogger(__name__)

CHECK_EVERY = 0.25  # seconds between two looks: a change is noticed well within a second

Identity = tuple[int, int]  # (st_dev, st_ino): the same file, whatever its name


def identity(path: str) -> Identity | None:
    """The file ``path`` names now, or None if it names nothing the broker can reach
    (gone, or a directory on the way replaced, unreadable, a loop of links)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class StoreFiles:
    """The identities of the store file and its WAL, taken when the broker starts
    (the store is open and locked by then), and what to do when a path changes."""

    def __init__(self, store: Store):
        self.store = store
        self.wal_path = store.path + "-wal"
        self.db = identity(store.path)
        self.wal = identity(self.wal_path)

    def check(self) -> None:
        """Compare both paths with the open files; act on a change. Outside a transaction."""
        moved = identity(self.store.path) != self.db
        why: str | None
        if moved:
            why = (f"the store file {self.store.path} was deleted, renamed or replaced while the "
                   "broker ran; writes are refused; restart the broker")
        elif self.wal is not None and identity(self.wal_path) != self.wal:
            why = self._renew_wal()
        else:
            why = None
        if why != self.store.refused:
            self._refuse(why, moved)

    def _renew_wal(self) -> str | None:
        try:
            self.store.renew_wal()
            renewed = identity(self.wal_path)
        except apsw.Error as exc:  # another program has the store open
            renewed, error = None, str(exc)
        else:
            error = "SQLite started no new WAL file"
        if renewed is None:
            return (f"the store's WAL file {self.wal_path} was deleted or replaced while the "
                    f"broker ran and could not be renewed ({error}); writes are refused; stop "
                    "the broker with SIGTERM (it copies the WAL into the store file) and start it")
        self.wal = renewed
        log.warning("the store's WAL file %s was deleted or replaced while the broker ran; its "
                    "commits were copied into the store file and a new WAL file started",
                    self.wal_path)
        return None

    def _refuse(self, why: str | None, moved: bool) -> None:
        self.store.refuse_writes(why)
        if why is None:
            log.warning("the store %s accepts writes again: its paths name the files the broker "
                        "has open", self.store.path)
        elif moved:  # once per change, not at every look; restarting would lose the jobs
            log.error("%s. Until it stops, the file it has open still holds every job: if it "
                      "was renamed, rename it back to go on; to keep the jobs of a deleted file, "
                      "copy %s to NEW and %s to NEW-wal before stopping the broker, then start "
                      "it with --db NEW", why, self._open_file() or "that file", self.wal_path)
        else:
            log.error("%s", why)

    def _open_file(self) -> str | None:
        """Where the store file the broker has open can still be read (Linux)."""
        try:
            for fd in os.listdir("/proc/self/fd"):
                if identity(f"/proc/self/fd/{fd}") == self.db:
                    return f"/proc/{os.getpid()}/fd/{fd}"
        except OSError:
            pass
        return None
