"""Admin requests that wait for something: ``wait``, ``cancel``, ``logs --follow``
and ``worker stop`` are parked here instead of being answered at once.

A parked request is keyed by what it waits for (a job id, or "agents"). When
the broker changes that thing it calls ``notify(key)``; each parked check
then either returns a reply or None (keep waiting). At the deadline,
``expire`` answers with whatever the request's ``on_timeout`` gives, so a
client never waits on a broker that forgot it.

The loop's iteration is one transaction: if its commit fails, what it did is
undone, and so is what it did here (``fail_step``). A request parked in it
was answered with the failure, so it is forgotten; one answered in it (a
change that woke it, now rolled back) waits again, else its reply, thrown
away with the failed iteration's, would never come.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Check = Callable[[], Any]
# What a handler returns for a request it parked: the answer comes later.
PARKED = object()


@dataclass(eq=False)
class Parked:
    ident: bytes
    req_id: int
    key: str
    deadline: float
    check: Check
    on_timeout: Check
    done: bool = field(default=False)


class ParkingLot:
    def __init__(self) -> None:
        self._by_key: dict[str, list[Parked]] = {}
        self._deadlines: list[tuple[float, int, Parked]] = []
        self._counter = itertools.count()
        self._parked_now: list[Parked] = []    # parked in this iteration
        self._answered_now: list[Parked] = []  # answered in this iteration

    def park(self, parked: Parked) -> None:
        self._wait(parked)
        self._parked_now.append(parked)

    def _wait(self, parked: Parked) -> None:
        self._by_key.setdefault(parked.key, []).append(parked)
        heapq.heappush(self._deadlines, (parked.deadline, next(self._counter), parked))

    def commit_step(self) -> None:
        """The iteration committed: what it parked and answered stands."""
        self._parked_now.clear()
        self._answered_now.clear()

    def fail_step(self) -> None:
        """The iteration's transaction failed: undo what it did here."""
        for parked in self._parked_now:
            parked.done = True
            self._unlist(parked)
        for parked in self._answered_now:
            if parked not in self._parked_now:
                parked.done = False
                self._wait(parked)
        self.commit_step()

    def _unlist(self, parked: Parked) -> None:
        waiting = self._by_key.get(parked.key, [])
        if parked in waiting:
            waiting.remove(parked)
            if not waiting:
                del self._by_key[parked.key]

    def notify(self, key: str) -> list[tuple[Parked, Any]]:
        """Evaluate the requests parked on ``key``; returns (parked, reply) for the ready ones."""
        waiting = self._by_key.get(key)
        if not waiting:
            return []
        ready, still = [], []
        for parked in waiting:
            result = parked.check()
            if result is None:
                still.append(parked)
            else:
                parked.done = True
                self._answered_now.append(parked)
                ready.append((parked, result))
        if still:
            self._by_key[key] = still
        else:
            del self._by_key[key]
        return ready

    def expire(self, now: float) -> list[tuple[Parked, Any]]:
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, parked = heapq.heappop(self._deadlines)
            if parked.done:
                continue
            parked.done = True
            self._unlist(parked)
            self._answered_now.append(parked)
            expired.append((parked, parked.on_timeout()))
        return expired

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][2].done:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def drop_all(self) -> list[Parked]:
        everything = [p for ps in self._by_key.values() for p in ps]
        self._by_key.clear()
        self._deadlines.clear()
        return everything
