"""The cost of CURVE: the same drain with the broker's keys on and off, in one run.

    python tests/bench/curve.py [--jobs 2000] [--rounds 2]

Two brokers on loopback, each with one agent of 2 slots: one plain, one with
CURVE (``queuectl keys init``, and the agent on a key of its own from
``queuectl keys add-agent``). Each round drains ``jobs`` ``true`` jobs on
both, alternating which goes first, and reports each side's best round.
Nothing here asserts a speed; it prints figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Processes, run_cli, start_agent
from throughput import drain, start_broker


def start(procs: Processes, home: Path, curve: bool):
    home.mkdir(parents=True)
    agent_env = {}
    if curve:
        for args in (("init",), ("add-agent", "bench")):
            result = run_cli(None, "keys", *args, env={**os.environ, "QUEUECTL_HOME": str(home)})
            if result.returncode != 0:
                raise RuntimeError(f"queuectl keys {' '.join(args)} failed: {result.stderr}")
        agent_env = {"QUEUECTL_KEY": str(home / "keys" / "issued" / "bench.key_secret")}
    broker = start_broker(procs, home)
    agent = start_agent(procs, broker, 2, name=f"agent-{home.name}", env=agent_env, timeout=30)
    return broker, agent


def measure(jobs: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="queuectl-bench-curve-") as tmp:
        procs = Processes(Path(tmp))
        try:
            sides = {name: start(procs, Path(tmp) / name, name == "curve")
                     for name in ("plain", "curve")}
            best = dict.fromkeys(sides, 0.0)
            for number in range(rounds):
                order = list(sides) if number % 2 == 0 else list(reversed(sides))
                for name in order:
                    broker, _agent = sides[name]
                    rate = drain(broker, jobs)["per_sec"]
                    best[name] = max(best[name], rate)
        finally:
            procs.cleanup()
    return {"jobs": jobs, "rounds": rounds, "plain_per_sec": best["plain"],
            "curve_per_sec": best["curve"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    r = measure(args.jobs, args.rounds)
    print(f"drain of {r['jobs']} true jobs, 1 agent x 2 slots, best of {r['rounds']}: "
          f"plain {r['plain_per_sec']:,.0f} jobs/s, CURVE {r['curve_per_sec']:,.0f} jobs/s "
          f"({r['curve_per_sec'] / r['plain_per_sec']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
