"""What the ``attempts_finished`` index (schema version 4) costs the store.

    python tests/bench/attempts_index.py [--jobs 20000] [--rounds 3]

The index lets the broker seed the stats page's per-minute chart at start; it
is updated each time an attempt ends. This times the store's hot path (claim,
end the attempt, complete the job, 100 jobs per transaction) on a store with the
index and on one without it, alternating, and prints both rates and their
ratio. Nothing here asserts a speed; it prints figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from queuectl.broker.store import NewJob, Store
from queuectl.proto.states import JobState, Outcome


def rate(jobs: int, with_index: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="queuectl-bench-") as tmp:
        store = Store(str(Path(tmp) / "queue.db"))
        try:
            if not with_index:
                store.conn.execute("DROP INDEX attempts_finished")
            now = time.time()
            store.insert_jobs([NewJob(id=f"j{n}", command="true", queue="default", priority=100,
                                      run_at=now - 1, timeout_sec=60, max_retries=3, env=None,
                                      cwd=None, requires=None) for n in range(jobs)], now)
            start = time.perf_counter()
            for _ in range(0, jobs, 100):
                with store.transaction():
                    for _ in range(100):
                        claimed = store.claim(now, "agent", b"owner", None)
                        assert claimed is not None  # every job is due
                        job, token = claimed
                        store.end_attempt(token, outcome=Outcome.OK, started_at=now,
                                          finished_at=time.time(), exit_code=0, reason=None)
                        store.transition(job, JobState.COMPLETED, now, attempts=1, token=None,
                                         exit_code=0, started_at=now, finished_at=now + 0.01,
                                         last_error=None)
            return jobs / (time.perf_counter() - start)
        finally:
            store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'round':<8}{'with index':>14}{'without':>14}{'ratio':>8}")
    for number in range(1, args.rounds + 1):
        with_index, without = rate(args.jobs, True), rate(args.jobs, False)
        print(f"{number:<8}{with_index:>10.0f} j/s{without:>10.0f} j/s{with_index / without:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
