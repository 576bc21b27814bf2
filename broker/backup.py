"""``queuectl-broker backup PATH``: an online copy of the store, safe while the broker runs.

SQLite's backup API (through APSW) copies every page inside one read
transaction, so the copy is the store as it was at one instant, and the
broker keeps writing meanwhile (WAL: readers never block the writer). The
copy is written beside PATH, checked (``quick_check``), synced, then renamed
into place, so PATH is never a half-written file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import apsw

from .store import copy_store


def backup(db_path: Path, target: Path) -> int:
    """Copy ``db_path`` to ``target``; returns how many jobs the copy holds."""
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    os.umask(0o077)  # the copy holds every job's command and environment, as the store does
    jobs = copy_store(str(db_path), str(partial))
    with open(partial, "rb") as written:
        os.fsync(written.fileno())
    os.replace(partial, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return jobs


def main(argv: list[str], default_db: str) -> int:
    parser = argparse.ArgumentParser(
        prog="queuectl-broker backup",
        description="Copy the store to PATH while the broker runs (SQLite online backup).")
    parser.add_argument("path", help="where to write the copy (replaced atomically)")
    parser.add_argument("--db", default=default_db, help=f"the store (default {default_db})")
    args = parser.parse_args(argv)
    db, target = Path(args.db), Path(args.path)
    if not db.is_file():
        print(f"queuectl-broker backup: no store at {db}", file=sys.stderr)
        return 2
    live = {db.resolve(), Path(f"{db}-wal").resolve(), Path(f"{db}-shm").resolve()}
    if target.resolve() in live:
        print(f"queuectl-broker backup: {target} is the store itself; choose another path",
              file=sys.stderr)
        return 2
    if not target.parent.is_dir():
        print(f"queuectl-broker backup: the directory {target.parent} does not exist",
              file=sys.stderr)
        return 2
    try:
        jobs = backup(db, target)
    except (apsw.Error, OSError, RuntimeError) as exc:
        print(f"queuectl-broker backup: could not copy {db} to {target}: {exc}", file=sys.stderr)
        return 1
    print(f"Backed up {db} to {target} ({jobs} jobs)")
    return 0
