"""What the broker counts for the stats page and /metrics.

Counters and a histogram of attempt durations since the broker started (the
Prometheus convention: a restart resets them, and ``rate()`` copes), plus a
per-minute series of completed and failed attempts over the last hour, which
is seeded from the store at start so the chart survives a restart.

Events are staged while a transaction runs and counted only once it commits
(``commit``, called after the commit; ``discard`` after the batch rolled back,
``transaction`` for a savepoint), so work the store refused is not counted.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

from queuectl.proto.states import Event, JobState
from queuectl.proto.timefmt import to_iso

from .store import Job

# Upper bounds (seconds) of the duration histogram: shell jobs run from
# milliseconds to an hour.
BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
MINUTES = 60  # length of the per-minute series
COUNTERS = tuple(event.value for event in Event)


class Metrics:
    def __init__(self, started_at: float):
        self.started_at = started_at
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.buckets = [0] * (len(BOUNDS) + 1)  # the last one is above every bound
        self.duration_sum = 0.0
        self.duration_count = 0
        self.minutes: dict[int, list[int]] = {}  # minute number -> [completed, failed]
        self._staged: list[tuple[Event, float | None, float | None]] = []  # name, value, when

    # --- staging, inside a transaction ----------------------------------------

    def enqueued(self, n: int) -> None:
        self._staged.append((Event.ENQUEUED, float(n), None))

    def job_changed(self, job: Job) -> None:
        """Stage what a job's new state means: an attempt ended, or the job died."""
        duration = None
        if job.started_at is not None and job.finished_at is not None:
            duration = max(0.0, job.finished_at - job.started_at)
        # The minute is the broker's clock (updated_at), not the agent's: a
        # skewed agent clock must not move events out of the chart.
        if job.state is JobState.COMPLETED:
            self._staged.append((Event.COMPLETED, duration, job.updated_at))
        elif job.state in (JobState.FAILED, JobState.DEAD):
            self._staged.append((Event.FAILED, duration, job.updated_at))
            if job.state is JobState.DEAD:
                self._staged.append((Event.DEAD, None, None))
        elif job.state is JobState.CANCELED:
            self._staged.append((Event.CANCELED, None, None))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Pair with a store savepoint: what it staged is dropped if it rolls back."""
        mark = len(self._staged)
        try:
            yield
        except BaseException:
            del self._staged[mark:]
            raise

    def discard(self) -> None:
        """The batch was rolled back: nothing staged happened."""
        self._staged.clear()

    def commit(self) -> None:
        staged, self._staged = self._staged, []
        for name, value, when in staged:
            if name is Event.ENQUEUED:
                assert value is not None  # enqueued() stages the count
                self.counters[name] += int(value)
                continue
            self.counters[name] += 1
            if name in (Event.COMPLETED, Event.FAILED):
                if value is not None:
                    self._observe(value)
                if when is not None:
                    self._per_minute(when, name is Event.COMPLETED)

    # --- counting ---------------------------------------------------------------

    def _observe(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(BOUNDS) if seconds <= bound), len(BOUNDS))
        self.buckets[index] += 1
        self.duration_sum += seconds
        self.duration_count += 1

    def _per_minute(self, when: float, ok: bool) -> None:
        minute = math.floor(when / 60)
        counts = self.minutes.get(minute)
        if counts is None:
            counts = self.minutes[minute] = [0, 0]
            for old in [m for m in self.minutes if m <= minute - MINUTES]:
                del self.minutes[old]
        counts[0 if ok else 1] += 1

    def seed(self, finished: Iterable[tuple[float, bool]], now: float) -> None:
        """Fill the per-minute series from the store: (finished_at, ok) of recent
        attempts. Those times are the agents' clocks: ignore any in the future."""
        for finished_at, ok in finished:
            if now - MINUTES * 60 <= finished_at <= now:
                self._per_minute(finished_at, ok)

    # --- reading -----------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        last = math.floor(now / 60)
        first = last - MINUTES + 1
        series = [self.minutes.get(m, [0, 0]) for m in range(first, last + 1)]
        return {
            "started_at": to_iso(self.started_at),
            "now": to_iso(now),
            "counters": dict(self.counters),
            "duration": {"bounds": list(BOUNDS), "counts": list(self.buckets),
                         "sum": round(self.duration_sum, 6), "count": self.duration_count},
            "per_minute": {"start": to_iso(first * 60.0),
                           "completed": [c for c, _ in series],
                           "failed": [f for _, f in series]},
        }
