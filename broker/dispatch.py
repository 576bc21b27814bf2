"""Dispatch: lease claimable jobs to agents with room for them, and ask agents
that hold jobs ahead to give some back when another agent has nothing to do.

Runs at the end of an iteration in which something may have become claimable
(``Context.dirty``): a job enqueued or due, a slot freed, an agent arrived.
"""

from __future__ import annotations

from queuectl.proto import messages as m

from .agents import AgentConn
from .context import Context
from .queues import Gate


def dispatch(ctx: Context) -> None:
    """Lease due jobs to agents, one per agent per round: first to free slots
    across all agents, then to agents that hold jobs ahead (see agents.py).

    Once an agent with some labels finds nothing to claim, no other agent
    with the same labels looks again this time: no job becomes claimable
    meanwhile. So a thousand idle agents cost one claim, not a thousand."""
    ctx.dirty = False
    dry: set[str | None] = set()  # label sets that found nothing to claim
    gate = ctx.queues.gate()
    holders: list[AgentConn] | None = None  # agents holding jobs ahead, found once
    asked = 0  # Revokes sent and not yet answered
    for prefetch in (False, True):
        agents = ctx.agents.with_credit(prefetch)
        while agents:
            next_round = []
            for agent in agents:
                if agent.labels_json not in dry and _dispatch_one(ctx, agent, gate):
                    if agent.free(prefetch) > 0:
                        next_round.append(agent)
                    continue
                dry.add(agent.labels_json)
                if not prefetch:
                    if holders is None:
                        holders = [a for a in ctx.agents if a.held_back() > 0]
                        asked = sum(len(a.revoked) for a in ctx.agents)
                    if holders:
                        asked = _revoke_for(ctx, agent, holders, asked)
            agents = next_round


def _dispatch_one(ctx: Context, agent: AgentConn, gate: Gate) -> bool:
    claimed = ctx.store.claim(ctx.now, agent.agent_id, agent.owner, agent.labels_json,
                              gate.closed)
    if claimed is None:
        return False
    job, token = claimed
    gate.took(job.queue)
    agent.inflight.add(token)
    agent.unstarted.add(token)
    ctx.send(agent.ident, m.Dispatch(
        token=token, job_id=job.id, attempt=job.attempts + 1, command=job.command,
        timeout_sec=job.timeout_sec, env=job.env, cwd=job.cwd))
    ctx.job_changed(job)
    return True


def _revoke_for(ctx: Context, idle: AgentConn, holders: list[AgentConn], asked: int) -> int:
    """``idle`` has free slots and nothing to claim: ask ``holders`` to give back
    jobs they hold ahead that it could run, so no job waits while it idles.
    ``asked`` counts Revokes not answered yet; returns it updated."""
    wanted = idle.free(prefetch=False) - asked
    for holder in holders:
        if wanted <= 0:
            break
        if holder is idle or holder.held_back() <= len(holder.revoked):
            continue
        for token in sorted(holder.unstarted - holder.revoked, reverse=True):
            if wanted <= 0 or holder.held_back() <= len(holder.revoked):
                break
            job = ctx.store.job_by_token(token)
            if job is None or not idle.can_run(job.requires):
                continue
            holder.revoked.add(token)
            ctx.send(holder.ident, m.Revoke(token=token))
            wanted -= 1
            asked += 1
    return asked
