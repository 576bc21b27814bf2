"""Where a drain's time goes: py-spy on the broker and the agent while they drain jobs.

    pip install py-spy        # a profiler, not a dependency of QueueCTL
    python tests/bench/profile_drain.py [--jobs 6000] [--rate 500] [--top 15]

Starts a broker and one agent of 2 slots (as throughput.py does), attaches
``py-spy record`` to both, drains ``jobs`` ``true`` jobs, and prints the drain
rate, each process's CPU time per job (from /proc), and the functions where
each process spent most of its samples: by self time, and by cumulative time.
py-spy needs to be allowed to trace the processes (root, or ptrace_scope 0).
Sampling costs some CPU, so the drain rate here is lower than run.py's.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Processes
from measure import total_cpu
from throughput import drain_rate, start_queue_with_agent


def summary(path: Path, top: int) -> str:
    """The raw (collapsed-stack) output of py-spy as self and cumulative percentages."""
    own: collections.Counter = collections.Counter()
    anywhere: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            anywhere[frame] += int(count)
    lines = [f"{total} samples; self time:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    lines.append("cumulative:")
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in anywhere.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("profile_drain: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="queuectl-profile-") as tmp:
        procs = Processes(Path(tmp))
        spies: list[subprocess.Popen] = []
        try:
            broker, agent = start_queue_with_agent(procs, tmp)
            assert broker.proc is not None  # started
            pids = {"broker": broker.proc.pid, "agent": agent.pid}
            outputs = {name: Path(tmp) / f"{name}.txt" for name in pids}
            for name, pid in pids.items():
                spies.append(subprocess.Popen(
                    [spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(outputs[name]),
                     "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)  # py-spy attaches (pacing, not waiting for a condition)
            before = {name: total_cpu([pid]) for name, pid in pids.items()}
            rate = drain_rate(broker, args.jobs)
            used = {name: total_cpu([pid]) - before[name] for name, pid in pids.items()}
            for proc in spies:
                proc.send_signal(signal.SIGINT)
            for proc in spies:
                proc.wait(60)
            print(f"drain {rate:,.0f} jobs/s under py-spy at {args.rate} Hz; CPU per job: "
                  + ", ".join(f"{name} {used[name] / args.jobs * 1e3:.3f} ms" for name in pids))
            for name in pids:
                print(f"\n== {name}\n{summary(outputs[name], args.top)}")
        finally:
            for proc in spies:
                if proc.poll() is None:
                    proc.kill()
            procs.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
