"""Leases whose agent is not connected: waiting for it to come back.

A broker that restarts (or rebuilds its bookkeeping after a failed batch)
finds jobs in the store leased to agents it has not heard from yet. Each such
lease waits here until its agent says Hello and names it (adopted), the agent
says Hello without it (it never started: released), or ``lease_sec`` passes
(ended as "agent lost"). Only the connection the attempt was leased to, known
by its owner digest (broker/intake.py), may adopt or release it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Orphan:
    deadline: float       # monotonic
    agent_id: str | None
    owner: bytes | None   # None: leased by a broker before schema v7; no one may adopt it


class Orphans:
    def __init__(self) -> None:
        self._by_token: dict[int, Orphan] = {}

    def __len__(self) -> int:
        return len(self._by_token)

    def __contains__(self, token: int) -> bool:
        return token in self._by_token

    def add(self, token: int, agent_id: str | None, owner: bytes | None, deadline: float) -> None:
        self._by_token.setdefault(token, Orphan(deadline, agent_id, owner))

    def discard(self, token: int) -> None:
        self._by_token.pop(token, None)

    def keep_only(self, tokens: set[int]) -> None:
        """Forget orphans whose job is no longer leased."""
        self._by_token = {t: o for t, o in self._by_token.items() if t in tokens}

    def adopt(self, token: int, owner: bytes) -> bool:
        """``owner`` names ``token`` in its Hello: is it the connection it was leased to?"""
        orphan = self._by_token.get(token)
        if orphan is None or orphan.owner is None or orphan.owner != owner:
            return False
        del self._by_token[token]
        return True

    def of(self, owner: bytes) -> list[int]:
        """The tokens leased to the connection ``owner``, in order."""
        return sorted(t for t, o in self._by_token.items() if o.owner == owner)

    def held_for_another(self, agent_id: str, owner: bytes) -> bool:
        """Does a lease of agent ``agent_id`` wait for a connection other than ``owner``?
        Then ``owner`` may not take that agent id (it would lock the real agent out).
        A lease without an owner waits for no one: its agent, told to cancel it when
        it says Hello, must not be kept out meanwhile."""
        return any(o.agent_id == agent_id and o.owner is not None and o.owner != owner
                   for o in self._by_token.values())

    def expired(self, now: float) -> Iterator[int]:
        """Tokens whose agent did not come back in time (removed as they are yielded)."""
        for token in [t for t, o in self._by_token.items() if now >= o.deadline]:
            del self._by_token[token]
            yield token

    def extend(self, seconds: float) -> None:
        """The broker could not listen for ``seconds``: give every agent that much longer."""
        for orphan in self._by_token.values():
            orphan.deadline += seconds
