"""A fleet: many agents with many slots against one broker, kept busy with short sleeps.

    python tests/bench/fleet.py [--agents 20] [--slots 10] [--jobs 5000] [--duration 0.2]

Starts ``agents`` agent processes of ``slots`` slots each and waits until
``status`` counts every slot. Then enqueues ``jobs`` jobs of ``sleep DURATION``
in one batch and measures the wall time from the enqueue call to the last
completion (the latest ``finished_at`` the broker recorded). Prints:
* utilisation = (jobs x duration) / (slots in all x wall): 100% means every
  slot was sleeping all the time;
* the same for ``seq JOBS | xargs -P SLOTS sh -c 'sleep DURATION'`` in this run:
  what this machine allows at all (each job is two execs: the shell and sleep);
* slot occupancy: the mean of busy / total slots in ``status``, sampled every
  20 ms while jobs were still pending: how well dispatch keeps slots leased;
* the broker's CPU seconds / wall (the fraction of one core it used) and the
  agents' total, from /proc/PID/stat (their own time), and the CPU of the job
  processes the agents ran (the agents' waited-for children).
Nothing here asserts a speed; it prints figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Agent, Processes, wait_until
from measure import total_cpu, wait_completed
from queuectl.proto.timefmt import parse_iso
from throughput import start_broker


def xargs_utilisation(slots: int, jobs: int, duration: float) -> float:
    start = time.perf_counter()
    subprocess.run(f"seq {jobs} | xargs -P{slots} -I{{}} sh -c 'sleep {duration}'", shell=True,
                   check=True)
    return jobs * duration / (slots * (time.perf_counter() - start))


class Occupancy:
    """Samples busy / total slots from ``status`` while jobs are pending."""

    def __init__(self, broker) -> None:
        self.broker, self.stop = broker, threading.Event()
        self.samples: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.broker.client(timeout=30) as qc:
            while not self.stop.wait(0.02):
                status = qc.status()
                if status["counts"]["pending"] > 0:
                    self.samples.append(status["slots"]["busy"] / status["slots"]["total"])

    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")


def measure(agents: int = 20, slots: int = 10, jobs: int = 5000, duration: float = 0.2) -> dict:
    total_slots = agents * slots
    with tempfile.TemporaryDirectory(prefix="queuectl-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            broker = start_broker(procs, Path(tmp) / "home")
            fleet = [Agent(procs, broker, slots, {}, None, f"agent-{n}") for n in range(agents)]
            with broker.client(timeout=60) as qc:
                wait_until(lambda: qc.status()["slots"]["total"] == total_slots, 120,
                           interval=0.1, message=f"{agents} agents to connect")
                pids = [agent.pid for agent in fleet]
                assert broker.proc is not None  # started
                broker_cpu, agents_cpu = total_cpu([broker.proc.pid]), total_cpu(pids)
                jobs_cpu = total_cpu(pids, children=True)
                occupancy = Occupancy(broker)
                enqueued_at = time.time()
                start = time.perf_counter()
                ids = qc.enqueue_many([{"command": f"sleep {duration}"}] * jobs)["ids"]
                occupancy.thread.start()
                ideal = jobs * duration / total_slots
                try:
                    wait_completed(qc, jobs, ideal * 20 + 120, interval=0.02)
                finally:
                    occupancy.stop.set()
                    occupancy.thread.join(30)
                polled = time.perf_counter() - start
                broker_cpu = total_cpu([broker.proc.pid]) - broker_cpu
                agents_cpu = total_cpu(pids) - agents_cpu
                jobs_cpu = total_cpu(pids, children=True) - jobs_cpu
                done = qc.list(state="completed", limit=jobs)
                if {job["id"] for job in done} != set(ids):
                    raise RuntimeError("the completed jobs are not the ones enqueued")
                last = max(parse_iso(job["finished_at"]) for job in done)
        finally:
            procs.cleanup()
    wall = last - enqueued_at
    return {"agents": agents, "slots": slots, "jobs": jobs, "duration": duration,
            "wall_sec": wall, "ideal_sec": ideal,
            "utilisation": jobs * duration / (total_slots * wall),
            "xargs_utilisation": xargs_utilisation(total_slots, jobs, duration),
            "occupancy": occupancy.mean(),
            "broker_cores": broker_cpu / polled, "agents_cores": agents_cpu / polled,
            "job_processes_cores": jobs_cpu / polled}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=0.2)
    args = parser.parse_args()
    r = measure(args.agents, args.slots, args.jobs, args.duration)
    print(f"{args.agents} agents x {args.slots} slots, {args.jobs} x sleep {args.duration:g}: "
          f"wall {r['wall_sec']:.2f} s (ideal {r['ideal_sec']:.2f} s), "
          f"utilisation {r['utilisation']:.1%} (xargs -P{args.agents * args.slots}: "
          f"{r['xargs_utilisation']:.1%}), slot occupancy {r['occupancy']:.1%}")
    print(f"CPU: broker {r['broker_cores']:.2f} core, agents {r['agents_cores']:.2f} core in all,"
          f" their job processes {r['job_processes_cores']:.2f} core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
