"""Queues: pause, resume and concurrency limits, held by the broker for every host.

A rule lives in the store's ``queues`` table, so it survives restarts. The
limit counts a queue's leased jobs (``processing``, on any agent, held ahead
or running), so it holds across the whole fleet. Each dispatch round starts
from the store's count (``Gate``) and closes a queue the moment it is full.
This module also says why a waiting job is not running (``waiting_reason``),
which ``show`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from queuectl.proto.states import JobState
from queuectl.proto.timefmt import to_iso

from .store import Job, Store

if TYPE_CHECKING:
    from .agents import AgentConn


@dataclass
class Rule:
    paused: bool = False
    limit: int | None = None  # most jobs of the queue leased at once; None: no limit


class Gate:
    """The queues closed to one dispatch round, kept up to date as it claims."""

    def __init__(self, rules: dict[str, Rule], running: dict[str, int]):
        self.rules, self.running = rules, running
        self.closed = frozenset(name for name, rule in rules.items()
                                if rule.paused or (rule.limit is not None
                                                   and running.get(name, 0) >= rule.limit))

    def took(self, queue: str) -> None:
        rule = self.rules.get(queue)
        if rule is None or rule.limit is None:
            return
        self.running[queue] = self.running.get(queue, 0) + 1
        if self.running[queue] >= rule.limit:
            self.closed = self.closed | {queue}


class Queues:
    def __init__(self, store: Store):
        self.store = store
        self.rules: dict[str, Rule] = {}
        self.load()

    def load(self) -> None:
        self.rules = {name: Rule(paused, limit)
                      for name, (paused, limit) in self.store.queue_rules().items()}
        self.store.use_queue_index(bool(self.rules))

    def gate(self) -> Gate:
        limited = any(rule.limit is not None for rule in self.rules.values())
        return Gate(self.rules, self.store.running_by_queue() if limited else {})

    def pause(self, name: str, paused: bool) -> Rule:
        return self._change(name, Rule(paused, self.rules.get(name, Rule()).limit))

    def limit(self, name: str, limit: int | None) -> Rule:
        """At most ``limit`` jobs of ``name`` leased at once; None removes the limit."""
        return self._change(name, Rule(self.rules.get(name, Rule()).paused, limit))

    def _change(self, name: str, rule: Rule) -> Rule:
        self.store.set_queue_rule(name, rule.paused, rule.limit)
        if rule.paused or rule.limit is not None:
            self.rules[name] = rule
        else:
            self.rules.pop(name, None)
        self.store.use_queue_index(bool(self.rules))
        return rule

    def overview(self) -> list[dict[str, Any]]:
        """Every queue with a rule or unfinished jobs, by name."""
        active = self.store.active_by_queue()
        rows = []
        for name in sorted(set(active) | set(self.rules)):
            rule = self.rules.get(name, Rule())
            counts = active.get(name, {})
            rows.append({"name": name, "paused": rule.paused, "limit": rule.limit,
                         "pending": counts.get("pending", 0) + counts.get("failed", 0),
                         "processing": counts.get("processing", 0)})
        return rows


def waiting_reason(job: Job, now: float, queues: Queues, agents: Iterable[AgentConn],
                   store: Store) -> str | None:
    """Why a waiting job is not running yet, in a sentence; None for other states."""
    if job.state not in (JobState.PENDING, JobState.FAILED):
        return None
    if job.run_at > now:
        what = "its next attempt" if job.state is JobState.FAILED else "it"
        return f"scheduled: {what} may start at {to_iso(job.run_at)}"
    rule = queues.rules.get(job.queue)
    if rule is not None and rule.paused:
        return f"queue {job.queue!r} is paused (queuectl queue resume {job.queue})"
    if rule is not None and rule.limit is not None:
        running = store.running_by_queue().get(job.queue, 0)
        if running >= rule.limit:
            return (f"queue {job.queue!r} is at its limit: {running} of {rule.limit} jobs "
                    "running")
    live = [agent for agent in agents if not agent.draining and agent.departing_since is None]
    if not live:
        return "no agent is connected"
    able = [agent for agent in live if agent.can_run(job.requires)]
    if not able:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted((job.requires or {}).items()))
        seen = sorted({", ".join(f"{k}={v}" for k, v in sorted(agent.labels.items())) or "none"
                       for agent in live})
        return (f"no connected agent has the labels it requires ({wanted}); connected agents' "
                f"labels: {'; '.join(seen)}")
    if all(agent.free(prefetch=False) <= 0 for agent in able):
        ahead = store.ahead_of(job) if job.requires is None else 0
        busy = f"{len(able)} agent(s) that can run it are busy"
        return busy + (f"; {ahead}{'+' if ahead >= 1000 else ''} jobs of its queue are ahead "
                       "of it" if ahead else "")
    return "about to be dispatched"
