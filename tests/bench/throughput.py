"""Drain, latency and enqueue rates of one real broker, and the CPU they cost.

    python tests/bench/throughput.py [--jobs 2000] [--latency-samples 200]
                                     [--batch 100000] [--single 10000] [--cli-runs 20]

Two brokers, one after the other, each on its own fresh store:
* with one agent of 2 slots:
  - drain: N ``true`` jobs enqueued in one batch, from the enqueue call to the
    last completion (``status`` polled every 5 ms), and the CPU seconds per job
    of the broker and of the agent process (utime + stime from /proc/PID/stat,
    before and after; the agent's own time, not its ``sh`` children's; the
    broker's includes answering those ``status`` polls);
  - latency: enqueue-to-completion of one ``true`` job on an idle agent, through
    the Python client (``enqueue`` then ``wait``), p50 and p99;
* with NO agent, so nothing runs while enqueueing (and the drain above is over):
  - single: ``Client.enqueue({"command": "true"})`` calls over one open client;
  - batch: the real CLI ``queuectl enqueue --file PATH`` on a JSON Lines file of
    N ``{"command": "true"}`` jobs, wall time including the CLI's own start;
  - CLI: the wall time of one ``queuectl enqueue '{"command":"true"}'`` (median
    and max, after one warm-up run), next to ``python -c pass``.
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

from harness import Agent, Broker, Processes, run_cli, start_agent
from measure import cpu_seconds, percentiles_ms, wait_completed

TRUE_JOB = '{"command": "true"}'


def start_broker(procs: Processes, home: Path) -> Broker:
    home.mkdir(parents=True, exist_ok=True)
    return Broker(procs, home).start("--log-level", "WARNING")


def start_queue_with_agent(procs: Processes, tmp: str, slots: int = 2,
                           name: str = "home") -> tuple[Broker, Agent]:
    broker = start_broker(procs, Path(tmp) / name)
    return broker, start_agent(procs, broker, slots, name="agent", timeout=30)


def start_queue(procs: Processes, tmp: str) -> Broker:
    """A broker and one agent of 2 slots, ready for jobs."""
    return start_queue_with_agent(procs, tmp)[0]


def drain(broker: Broker, jobs: int, pids: dict[str, int] | None = None) -> dict:
    """Enqueue ``jobs`` ``true`` jobs in one batch and wait for all to complete.

    Returns ``per_sec`` and, for each named pid, its CPU milliseconds per job.
    """
    pids = pids or {}
    with broker.client(timeout=60) as qc:
        before = qc.status()["counts"]["completed"]
        cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        children = {name: cpu_seconds(pid, children=True) for name, pid in pids.items()}
        machine = machine_busy()
        start = time.perf_counter()
        qc.enqueue_many([{"command": "true"} for _ in range(jobs)])
        wait_completed(qc, before + jobs, 600)
        elapsed = time.perf_counter() - start
        used = {name: (cpu_seconds(pid) - cpu[name]) * 1000 / jobs for name, pid in pids.items()}
        if "agent" in pids:  # the job processes: the agent's waited-for children
            used["jobs"] = (cpu_seconds(pids["agent"], children=True)
                            - children["agent"]) * 1000 / jobs
        busy = machine_busy(machine)
    return {"jobs": jobs, "seconds": elapsed, "per_sec": jobs / elapsed, "cpu_ms_per_job": used,
            "machine_busy": busy}


def machine_busy(since: tuple[int, int] | None = None):
    """(total, idle) jiffies of all CPUs from /proc/stat; with ``since``, the busy
    fraction of the machine between the two readings."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    now = (sum(fields), fields[3] + fields[4])  # idle + iowait
    if since is None:
        return now
    total = now[0] - since[0]
    return 1 - (now[1] - since[1]) / total if total else float("nan")


def drain_rate(broker: Broker, jobs: int) -> float:
    return drain(broker, jobs)["per_sec"]


