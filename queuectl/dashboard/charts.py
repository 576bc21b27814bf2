"""Chart geometry for the stats page: numbers in, coordinates out.

The templates draw these as inline SVG, so the charts need no JavaScript library,
work without JavaScript, and are escaped like everything else on the page.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from queuectl.proto.states import ALL_STATES
from queuectl.proto.timefmt import parse_iso

from .fmt import number

STATES = ALL_STATES

# Throughput chart (viewBox units; the SVG scales to the width of its card).
WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 10, 24
MIN_SEGMENT = 4.0  # a state with any jobs stays visible in the distribution bar


@dataclass
class Bar:
    x: float
    width: float
    completed_y: float
    completed_h: float
    failed_y: float
    failed_h: float
    title: str


@dataclass
class Throughput:
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: float = WIDTH - RIGHT
    top: int = TOP
    bottom: float = HEIGHT - BOTTOM
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str, str]] = field(default_factory=list)  # x, label, anchor
    completed: int = 0
    failed: int = 0
    available: bool = True


def nice_ceiling(value: float, ticks: int = 4) -> tuple[float, float]:
    """The smallest 1/2/5 x 10^k step such that ``ticks`` steps cover ``value``: (top, step)."""
    if value <= 0:
        return float(ticks), 1.0
    raw = value / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        step = factor * magnitude
        if step * ticks >= value:
            break
    step = max(step, 1.0)  # counts are whole jobs
    return step * math.ceil(value / step), step


def compact(value: float) -> str:
    """An axis label that fits the margin: ``950``, ``1.5k``, ``20k``, ``3M``."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            text = f"{value / size:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    return f"{value:g}"


def throughput(per_minute: dict[str, Any] | None) -> Throughput:
    """Stacked bars (completed below, failed above) for each of the last 60 minutes."""
    chart = Throughput()
    if not per_minute:
        chart.available = False
        per_minute = {"completed": [0] * 60, "failed": [0] * 60, "start": None}
    completed = [int(n) for n in per_minute.get("completed") or []]
    failed = [int(n) for n in per_minute.get("failed") or []]
    minutes = max(len(completed), len(failed), 1)
    completed += [0] * (minutes - len(completed))
    failed += [0] * (minutes - len(failed))
    chart.completed, chart.failed = sum(completed), sum(failed)
    try:
        start = parse_iso(per_minute["start"]) if per_minute.get("start") else None
    except ValueError:
        start = None
    top, step = nice_ceiling(max((c + f for c, f in zip(completed, failed, strict=True)),
                                 default=0))
    plot_h = chart.bottom - chart.top
    slot = (chart.right - chart.left) / minutes
    scale = plot_h / top
    tick = 0.0
    while tick <= top + 1e-9:
        chart.y_ticks.append((round(chart.bottom - tick * scale, 2), compact(tick)))
        tick += step
    for i, (done, bad) in enumerate(zip(completed, failed, strict=True)):
        x = chart.left + i * slot + slot * 0.14
        done_h = round(done * scale, 2)
        bad_h = round(bad * scale, 2)
        done_y = round(chart.bottom - done_h, 2)
        when = (time.strftime("%H:%M UTC", time.gmtime(start + 60 * i))
                if start is not None else f"{minutes - 1 - i} min ago")
        chart.bars.append(Bar(
            x=round(x, 2), width=round(slot * 0.72, 2),
            completed_y=done_y, completed_h=done_h,
            failed_y=round(done_y - bad_h, 2), failed_h=bad_h,
            title=f"{when}: {number(done)} completed, {number(bad)} failed"))
    # Bar i is (minutes - 1 - i) minutes ago: the last one is the current minute,
    # and the left edge of the chart is the start of the window.
    ticks = [(0, f"{minutes} m ago")]
    ticks += [(minutes - 1 - ago, f"{ago} m") for ago in (minutes * 3 // 4, minutes // 2,
                                                          minutes // 4)]
    for i, label in ticks + [(minutes - 1, "now")]:
        anchor = "start" if i == 0 else "end" if i == minutes - 1 else "middle"
        x = chart.left + i * slot + (0 if anchor == "start" else slot if anchor == "end"
                                     else slot / 2)
        chart.x_ticks.append((round(x, 2), label, anchor))
    return chart


@dataclass
class Segment:
    state: str
    x: float
    width: float
    count: int
    percent: str
    title: str


@dataclass
class Distribution:
    width: int = WIDTH
    height: int = 28
    total: int = 0
    segments: list[Segment] = field(default_factory=list)
    legend: list[Segment] = field(default_factory=list)


def distribution(counts: dict[str, int] | None) -> Distribution:
    """One horizontal bar split by state, plus a legend entry per state."""
    chart = Distribution()
    counts = {state: int((counts or {}).get(state) or 0) for state in STATES}
    chart.total = total = sum(counts.values())
    widths = {s: (chart.width * n / total if total else 0.0) for s, n in counts.items()}
    # Keep tiny but non-empty states visible, taking the room from the largest.
    short = sum(MIN_SEGMENT - w for s, w in widths.items() if counts[s] and w < MIN_SEGMENT)
    if short:
        widest = max(widths, key=widths.__getitem__)
        for state, width in widths.items():
            if counts[state] and width < MIN_SEGMENT:
                widths[state] = MIN_SEGMENT
        widths[widest] -= short
    x = 0.0
    for state in STATES:
        n = counts[state]
        percent = f"{100 * n / total:.1f}%" if total else "0%"
        segment = Segment(state, round(x, 2), round(widths[state], 2), n, percent,
                          f"{state}: {number(n)} ({percent})")
        chart.legend.append(segment)
        if n:
            chart.segments.append(segment)
        x += widths[state]
    return chart
