"""The long run of the wire fuzzer (not collected by pytest): hostile frames for N minutes.

    python tests/fuzz_long.py --minutes 3

Starts a real broker and a real agent in a temporary directory, then drives the
generator of tests/integration/test_wire_fuzz_broker.py against the broker
until the time is up: after every batch the broker must have answered
everything in order, and after every round a normal client's ping must be
answered. At the end the fake agent leaves and the real agent must run a job
to completion. Prints frames sent, the broker's RSS at the start and the end,
and whether it survived; exits 1 if it did not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # harness, hostile, and integration.test_wire_fuzz_broker

from harness import Broker, Processes, start_agent  # noqa: E402
from integration import test_wire_fuzz_broker as fuzz  # noqa: E402

ROUND = 200  # hypothesis examples (batches of up to 40 frames) between two checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="queuectl-fuzz-"))
    (workdir / "home").mkdir()
    procs = Processes(workdir)
    survived, problem = False, ""
    try:
        broker = Broker(procs, workdir / "home").start()
        agent = start_agent(procs, broker, 1, name="agent")
        assert broker.proc is not None  # started
        pid = broker.proc.pid
        rss_start = fuzz.vm_kib(pid)
        attacker = fuzz.Attacker(broker.endpoint, broker)
        started = time.monotonic()
        deadline = started + args.minutes * 60
        rounds = 0
        try:
            while time.monotonic() < deadline:
                fuzz.attack(attacker, max_examples=ROUND)
                fuzz.assert_alive(broker)
                rounds += 1
                print(f"[{time.monotonic() - started:6.0f}s] round {rounds}: "
                      f"{attacker.frames_sent} frames, broker RSS {fuzz.vm_kib(pid)} KiB",
                      flush=True)
            attacker.leave()
            fuzz.assert_alive(broker)
            fuzz.real_agent_runs_a_job(broker, agent, workdir)
            survived = True
        except AssertionError as exc:
            problem = str(exc)
        except Exception:  # noqa: BLE001 - report any failure of the run itself
            problem = traceback.format_exc()
        alive = broker.proc.poll() is None
        rss_end = fuzz.vm_kib(pid) if alive else None
        peak = fuzz.vm_kib(pid, "VmHWM") if alive else None
        print(f"duration        {time.monotonic() - started:.0f} s ({rounds} rounds)")
        print(f"frames sent     {attacker.frames_sent}")
        print(f"replies by type {attacker.replies}")
        print(f"broker RSS      start {rss_start} KiB, end {rss_end} KiB, peak {peak} KiB")
        log = Path(broker.proc.log_path).read_text(errors="replace")
        print(f"broker log      {log.count('bug while handling')} 'bug while handling' entries, "
              f"{log.count('Traceback')} tracebacks")
        print(f"survived        {'yes' if survived else 'NO'}")
        if problem:
            print(f"problem         {problem[:3000]}")
            print(f"broker log tail {broker.log()[-2000:]}")
    finally:
        procs.cleanup()
    print(f"logs in {workdir}")
    return 0 if survived else 1


if __name__ == "__main__":
    sys.exit(main())