def latency_ms(broker: Broker, samples: int) -> tuple[float, float]:
    times = []
    with broker.client() as qc:
        for _ in range(samples):
            start = time.perf_counter()
            job = qc.enqueue({"command": "true"})
            done = qc.wait(job["id"], timeout=30)
            times.append(time.perf_counter() - start)
            if done["state"] != "completed":
                raise RuntimeError(f"a latency job did not complete: {done}")
    return percentiles_ms(times)


def single_enqueue_rate(broker: Broker, n: int) -> float:
    with broker.client() as qc:
        start = time.perf_counter()
        for _ in range(n):
            qc.enqueue({"command": "true"})
        return n / (time.perf_counter() - start)


def cli(broker: Broker, *args: str) -> float:
    """Wall seconds of one ``queuectl ARGS``; a failing command is an error."""
    start = time.perf_counter()
    result = run_cli(broker, *args, timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"queuectl {' '.join(args)[:80]} exited with {result.returncode}:"
                           f" {result.stderr.strip()[-2000:]}")
    return elapsed


def batch_enqueue_rate(broker: Broker, jobs: int) -> float:
    """``queuectl enqueue --file`` of ``jobs`` lines, CLI start included."""
    path = broker.home / f"batch-{jobs}.jsonl"
    path.write_text((TRUE_JOB + "\n") * jobs)
    try:
        return jobs / cli(broker, "enqueue", "--file", str(path))
    finally:
        path.unlink()


def cli_enqueue_ms(broker: Broker, runs: int) -> dict[str, float]:
    """Median and max wall ms of one CLI enqueue, and the median of ``python -c pass``."""
    cli(broker, "enqueue", TRUE_JOB)  # warm-up: the first run pays the cold page cache
    walls = [cli(broker, "enqueue", TRUE_JOB) * 1000 for _ in range(runs)]
    bare = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append((time.perf_counter() - start) * 1000)
    return {"median": statistics.median(walls), "max": max(walls),
            "python_pass_median": statistics.median(bare[1:])}


def measure(jobs: int, latency_samples: int, batch: int, single: int, cli_runs: int) -> dict:
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="queuectl-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            broker, agent = start_queue_with_agent(procs, tmp, name="drain")
            assert broker.proc is not None  # started
            result["drain"] = drain(broker, jobs, {"broker": broker.proc.pid,
                                                   "agent": agent.pid})
            p50, p99 = latency_ms(broker, latency_samples)
            result["latency_ms"] = {"samples": latency_samples, "p50": p50, "p99": p99}
        finally:
            procs.cleanup()
        procs = Processes(Path(tmp))
        try:
            broker = start_broker(procs, Path(tmp) / "enqueue")  # no agent: nothing runs
            result["single_enqueue"] = {"n": single,
                                        "per_sec": single_enqueue_rate(broker, single)}
            result["batch_enqueue"] = {"jobs": batch,
                                       "per_sec": batch_enqueue_rate(broker, batch)}
            result["cli_enqueue_ms"] = {"runs": cli_runs, **cli_enqueue_ms(broker, cli_runs)}
        finally:
            procs.cleanup()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--single", type=int, default=10_000)
    parser.add_argument("--cli-runs", type=int, default=20)
    args = parser.parse_args()
    r = measure(args.jobs, args.latency_samples, args.batch, args.single, args.cli_runs)
    cpu = r["drain"]["cpu_ms_per_job"]
    print(f"drain {args.jobs} jobs, 1 agent x 2 slots: {r['drain']['per_sec']:,.0f} jobs/s; "
          f"CPU per job: broker {cpu['broker']:.2f} ms, agent {cpu['agent']:.2f} ms")
    print(f"latency p50 / p99: {r['latency_ms']['p50']:.2f} / {r['latency_ms']['p99']:.2f} ms")
    print(f"single enqueue: {r['single_enqueue']['per_sec']:,.0f}/s; "
          f"batch (CLI --file, {args.batch}): {r['batch_enqueue']['per_sec']:,.0f}/s")
    c = r["cli_enqueue_ms"]
    print(f"CLI enqueue: median {c['median']:.0f} ms, max {c['max']:.0f} ms "
          f"(python -c pass: {c['python_pass_median']:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
