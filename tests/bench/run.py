"""QueueCTL benchmarks, printed side by side with the process-spawn ceilings.

    python tests/bench/run.py              # the full run (2,000 jobs)
    python tests/bench/run.py --jobs 200   # a smoke run (CI uses this)

Measured in one run, so the figures compare as ratios on a noisy machine:
* xargs: ``seq N | xargs -P2 -I{} sh -c true`` (the spawn ceiling with 2 workers);
* drain: N ``true`` jobs enqueued in one batch, drained by one agent of 2 slots,
  from the enqueue call to the last completion;
* latency: enqueue-to-completion of one ``true`` job on an idle agent, through
  the Python client (``enqueue`` then ``wait``).
Nothing here asserts a speed; it prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Agent, Broker, Processes, wait_until  # noqa: E402


def xargs_rate(jobs: int) -> float:
    start = time.perf_counter()
    subprocess.run(f"seq {jobs} | xargs -P2 -I{{}} sh -c true", shell=True, check=True)
    return jobs / (time.perf_counter() - start)


def drain_rate(broker: Broker, jobs: int) -> float:
    with broker.client(timeout=60) as qc:
        before = qc.status()["counts"]["completed"]
        start = time.perf_counter()
        qc.enqueue_many([{"command": "true"} for _ in range(jobs)])
        wait_until(lambda: qc.status()["counts"]["completed"] - before >= jobs, 600,
                   interval=0.005, message=f"{jobs} jobs to complete")
        return jobs / (time.perf_counter() - start)


def latency_ms(broker: Broker, samples: int) -> tuple[float, float]:
    times = []
    with broker.client() as qc:
        for _ in range(samples):
            start = time.perf_counter()
            job = qc.enqueue({"command": "true"})
            done = qc.wait(job["id"], timeout=30)
            times.append((time.perf_counter() - start) * 1000)
            assert done["state"] == "completed", done
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def start_queue(procs: Processes, tmp: str) -> Broker:
    """A broker and one agent of 2 slots, ready for jobs."""
    home = Path(tmp) / "home"
    home.mkdir()
    broker = Broker(procs, home).start("--log-level", "WARNING")
    Agent(procs, broker, 2, {}, None, "agent")
    with broker.client() as qc:
        wait_until(lambda: qc.status()["slots"]["total"] == 2, 15, message="agent")
    return broker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="queuectl-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            broker = start_queue(procs, tmp)
            ceiling = xargs_rate(args.jobs)
            drained = drain_rate(broker, args.jobs)
            p50, p99 = latency_ms(broker, args.latency_samples)
        finally:
            procs.cleanup()
    print(f"{'benchmark':<44}{'result':>14}{'vs xargs':>10}")
    print(f"{f'xargs -P2 sh -c true ({args.jobs} jobs)':<44}{ceiling:>10.0f} j/s{1:>10.2f}")
    print(f"{f'queuectl drain, 1 agent x 2 slots ({args.jobs})':<44}{drained:>10.0f} j/s"
          f"{drained / ceiling:>10.2f}")
    print(f"{f'latency enqueue->completed, p50 ({args.latency_samples})':<44}{p50:>11.2f} ms")
    print(f"{f'latency enqueue->completed, p99 ({args.latency_samples})':<44}{p99:>11.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
