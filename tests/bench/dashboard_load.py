"""What an open stats page costs the queue, and how fast the page answers.

    python tests/bench/dashboard_load.py                 # 2,000 jobs per round
    python tests/bench/dashboard_load.py --jobs 200      # a smoke run

A real broker, one agent of 2 slots and a real ``queuectl dashboard``. Rounds
alternate, so the figures compare as ratios on a noisy machine:
* none: N ``true`` jobs drained with no page open;
* pages: the same while P browsers poll ``/partials/overview`` every 2 s, as
  the page's script does;
* flood: the same while P clients fetch it back to back (a worst case).
It also prints the latency of ``/partials/overview``, ``/api/stats`` and
``/metrics`` seen by the pollers. Nothing here asserts a speed; it prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Processes, free_port, program, wait_until
from throughput import drain_rate, start_queue

PAGE_EVERY = 2.0  # seconds between two polls of one open page (static/app.js)


class Pollers:
    """``count`` threads fetching ``path``; ``every`` seconds apart, or back to back."""

    def __init__(self, base: str, path: str, count: int, every: float):
        self.base, self.path, self.every = base, path, every
        self.stop = threading.Event()
        self.times: list[float] = []
        self.errors = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _run(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(self.base + self.path, timeout=30) as reply:
                    reply.read()
                self.times.append(time.perf_counter() - start)
            except OSError:
                self.errors += 1
            if self.every:
                self.stop.wait(self.every)

    def __enter__(self) -> Pollers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(35)


def percentiles_ms(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times) or [float("nan")]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--pages", type=int, default=5, help="open pages (pollers)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"none": [], "pages": [], "flood": []}
    latency: dict[str, list[float]] = {}
    errors = 0
    with tempfile.TemporaryDirectory(prefix="queuectl-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            broker = start_queue(procs, tmp)
            port = free_port()
            procs.start(program("queuectl") + ["dashboard", "--port", str(port), "--broker",
                                               broker.endpoint], "dashboard.log",
                        env=broker.env())
            base = f"http://127.0.0.1:{port}"

            def page_up() -> bool:
                try:
                    with urllib.request.urlopen(base + "/healthz", timeout=2):
                        return True
                except OSError:
                    return False

            wait_until(page_up, 30, message="the stats page")
            for _ in range(args.rounds):
                rates["none"].append(drain_rate(broker, args.jobs))
                for mode, every in (("pages", PAGE_EVERY), ("flood", 0.0)):
                    with Pollers(base, "/partials/overview", args.pages, every) as pollers:
                        rates[mode].append(drain_rate(broker, args.jobs))
                    latency.setdefault(f"/partials/overview ({mode})", []).extend(pollers.times)
                    errors += pollers.errors
            for path in ("/api/stats", "/metrics"):
                with Pollers(base, path, 1, 0.0) as pollers:
                    time.sleep(2.0)  # the pollers measure; this only sets the duration
                latency[path] = pollers.times
                errors += pollers.errors
        finally:
            procs.cleanup()
    none = statistics.median(rates["none"])
    print(f"{'benchmark':<52}{'result':>14}{'vs none':>10}")
    for mode, label in (("none", "drain, no page open"),
                        ("pages", f"drain, {args.pages} pages polling every {PAGE_EVERY:g} s"),
                        ("flood", f"drain, {args.pages} clients fetching back to back")):
        rate = statistics.median(rates[mode])
        print(f"{f'{label} ({args.jobs} jobs)':<52}{rate:>10.0f} j/s{rate / none:>10.2f}")
    for name, times in latency.items():
        p50, p99 = percentiles_ms(times)
        print(f"{f'{name} p50 / p99 ({len(times)} requests)':<52}{p50:>7.1f} / {p99:.1f} ms")
    print(f"failed requests: {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
