"""The broker on a store of a million jobs, next to the same broker on an empty store.

    python tests/bench/scale.py [--rows 1000000] [--pending 100000]
                                [--drain 2000] [--single 10000] [--batch 100000] [--samples 200]

The big store is filled directly through ``queuectl.broker.store.Store`` (SQL)
before its broker starts: ``rows - pending`` completed jobs, each with one
attempt row as a real run leaves (finished over the last 30 days), then
``pending`` due ``true`` jobs. The counting triggers fire on the inserts; the
completed-duration totals (kept by an UPDATE trigger) are added up by hand, and
``queuectl status --json`` must show the expected counts. Then, for the empty
store and the big one in turn, a real broker (no agent at first):
* RSS (VmRSS) of the broker at start;
* ``status`` through the Python client, p50/p99 of ``samples`` calls;
* ``/api/stats`` through a real ``queuectl dashboard`` process, p50/p99;
* drain: one agent of 2 slots joins; ``drain`` completions are timed from the
  first completion seen (the empty store gets its pending jobs enqueued
  first); then the agent is stopped gracefully; RSS after the drain;
* single enqueue (``Client.enqueue`` calls) and batch enqueue (the CLI's
  ``enqueue --file``), with no agent; RSS after the enqueues.
Nothing here asserts a speed; it prints figures and the big/empty ratios.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Broker, Processes, cli_json, free_port, program, start_agent, wait_until
from measure import percentiles_ms, rss_mb, wait_completed
from queuectl.broker.store import Store
from throughput import (
    batch_enqueue_rate,
    single_enqueue_rate,
    start_broker,
)

HISTORY = 30 * 86400  # the completed jobs finished over this many seconds
RUN_SEC = 0.005  # how long each completed job ran


def fill(db: Path, completed: int, pending: int, now: float) -> None:
    """``completed`` finished jobs with their attempts, then ``pending`` due jobs, with
    time-ordered ids as the broker makes them (broker/jobs.py, IdMaker)."""
    store = Store(str(db))
    try:
        with store.transaction():
            step = (HISTORY - 60) / max(completed, 1)
            store.conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 0 WHERE ?1 > 0 UNION ALL SELECT i + 1 FROM n"
                " WHERE i + 1 < ?1)"
                " INSERT INTO jobs (id, command, state, queue, priority, run_at, due,"
                " timeout_sec, max_retries, attempts, created_at, updated_at, started_at,"
                " finished_at, exit_code, agent)"
                " SELECT printf('%016x', (CAST(t * 1000 AS INTEGER) << 20) + i % 1048576),"
                " 'true', 'completed', 'default', 100, t, 0,"
                " 60, 3, 1, t, t + ?2 + 0.001, t + 0.001, t + ?2 + 0.001, 0, 'bench-agent'"
                " FROM (SELECT ?3 + i * ?4 AS t, i FROM n)",
                (completed, RUN_SEC, now - HISTORY, step))
            store.conn.execute(
                "INSERT INTO attempts (job_seq, number, agent, dispatched_at, started_at,"
                " finished_at, pid, exit_code)"
                " SELECT seq, 1, agent, created_at, started_at, finished_at, 1000 + seq % 30000, 0"
                " FROM jobs WHERE state = 'completed'")
            # jobs_completed fires on UPDATE only, and new jobs are counted by
            # Store.insert_jobs: add what these jobs would have added.
            store.conn.execute("UPDATE counts SET n = n + ? WHERE state = 'completed'",
                               (completed,))
            store.conn.execute("UPDATE totals SET value = value + ? WHERE name = 'completed_n'",
                               (completed,))
            store.conn.execute("UPDATE totals SET value = value + ?"
                               " WHERE name = 'completed_seconds'", (completed * RUN_SEC,))
            store.conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 0 WHERE ?1 > 0 UNION ALL SELECT i + 1 FROM n"
                " WHERE i + 1 < ?1)"
                " INSERT INTO jobs (id, command, state, queue, priority, run_at, due,"
                " timeout_sec, max_retries, created_at, updated_at)"
                " SELECT printf('%016x', (CAST(t * 1000 AS INTEGER) << 20) + i % 1048576),"
                " 'true', 'pending', 'default', 100, t, 1,"
                " 60, 3, t, t FROM (SELECT ?2 - 60 + i * (30.0 / ?1) AS t, i FROM n)",
                (pending, now))
            store.conn.execute("UPDATE counts SET n = n + ? WHERE state = 'pending'", (pending,))
    finally:
        store.close()


def check_counts(broker: Broker, completed: int, pending: int) -> None:
    status = cli_json(broker, "status")
    counts = status["counts"]
    expected = {**dict.fromkeys(counts, 0), "completed": completed, "pending": pending}
    if counts != expected:
        raise RuntimeError(f"the filled store's counts are {counts}, expected {expected}")
    if completed and abs(status["avg_duration_sec"] - RUN_SEC) > 1e-3:
        raise RuntimeError(f"avg_duration_sec is {status['avg_duration_sec']}, expected {RUN_SEC}")


def status_latency(broker: Broker, samples: int) -> tuple[float, float]:
    times = []
    with broker.client() as qc:
        for _ in range(samples):
            start = time.perf_counter()
            qc.status()
            times.append(time.perf_counter() - start)
    return percentiles_ms(times)


def api_stats_latency(procs: Processes, broker: Broker, samples: int) -> tuple[float, float]:
    port = free_port()
    page = procs.start(program("queuectl") + ["dashboard", "--port", str(port), "--broker",
                                              broker.endpoint], "dashboard.log", env=broker.env())
    url = f"http://127.0.0.1:{port}/api/stats"

    def fetch() -> bool:
        if page.poll() is not None:
            raise RuntimeError(f"queuectl dashboard exited with {page.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                reply.read()
            return reply.status == 200
        except OSError:
            return False

    try:
        wait_until(fetch, 30, message="the stats page")
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            if not fetch():
                raise RuntimeError(f"GET {url} failed")
            times.append(time.perf_counter() - start)
        return percentiles_ms(times)
    finally:
        os.killpg(page.pid, signal.SIGKILL)  # started in its own session: only its group
        page.wait(10)


def measure_store(home: Path, completed: int, pending: int, drain: int, single: int,
                  batch: int, samples: int) -> dict:
    """The measurements on one store; the empty store gets its drain jobs enqueued."""
    procs = Processes(home)
    try:
        broker = start_broker(procs, home)
        assert broker.proc is not None  # started
        pid = broker.proc.pid
        result: dict = {"rss_mb": {"start": rss_mb(pid)}}
        check_counts(broker, completed, pending)
        p50, p99 = status_latency(broker, samples)
        result["status_ms"] = {"p50": p50, "p99": p99}
        p50, p99 = api_stats_latency(procs, broker, samples)
        result["api_stats_ms"] = {"p50": p50, "p99": p99}
        with broker.client(timeout=60) as qc:
            if pending < drain * 1.2 + 50:  # enough that the agent never runs dry
                qc.enqueue_many([{"command": "true"}] * int(drain * 1.2 + 50 - pending))
            start_agent(procs, broker, 2, name="agent", timeout=30)
            seen = wait_completed(qc, completed + 1, 60)
            start = time.perf_counter()
            wait_completed(qc, seen + drain, 600)
            result["drain_per_sec"] = drain / (time.perf_counter() - start)
            qc.stop_agents(wait=True)
        result["rss_mb"]["after_drain"] = rss_mb(pid)
        result["single_enqueue_per_sec"] = single_enqueue_rate(broker, single)
        result["batch_enqueue_per_sec"] = batch_enqueue_rate(broker, batch)
        result["rss_mb"]["after_enqueues"] = rss_mb(pid)
        return result
    finally:
        procs.cleanup()


def measure(rows: int, pending: int, drain: int, single: int, batch: int, samples: int) -> dict:
    result: dict = {"rows": rows, "pending": pending, "drain": drain, "single": single,
                    "batch": batch, "samples": samples}
    with tempfile.TemporaryDirectory(prefix="queuectl-bench-") as tmp:
        empty = Path(tmp) / "empty"
        empty.mkdir()
        result["empty"] = measure_store(empty, 0, 0, drain, single, batch, samples)
        full = Path(tmp) / "full"
        full.mkdir()
        start = time.perf_counter()
        fill(full / "queue.db", rows - pending, pending, time.time())
        result["fill_sec"] = time.perf_counter() - start
        result["full"] = measure_store(full, rows - pending, pending, drain, single, batch,
                                       samples)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--drain", type=int, default=2000)
    parser.add_argument("--single", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    r = measure(args.rows, args.pending, args.drain, args.single, args.batch, args.samples)
    print(f"filled {args.rows:,} rows in {r['fill_sec']:.1f} s")
    print(f"{'':<28}{'empty':>12}{f'{args.rows:,} rows':>16}{'ratio':>8}")
    for label, get in (("drain (jobs/s)", lambda s: s["drain_per_sec"]),
                       ("single enqueue (/s)", lambda s: s["single_enqueue_per_sec"]),
                       ("batch enqueue (/s)", lambda s: s["batch_enqueue_per_sec"]),
                       ("status p50 (ms)", lambda s: s["status_ms"]["p50"]),
                       ("status p99 (ms)", lambda s: s["status_ms"]["p99"]),
                       ("/api/stats p50 (ms)", lambda s: s["api_stats_ms"]["p50"]),
                       ("/api/stats p99 (ms)", lambda s: s["api_stats_ms"]["p99"]),
                       ("RSS at start (MB)", lambda s: s["rss_mb"]["start"]),
                       ("RSS after drain (MB)", lambda s: s["rss_mb"]["after_drain"]),
                       ("RSS after enqueues (MB)", lambda s: s["rss_mb"]["after_enqueues"])):
        empty, full = get(r["empty"]), get(r["full"])
        print(f"{label:<28}{empty:>12,.1f}{full:>16,.1f}{full / empty:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
