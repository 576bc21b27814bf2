"""``queuectl enqueue --file`` of a small and a huge file: rate, stall and memory.

    python tests/bench/big_batch.py [--small 100000] [--big 1000000]

For each size in turn, a fresh broker (no agent, so nothing runs) and a JSON
Lines file of ``{"command": "true"}`` lines, enqueued by the real CLI:
* the rate: lines / wall seconds of the CLI process, its start included;
* while it runs, another client calls ``status`` back to back (20 ms apart)
  and keeps the worst latency it saw (its timeout is 10 minutes, so a stalled
  broker shows as a long wait rather than an error);
* the peak RSS (VmHWM from /proc/PID/status) of the broker, after the enqueue,
  and of the CLI, read every 10 ms while it runs (the high-water mark only
  grows; wait4's ru_maxrss would not do: it keeps the RSS the benchmark had
  when it forked the CLI).
Then the ratio of the two rates. Nothing here asserts a speed; it prints figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Processes, StatusProbe, program
from throughput import TRUE_JOB, start_broker

HWM_EVERY = 0.01  # seconds between two readings of the CLI's VmHWM


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process; 0 once it has exited (or is a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def enqueue_file(broker, path: Path) -> tuple[float, float]:
    """Run ``queuectl enqueue --file PATH``; returns (wall seconds, peak RSS MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(program("queuectl") + ["enqueue", "--file", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=broker.env())
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid))
        time.sleep(HWM_EVERY)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        assert proc.stderr is not None  # stderr=PIPE
        raise RuntimeError(f"enqueue --file exited with {proc.returncode}: "
                           f"{proc.stderr.read().decode(errors='replace').strip()[-2000:]}")
    return elapsed, peak


def one_size(tmp: Path, lines: int) -> dict:
    procs = Processes(tmp)
    try:
        broker = start_broker(procs, tmp / f"home-{lines}")
        path = tmp / f"jobs-{lines}.jsonl"
        path.write_text((TRUE_JOB + "\n") * lines)
        with StatusProbe(broker, gap=0.02, timeout=600) as probe:
            seconds, client_mb = enqueue_file(broker, path)
        if probe.error is not None:
            raise RuntimeError(f"status failed during the batch: {probe.error}")
        with broker.client() as qc:
            pending = qc.status()["counts"]["pending"]
        if pending != lines:
            raise RuntimeError(f"{pending} jobs pending after enqueueing {lines}")
        path.unlink()
        assert broker.proc is not None  # started
        return {"lines": lines, "seconds": seconds, "per_sec": lines / seconds,
                "status_worst_ms": probe.worst * 1000, "status_calls": probe.calls,
                "broker_peak_mb": peak_rss_mb(broker.proc.pid), "client_peak_mb": client_mb}
    finally:
        procs.cleanup()


def measure(small: int, big: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="queuectl-bigbatch-") as tmp:
        result = {"small": one_size(Path(tmp), small), "big": one_size(Path(tmp), big)}
    result["ratio"] = result["big"]["per_sec"] / result["small"]["per_sec"]
    return result


def describe(r: dict) -> list[str]:
    return [f"{s['lines']:,} lines: {s['per_sec']:,.0f} jobs/s ({s['seconds']:.2f} s); "
            f"other client's status worst {s['status_worst_ms']:,.0f} ms "
            f"({s['status_calls']} calls); peak RSS broker {s['broker_peak_mb']:.0f} MB, "
            f"client {s['client_peak_mb']:.0f} MB" for s in (r["small"], r["big"])] + [
        f"rate ratio {r['big']['lines']:,} / {r['small']['lines']:,}: {r['ratio']:.2f}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    args = parser.parse_args()
    for line in describe(measure(args.small, args.big)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
