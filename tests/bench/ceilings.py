"""The process-spawn ceilings that QueueCTL's drain rate is compared with.

    python tests/bench/ceilings.py [--jobs 2000]

* xargs: ``seq N | xargs -P2 -I{} sh -c true``, two ``sh -c true`` at a time
  (what a shell can do with 2 workers and no queue at all);
* Python spawn: 2 Python processes, each running ``subprocess.run("true",
  shell=True)`` N/2 times, timed from their start until both are done
  (interpreter start included), which is how an agent slot starts a job.
Both are jobs per second. Nothing here asserts a speed; it prints figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

SPAWN_LOOP = ("import subprocess, sys\n"
              "for _ in range(int(sys.argv[1])):\n"
              "    subprocess.run('true', shell=True, check=True)\n")


def xargs_rate(jobs: int) -> float:
    start = time.perf_counter()
    subprocess.run(f"seq {jobs} | xargs -P2 -I{{}} sh -c true", shell=True, check=True)
    return jobs / (time.perf_counter() - start)


def python_spawn_rate(jobs: int) -> float:
    halves = (jobs // 2, jobs - jobs // 2)
    start = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-c", SPAWN_LOOP, str(n)]) for n in halves]
    try:
        codes = [worker.wait(600) for worker in workers]
        elapsed = time.perf_counter() - start
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    if any(codes):
        raise RuntimeError(f"python spawn loop exited with {codes}")
    return jobs / elapsed


def measure(jobs: int) -> dict[str, float]:
    return {"jobs": jobs, "xargs_per_sec": xargs_rate(jobs),
            "python_spawn_per_sec": python_spawn_rate(jobs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    result = measure(args.jobs)
    print(f"xargs -P2 sh -c true ({args.jobs} jobs): {result['xargs_per_sec']:,.0f} jobs/s")
    print(f"2 x python subprocess.run('true', shell=True): "
          f"{result['python_spawn_per_sec']:,.0f} jobs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
