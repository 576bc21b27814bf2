"""The broker's view of connected agents: slots, leases in flight, liveness.

In memory only; the store is the truth about leases and ``Broker.resync``
rebuilds ``inflight`` from it whenever the two could disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class AgentConn:
    agent_id: str
    ident: bytes
    host: str
    pid: int
    slots: int
    labels: dict
    connected_at: float        # wall clock, for display
    last_seen: float           # monotonic
    last_seen_wall: float
    last_sent: float = 0.0     # monotonic
    inflight: set[int] = field(default_factory=set)
    draining: bool = False     # stopping: takes no new jobs
    reachable: bool = True     # false after a send to it failed, until it speaks again
    departing_since: float | None = None  # said Bye; gone once its connection closes
    hello_seq: int = 0         # of its latest Hello, echoed in every Welcome

    @property
    def labels_json(self) -> str | None:
        return json.dumps(self.labels, sort_keys=True) if self.labels else None

    @property
    def free(self) -> int:
        if self.draining or not self.reachable or self.departing_since is not None:
            return 0
        return max(0, self.slots - len(self.inflight))


class Registry:
    def __init__(self) -> None:
        self._by_ident: dict[bytes, AgentConn] = {}

    def __len__(self) -> int:
        return len(self._by_ident)

    def __iter__(self):
        return iter(list(self._by_ident.values()))

    def get(self, ident: bytes) -> AgentConn | None:
        return self._by_ident.get(ident)

    def add(self, agent: AgentConn) -> None:
        self._by_ident[agent.ident] = agent

    def remove(self, agent: AgentConn) -> None:
        self._by_ident.pop(agent.ident, None)

    def owner(self, token: int) -> AgentConn | None:
        for agent in self._by_ident.values():
            if token in agent.inflight:
                return agent
        return None

    def with_credit(self) -> list[AgentConn]:
        """Agents with a free slot, the least loaded first."""
        agents = [a for a in self._by_ident.values() if a.free > 0]
        agents.sort(key=lambda a: (len(a.inflight) / a.slots, a.connected_at))
        return agents

    def slots(self) -> tuple[int, int]:
        busy = sum(len(a.inflight) for a in self._by_ident.values())
        total = sum(a.slots for a in self._by_ident.values())
        return busy, total
