"""Store-level scale check: claim-next and status with many rows.

    python tests/bench/store_scale.py --rows 1000000 --pending 100000

Fills a fresh store with ``rows`` jobs, of which ``pending`` are due and the
rest completed (plus 10% scheduled in the future with a *better* priority,
the case a plain (state, priority, run_at) index handles badly), then times
claiming due jobs and reading the counts. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from queuectl.broker.store import NewJob, Store
from queuectl.proto.states import JobState


def fill(store: Store, rows: int, pending: int, now: float) -> None:
    batch, made = 50_000, 0
    while made < rows:
        jobs = []
        for n in range(made, min(rows, made + batch)):
            future = n % 10 == 0 and n >= pending
            jobs.append(NewJob(id=f"j{n}", command="true", queue="default",
                               priority=1 if future else 100,
                               run_at=now + 86400 if future else now - rows + n,
                               timeout_sec=60, max_retries=3, env=None, cwd=None, requires=None))
        store.insert_jobs(jobs, now)
        made += len(jobs)
    # Everything beyond the first `pending` due jobs becomes completed.
    with store.transaction():
        store.conn.execute(
            "UPDATE jobs SET state = 'completed', due = 0, started_at = ?, finished_at = ?"
            " WHERE seq > ? AND run_at <= ?", (now - 1, now, pending, now))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "queue.db"))
        now = time.time()
        start = time.perf_counter()
        fill(store, args.rows, args.pending, now)
        fill_sec = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.claims):
            with store.transaction():
                claimed = store.claim(now, "bench", b"owner", None)
                assert claimed is not None  # every job is due
                job, _token = claimed
                store.transition(job, JobState.COMPLETED, now, token=None, attempts=1,
                                 started_at=now, finished_at=now)
        claim_rate = args.claims / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(1000):
            store.counts()
            store.completed_duration()
        status_ms = (time.perf_counter() - start)
        store.close()
    print(f"rows {args.rows}, due {args.pending}, filled in {fill_sec:.1f}s "
          f"({args.rows / fill_sec:,.0f} rows/s)")
    print(f"claim+complete, one transaction each: {claim_rate:,.0f}/s")
    print(f"counts + duration totals: {status_ms:.3f} ms per status")
    return 0


if __name__ == "__main__":
    sys.exit(main())
