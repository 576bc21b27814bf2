"""The lease table: which attempt is leased to which connection, and how a
lease ends when its agent cannot report it.

An attempt is named by its *token* (``attempts.id`` in the store): the broker
gives one with each Dispatch, and the agent names it in Started, Output and
Result. The store is the truth about leases; the agents' in-memory sets
(``AgentConn.inflight``, ``unstarted``) are rebuilt from it by ``resync``
whenever the two could disagree (at start, after a failed batch). Leases
whose agent has not come back since a broker restart wait in ``orphans``
until it does or its lease time runs out.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from queuectl.proto.states import Outcome

from .agents import AgentConn
from .orphans import Orphans

if TYPE_CHECKING:
    from .context import Context

log = logging.getLogger(__name__)


class Leases:
    def __init__(self, ctx: Context, on_departed: Callable[[], None]):
        self.ctx = ctx
        self.orphans = Orphans()
        self.undelivered: list[int] = []  # dispatched to an agent the socket could not reach
        self._on_departed = on_departed

    def end_leases(self, agent: AgentConn, outcome: Outcome, said_bye: bool = False) -> None:
        """End every lease of ``agent``, which is gone. Its jobs start in the order
        they were dispatched (token order), so the oldest ones it was not heard to
        start, up to its slot count, may have started just before it went (a Started
        lost with it, or a job that killed it): they count as failed attempts, as a
        lease that started does. The others it can only have held: they go back
        as they were (``end_lease``). An agent that ``said_bye`` reported every job
        it started first, so none of those it was not heard to start did."""
        unheard = sorted(agent.unstarted & agent.inflight)
        held = set(unheard if said_bye else unheard[agent.slots:])
        for token in sorted(agent.inflight):
            self.end_lease(token, outcome, may_release=token in held)
        agent.inflight.clear()
        agent.unstarted.clear()
        agent.revoked.clear()
        self.ctx.wake()

    def drop_agent(self, agent: AgentConn, outcome: Outcome) -> None:
        """Forget an agent; its leases end as failed attempts with ``outcome``."""
        self.end_leases(agent, outcome)
        self.forget_agent(agent)

    def forget_agent(self, agent: AgentConn) -> None:
        """Forget an agent that is gone. It holds no lease by now, unless the batch of
        its Bye failed and the resync gave them back: those end as at a Bye."""
        if agent.inflight:
            self.end_leases(agent, Outcome.LEASE_LOST, said_bye=agent.departing_since is not None)
        self.ctx.agents.remove(agent)
        self._on_departed()
        self.ctx.notify("agents")

    def depart(self, agent: AgentConn) -> None:
        """The agent said Bye: it counts as gone once its connection has closed."""
        agent.departing_since = self.ctx.mono
        self.ctx.maintain_by(self.ctx.mono + 0.02)

    def end_lease(self, token: int, outcome: Outcome, may_release: bool) -> None:
        """Attempt ``token`` will not report. With ``may_release``, an attempt that
        never started (a dispatch lost on the way, a job an agent held ready) gives
        its job back as it was; otherwise the attempt ends as failed with ``outcome``."""
        attempt = self.ctx.store.attempt(token)
        if (may_release and attempt is not None and attempt.started_at is None
                and attempt.finished_at is None):
            self.orphans.discard(token)
            self.ctx.jobs.release(token, self.ctx.now)
            self.ctx.wake()
        else:
            self.finish_attempt(token, outcome)

    def finish_attempt(self, token: int, outcome: Outcome, *, exit_code: int | None = None,
                       detail: str = "", started_at: float | None = None,
                       finished_at: float | None = None, pid: int | None = None) -> None:
        """End attempt ``token`` (from a result, or because its agent is gone)."""
        ctx = self.ctx
        self.orphans.discard(token)
        ctx.jobs.finish(token, outcome, exit_code=exit_code, detail=detail, started_at=started_at,
                        finished_at=ctx.now if finished_at is None else finished_at, now=ctx.now,
                        pid=pid)
        ctx.notify(f"out:{token}")  # `logs --follow` learns the attempt ended
        ctx.wake()

    def release_undelivered(self) -> None:
        """Jobs whose Dispatch the socket refused go back as they were."""
        while self.undelivered:
            token = self.undelivered.pop()
            owner = self.ctx.agents.owner(token)
            if owner is not None:
                owner.forget(token)
            self.ctx.jobs.release(token, self.ctx.now)

    def expire_orphans(self) -> None:
        for token in self.orphans.expired(self.ctx.mono):
            log.warning("attempt %d: no agent reclaimed it after the broker restarted", token)
            # Its agent never came back: it may have started it (counted).
            self.end_lease(token, Outcome.LEASE_LOST, may_release=False)

    def extend(self, seconds: float) -> None:
        """The broker could not hear anyone for ``seconds`` (a long iteration):
        move every lease clock forward by that much, so no agent is lost for it."""
        for agent in self.ctx.agents:
            agent.last_seen += seconds
        self.orphans.extend(seconds)

    def resync(self) -> None:
        """Rebuild the agents' lease sets from the store (at start and after a failed batch)."""
        ctx = self.ctx
        by_owner: dict[bytes | None, set[int]] = defaultdict(set)
        unstarted: set[int] = set()
        agent_ids: dict[int, str | None] = {}
        for token, agent_id, owner, started in ctx.store.leases():
            by_owner[owner].add(token)
            agent_ids[token] = agent_id
            if not started:
                unstarted.add(token)
        for agent in ctx.agents:
            agent.inflight = by_owner.pop(agent.owner, set())
            # From the store: a Reject or a Started of the failed batch is gone, and
            # its Revoke was never sent; a held job is asked for again when needed.
            agent.unstarted = agent.inflight & unstarted
            agent.revoked.clear()
        self.orphans.keep_only(set(agent_ids))
        deadline = ctx.mono + ctx.config["lease_sec"]
        for owner, tokens in by_owner.items():
            for token in tokens:
                self.orphans.add(token, agent_ids[token], owner, deadline)
