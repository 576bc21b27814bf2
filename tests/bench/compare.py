"""Drain rate of this checkout against another one, alternating, in one run.

    python tests/bench/compare.py --base ../old-checkout [--pairs 10] [--jobs 2000]

The other checkout needs its own virtual environment (``BASE/.venv``, made with
the README's first command). Each round starts a fresh broker and one agent
of 2 slots from one checkout, drains ``--jobs`` ``true`` jobs, and records the
rate and the CPU milliseconds per job of the broker, the agent and the job
processes; rounds alternate between the two checkouts, so a noisy machine
weighs on both alike. Prints every round, then the medians and their ratio.
Speed is not asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]


def one(root: Path, jobs: int) -> dict:
    """One round on the checkout ``root`` (run by that checkout's own Python)."""
    sys.path[:0] = [str(root / "tests" / "bench"), str(root / "tests")]
    import throughput
    from harness import Processes

    with tempfile.TemporaryDirectory() as tmp:
        procs = Processes(Path(tmp))
        try:
            broker, agent = throughput.start_queue_with_agent(procs, tmp, slots=2)
            throughput.drain(broker, 200)  # warm up: imports, first claims
            assert broker.proc is not None  # started
            run = throughput.drain(broker, jobs, {"broker": broker.proc.pid, "agent": agent.pid})
        finally:
            procs.cleanup()
    return {"rate": round(run["per_sec"]), "busy": round(run["machine_busy"], 2),
            **{name: round(ms, 3) for name, ms in run["cpu_ms_per_job"].items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="the other checkout")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a round, for a checkout
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.jobs)))
        return 0
    if args.base is None:
        parser.error("--base is required")
    trees = {"base": args.base.resolve(), "this": HERE}
    rounds: dict[str, list[dict]] = {name: [] for name in trees}
    for pair in range(args.pairs):
        for name, root in trees.items():
            python = root / ".venv" / "bin" / "python"
            out = subprocess.run([str(python), str(Path(__file__).resolve()), "--one", str(root),
                                  "--jobs", str(args.jobs)], capture_output=True, text=True,
                                 check=True)
            rounds[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"pair {pair + 1} {name}: {rounds[name][-1]}", flush=True)
    medians = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
               for name, runs in rounds.items()}
    for name, figures in medians.items():
        print(f"median {name} ({trees[name]}): {figures}")
    print(f"drain rate, this / base: {medians['this']['rate'] / medians['base']['rate']:.3f}; "
          f"broker CPU per job, this / base: "
          f"{medians['this']['broker'] / medians['base']['broker']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
