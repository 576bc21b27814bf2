"""The store's per-job hot path, without sockets: enqueue, then claim and finish.

    python tests/bench/store_hotpath.py --jobs 20000 --rounds 3

Per round, on a fresh temporary store: ``JobService.enqueue`` of ``jobs`` specs
in one batch, then for each job ``Store.claim``,
``start_attempt`` and ``JobService.finish`` (``end_attempt`` and
``transition``) in a savepoint, BATCH of them to a transaction, as the broker's
loop handles messages. Commits are cheap here, so the figure is mostly the
Python and SQL work per job. Prints the best round's
microseconds per job for each part; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from queuectl.broker.jobs import JobService
from queuectl.broker.store import Store
from queuectl.proto.states import Outcome

BATCH = 256  # jobs per loop iteration (one transaction; a savepoint each)
CONFIG = {"timeout_sec": 60.0, "max_retries": 3, "base_backoff": 2.0, "max_backoff": 3600.0}


def one_round(jobs: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "queue.db"))
        try:
            service = JobService(store, dict(CONFIG), lambda job: None)
            now = time.time()
            specs = [{"command": f"echo {n}", "env": {"N": str(n)}} for n in range(jobs)]
            start = time.perf_counter()
            with store.transaction():
                service.enqueue(specs, now, batch=True)
            enqueue = time.perf_counter() - start
            start = time.perf_counter()
            for first in range(0, jobs, BATCH):
                with store.iteration():
                    for _ in range(first, min(jobs, first + BATCH)):
                        with store.transaction():
                            claimed = store.claim(now, "bench", b"owner", None)
                            assert claimed is not None  # every job is due
                            _job, token = claimed
                            store.start_attempt(token, 4242, now)
                            service.finish(token, Outcome.OK, exit_code=0, detail="",
                                           started_at=now, finished_at=now, now=now)
            finish = time.perf_counter() - start
            return enqueue, finish
        finally:
            store.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = [one_round(args.jobs) for _ in range(args.rounds)]
    enqueue = min(r[0] for r in rounds) / args.jobs * 1e6
    finish = min(r[1] for r in rounds) / args.jobs * 1e6
    print(f"enqueue (JobService.enqueue, one batch): {enqueue:6.2f} us/job")
    print(f"claim + start + finish (a savepoint each):  {finish:6.2f} us/job")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
