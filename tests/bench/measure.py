"""Small measuring helpers shared by the benchmarks (not a benchmark itself).

* ``cpu_seconds(pid)``: user + system CPU seconds of one process, from
  ``/proc/PID/stat`` (its own time; or its waited-for children's);
* ``rss_mb(pid)``: resident memory (VmRSS from ``/proc/PID/status``) in MB;
* ``percentiles_ms(seconds)``: p50 and p99 of durations, in milliseconds;
* ``wait_completed(client, n, timeout)``: poll ``status`` until n jobs completed.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import wait_until

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime, or with ``children`` cutime + cstime (its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the name: state is fields[0], so utime (field 14 of proc(5)) is fields[11]
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / TICKS


def total_cpu(pids: Iterable[int], children: bool = False) -> float:
    return sum(cpu_seconds(pid, children) for pid in pids)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds) or [math.nan]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def wait_completed(qc, at_least: int, timeout: float, interval: float = 0.005) -> int:
    """Poll ``status`` until ``completed >= at_least``; returns the count seen."""
    return wait_until(lambda: (n := qc.status()["counts"]["completed"]) >= at_least and n,
                      timeout, interval=interval, message=f"{at_least} completed jobs")
