"""The broker's view of connected agents: slots, leases in flight, liveness.

In memory only; the store is the truth about leases and ``Leases.resync``
rebuilds ``inflight`` from it whenever the two could disagree.

**Credit.** An agent whose jobs are short gets up to two jobs per slot beyond
its slots (``prefetch``): it holds them ready and starts the next one the
moment a slot frees, instead of waiting a round trip to the broker for it.
For jobs of a few milliseconds that round trip is most of a slot's time; one
job per slot ahead was not enough once the agent batches its results, two
were, and more gained nothing (docs/BENCHMARKS.md). Jobs that run longer than
``PREFETCH_BELOW`` gain
nothing from it, so an agent running them gets no more jobs than slots, and
no job waits behind a long one on a busy agent. The broker takes a held job
back (Revoke) when another agent has nothing to do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

PREFETCH_BELOW = 0.05  # seconds: an agent whose jobs run shorter than this gets prefetch
RUNTIME_WEIGHT = 0.3   # of the newest run time in the agent's running average


@dataclass
class AgentConn:
    agent_id: str
    ident: bytes
    host: str
    pid: int
    slots: int
    labels: dict[str, str]
    connected_at: float        # wall clock, for display
    last_seen: float           # monotonic
    last_seen_wall: float
    last_sent: float = 0.0     # monotonic
    inflight: set[int] = field(default_factory=set)  # leased to it, started or not
    unstarted: set[int] = field(default_factory=set)  # leased; no Started heard yet
    revoked: set[int] = field(default_factory=set)    # unstarted ones asked back
    runtime: float | None = None  # running average of its jobs' run time (seconds)
    draining: bool = False     # stopping: takes no new jobs
    reachable: bool = True     # false after a send to it failed, until it speaks again
    departing_since: float | None = None  # said Bye; gone once its connection closes
    hello_seq: int = 0         # of its latest Hello, echoed in every Welcome
    key_name: str | None = None  # the CURVE key it connected with (None without CURVE)
    # Digest of its socket identity and key (broker/intake.py): the attempts
    # leased to it record it, and only it may report them.
    owner: bytes = b""
    # Its labels as the store's claim compares them, encoded once per Hello (a
    # claim, made for every agent at every dispatch, must not encode them again).
    labels_json: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.set_labels(self.labels)

    def set_labels(self, labels: dict[str, str]) -> None:
        self.labels = dict(labels)
        self.labels_json = json.dumps(self.labels, sort_keys=True) if self.labels else None

    @property
    def prefetch(self) -> int:
        """Jobs it may hold beyond its slots (the agent accepts as many)."""
        short = self.runtime is not None and self.runtime < PREFETCH_BELOW
        return 2 * self.slots if short else 0

    def free(self, prefetch: bool = True) -> int:
        """Jobs it may take now: up to its slots, or with ``prefetch`` beyond them."""
        if self.draining or not self.reachable or self.departing_since is not None:
            return 0
        return max(0, self.slots + (self.prefetch if prefetch else 0) - len(self.inflight))

    def can_run(self, requires: dict[str, str] | None) -> bool:
        """Its labels include every label ``requires`` names (as the store's claim checks)."""
        return all(self.labels.get(key) == value for key, value in (requires or {}).items())

    def queued(self) -> set[int]:
        """The leases it holds waiting for a slot, as far as the broker can tell:
        unheard ones beyond its free slots (the oldest unheard fill those)."""
        started = len(self.inflight - self.unstarted)
        unheard = sorted(self.unstarted & self.inflight)
        return set(unheard[max(0, self.slots - started):])

    def held_back(self) -> int:
        """Leased jobs beyond its slots: some wait on the agent, not started."""
        return max(0, len(self.inflight) - self.slots)

    def ran(self, seconds: float) -> None:
        """A job of its ran for ``seconds``: update the running average."""
        seconds = max(0.0, seconds)
        self.runtime = seconds if self.runtime is None else \
            (1 - RUNTIME_WEIGHT) * self.runtime + RUNTIME_WEIGHT * seconds

    def forget(self, token: int) -> None:
        self.inflight.discard(token)
        self.unstarted.discard(token)
        self.revoked.discard(token)


class Registry:
    """The connected agents, by socket identity and by agent id: one live
    connection per agent id (broker/agent_handlers.py refuses a second)."""

    def __init__(self) -> None:
        self._by_ident: dict[bytes, AgentConn] = {}
        self._by_id: dict[str, AgentConn] = {}

    def __len__(self) -> int:
        return len(self._by_ident)

    def __iter__(self) -> Iterator[AgentConn]:
        return iter(list(self._by_ident.values()))

    def get(self, ident: bytes) -> AgentConn | None:
        return self._by_ident.get(ident)

    def named(self, agent_id: str) -> AgentConn | None:
        return self._by_id.get(agent_id)

    def add(self, agent: AgentConn) -> None:
        self._by_ident[agent.ident] = agent
        self._by_id[agent.agent_id] = agent

    def remove(self, agent: AgentConn) -> None:
        if self._by_ident.get(agent.ident) is agent:
            del self._by_ident[agent.ident]
        if self._by_id.get(agent.agent_id) is agent:
            del self._by_id[agent.agent_id]

    def owner(self, token: int) -> AgentConn | None:
        for agent in self._by_ident.values():
            if token in agent.inflight:
                return agent
        return None

    def with_credit(self, prefetch: bool) -> list[AgentConn]:
        """Agents that may take a job (a free slot, or with ``prefetch`` a free
        place to hold one), the least loaded first."""
        agents = [a for a in self._by_ident.values() if a.free(prefetch) > 0]
        agents.sort(key=lambda a: (len(a.inflight) / a.slots, a.connected_at))
        return agents

    def slots(self) -> tuple[int, int]:
        busy = sum(min(len(a.inflight), a.slots) for a in self._by_ident.values())
        total = sum(a.slots for a in self._by_ident.values())
        return busy, total
