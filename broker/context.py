"""What a handler sees of the broker: its services and the iteration's clock.

Handlers (``broker/admin.py``, ``broker/agent_handlers.py``) and the lease
table (``broker/leases.py``) take a ``Context``, never the loop
(``broker/server.py``): no socket, no inbox, no store-failure state. A test
builds one on a real store in a temporary directory, calls a handler with
it, and reads what the handler queued in ``outbox``. The loop sets
``clock`` at the start of each iteration, so a test can drive one with any
time it likes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .agents import Registry
from .batches import Batches
from .intake import Intake
from .jobs import JobService
from .leases import Leases
from .lifecycle import RUNNABLE
from .metrics import Metrics
from .outbox import Outbox
from .parking import PARKED, Check, Parked, ParkingLot
from .queues import Queues
from .store import Job, Store


@dataclass
class Clock:
    """The iteration's time: ``now`` for what is stored and shown (wall clock),
    ``mono`` for timers (monotonic). Both are fixed for a whole iteration."""

    now: float
    mono: float


class Context:
    def __init__(self, store: Store, config: dict[str, Any], clock: Clock,
                 on_departed: Callable[[], None] = lambda: None):
        self.store = store
        self.config = config
        self.clock = clock
        self.outbox = Outbox()
        self.parking = ParkingLot()
        self.metrics = Metrics(started_at=clock.now)
        self.jobs = JobService(store, config, self.job_changed)
        self.agents = Registry()
        self.queues = Queues(store)
        self.batches = Batches(store)
        self.intake = Intake()
        self.leases = Leases(self, on_departed)
        self.dirty = True  # jobs may be claimable: dispatch at the end of the iteration
        self.next_due: float | None = None  # the earliest run_at still to come
        self.next_maintenance = 0.0  # monotonic: heartbeats, lease checks, departures

    @property
    def now(self) -> float:
        return self.clock.now

    @property
    def mono(self) -> float:
        return self.clock.mono

    def send(self, ident: bytes, msg: Any) -> None:
        self.outbox.send(ident, msg)

    def wake(self) -> None:
        """Something may have become claimable: dispatch this iteration."""
        self.dirty = True

    def schedule(self, run_at: float) -> None:
        """A job becomes claimable at ``run_at``: dispatch now, or wake the loop then."""
        if run_at <= self.now:
            self.dirty = True
        elif self.next_due is None or run_at < self.next_due:
            self.next_due = run_at

    def maintain_by(self, mono: float) -> None:
        """Run the timed maintenance no later than ``mono``."""
        self.next_maintenance = min(self.next_maintenance, mono)

    def notify(self, key: str) -> None:
        """``key`` changed (``job:ID``, ``out:TOKEN``, ``agents``, ``batch:ID``):
        answer the requests parked on it that are ready now."""
        for parked, result in self.parking.notify(key):
            self.outbox.reply(parked.ident, parked.req_id, result)

    def park(self, ident: bytes, req_id: int, key: str, hold: float, check: Check,
             on_timeout: Check) -> object:
        """Answer request ``req_id`` later: when ``check`` (run at each ``notify(key)``)
        returns a result, or with ``on_timeout()`` after ``hold`` seconds."""
        self.parking.park(Parked(ident, req_id, key, self.mono + hold, check, on_timeout))
        return PARKED

    def job_changed(self, job: Job) -> None:
        self.metrics.job_changed(job)
        if job.state in RUNNABLE:
            self.schedule(job.run_at)
        self.notify(f"job:{job.id}")

