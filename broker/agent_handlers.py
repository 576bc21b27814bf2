"""Handlers for messages from agents, one short function per message type.

Every handler runs inside a savepoint of the broker's batch transaction and
only queues outgoing messages. A message from a peer that has not said
Hello (for instance after a broker restart) is answered with ``hello_first``
and dropped; the agent says Hello again and resends what it holds, so
nothing is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from queuectl.proto import messages as m
from queuectl.proto.states import ErrorCode, Outcome

from .agents import AgentConn
from .context import Context
from .intake import Lease, hello_problem, output_problem, owner_of, peer_name

log = logging.getLogger(__name__)

# Connected agents at once: what a flood of Hellos can make the broker hold (up
# to ~60 KiB each with the most labels, half of it libzmq's). A fleet of
# thousands of processes is far beyond what one broker was measured to serve.
MAX_AGENTS = 4096


def welcome(ctx: Context, agent: AgentConn, cancel: list[int],
            kept: Sequence[int] = ()) -> None:
    """Welcome (again) an agent; ``kept`` are the attempts it reported that go on."""
    cfg = ctx.config
    offsets = []
    for token in kept:
        ends = ctx.store.output_ends(token)
        if ends is not None:
            offsets.append([token, *ends])
    ctx.send(agent.ident, m.Welcome(
        heartbeat_sec=cfg["heartbeat_sec"], lease_sec=cfg["lease_sec"],
        kill_grace_sec=cfg["kill_grace_sec"], output_limit=cfg["output_limit"], cancel=cancel,
        offsets=offsets, hello_seq=agent.hello_seq))


def refuse(ctx: Context, ident: bytes, code: ErrorCode, why: str) -> None:
    ctx.send(ident, m.Error(code=code.value, message=f"hello refused: {why}"))


def on_hello(ctx: Context, ident: bytes, msg: m.Hello, key_name: str | None) -> None:
    problem = hello_problem(msg)
    if problem:
        refuse(ctx, ident, ErrorCode.INVALID, problem)
        return
    if ident != msg.routing.encode():
        # Agents use their routing id as socket identity. libzmq gives a
        # reconnecting agent's identity to the new connection and renames the
        # old one, so a Hello still queued on the old connection arrives under
        # another name.
        log.debug("ignored a stale hello from agent %s", msg.agent_id)
        return
    owner = owner_of(ident, key_name)
    agent = ctx.agents.get(ident)
    if agent is not None and agent.agent_id != msg.agent_id:
        refuse(ctx, ident, ErrorCode.CONFLICT, f"this connection is agent {agent.agent_id}; "
                                               "an agent cannot change its id")
        return
    tokens = set(msg.tokens)
    if agent is None:
        why = _taken(ctx, msg.agent_id, owner)
        if why:
            ctx.intake.warn(peer_name(ident), "refused a hello from peer %s: %s",
                            peer_name(ident), why)
            refuse(ctx, ident, ErrorCode.CONFLICT, why)
            return
        agent = AgentConn(agent_id=msg.agent_id, ident=ident, host=msg.host, pid=msg.pid,
                          slots=msg.slots, labels=dict(msg.labels), connected_at=ctx.now,
                          last_seen=ctx.mono, last_seen_wall=ctx.now, key_name=key_name,
                          owner=owner)
        log.info("agent %s connected from %s with %d slots", agent.agent_id, agent.host,
                 agent.slots)
    else:
        # The same agent said Hello again (it reconnected). An attempt it no
        # longer mentions never reached it, or ended without a result.
        for token in sorted(agent.inflight - tokens):
            agent.forget(token)
            ctx.leases.end_lease(token, Outcome.LEASE_LOST, may_release=True)  # it is not running
        agent.slots = msg.slots
        agent.set_labels(msg.labels)
        agent.draining, agent.departing_since = False, None
    agent.hello_seq = msg.seq
    cancel = []
    for token in sorted(tokens - agent.inflight):
        if ctx.leases.orphans.adopt(token, owner):
            agent.inflight.add(token)  # adopted after a broker restart
        else:
            cancel.append(token)
    if cancel:
        log.info("agent %s: attempts %s are no longer leased to it; canceling", agent.agent_id,
                 cancel)
    # Leases a restarted broker found for this connection that its Hello does not
    # name: jobs it held but never started (it drops those at every Hello). End
    # them now, not when the orphan timer runs out.
    for token in ctx.leases.orphans.of(owner):
        if token not in tokens:
            ctx.leases.end_lease(token, Outcome.LEASE_LOST, may_release=True)
    ctx.agents.add(agent)
    welcome(ctx, agent, cancel, sorted(tokens - set(cancel)))
    for token in sorted(agent.inflight):  # cancels requested while it was away
        job = ctx.store.job_by_token(token)
        if job is not None and job.cancel_requested:
            ctx.send(ident, m.Cancel(token=token, reason="canceled by a user"))
    ctx.wake()
    ctx.notify("agents")


def _taken(ctx: Context, agent_id: str, owner: bytes) -> str | None:
    """Why a new connection may not be agent ``agent_id``, or None."""
    if ctx.agents.named(agent_id) is not None:
        return f"agent id {agent_id} is in use by another connection"
    if ctx.leases.orphans.held_for_another(agent_id, owner):
        return (f"agent id {agent_id} has jobs that wait for the connection that used it "
                "(until its lease ends)")
    if len(ctx.agents) >= MAX_AGENTS:
        return f"the broker already serves {MAX_AGENTS} agents"
    return None


def on_started(ctx: Context, agent: AgentConn, msg: m.Started) -> None:
    if msg.token not in agent.inflight:
        return
    msg = ctx.intake.started(msg, agent.connected_at, ctx.now, agent.agent_id)
    agent.unstarted.discard(msg.token)
    agent.revoked.discard(msg.token)
    ctx.store.start_attempt(msg.token, msg.pid or None, msg.started_at)


def on_output(ctx: Context, agent: AgentConn, msg: m.Output) -> None:
    ctx.outbox.ack_output(agent.ident, len(msg.data))
    problem = output_problem(msg)
    if problem:
        ctx.intake.warn(agent.agent_id, "agent %s sent output with %s; dropped",
                        agent.agent_id, problem)
        return
    lease = ctx.store.lease(msg.token)
    if not _owns(ctx, agent, msg, lease):
        return
    refused_at = ctx.store.append_output(msg.token, msg.stream, msg.offset, msg.data,
                                            ctx.config["output_limit"], gap_ok=msg.gap)
    if refused_at is not None:
        ctx.outbox.rewind_output(agent.ident, msg.token, msg.stream, refused_at)
        return
    ctx.notify(f"out:{msg.token}")


def _owns(ctx: Context, agent: AgentConn, msg: Any, lease: Lease | None) -> bool:
    """Was attempt ``msg.token`` leased to this connection? (Its own late output
    and results, after its lease ended, still count: they are kept.)"""
    if lease is not None and lease.owner == agent.owner:
        return True
    if lease is not None:
        ctx.intake.warn(agent.agent_id, "agent %s sent %s for attempt %d, which was not "
                        "leased to it; ignored", agent.agent_id, msg.TYPE, msg.token)
    return False


def _output_missing(ctx: Context, agent: AgentConn, msg: m.Result, lease: Lease) -> bool:
    """Ask for a resend of output the broker lost (a failed batch) before applying
    the result of the job's current attempt, so its logs end where the job did."""
    if msg.token not in agent.inflight:
        return False
    missing = False
    for stream, end, final in ((m.STDOUT, lease.stdout_end, msg.stdout_end),
                               (m.STDERR, lease.stderr_end, msg.stderr_end)):
        if end < final:
            ctx.outbox.rewind_output(agent.ident, msg.token, stream, end)
            missing = True
    return missing


def on_result(ctx: Context, agent: AgentConn, msg: m.Result) -> None:
    lease = ctx.store.lease(msg.token)
    if lease is not None and _owns(ctx, agent, msg, lease):
        msg = ctx.intake.result(msg, lease, ctx.now, agent.agent_id)
        if _output_missing(ctx, agent, msg, lease):
            return  # not acknowledged: the agent resends the output, then the result
        try:
            outcome = Outcome(msg.outcome)
        except ValueError:
            outcome, detail = Outcome.EXIT, f"unknown outcome {msg.outcome!r}"
        else:
            detail = msg.detail
        if msg.started_at is not None:
            agent.ran(msg.finished_at - msg.started_at)
        agent.forget(msg.token)
        ctx.leases.finish_attempt(msg.token, outcome, exit_code=msg.exit_code, detail=detail,
                                  started_at=msg.started_at, finished_at=msg.finished_at,
                                  pid=msg.pid)
    ctx.outbox.ack(agent.ident, msg.token)


def on_heartbeat(ctx: Context, agent: AgentConn, msg: m.Heartbeat) -> None:
    pass  # _handle_frame already refreshed agent.last_seen


def on_drain(ctx: Context, agent: AgentConn, msg: m.Drain) -> None:
    agent.draining = True
    log.info("agent %s is draining (%d jobs running)", agent.agent_id, len(agent.inflight))


def on_reject(ctx: Context, agent: AgentConn, msg: m.Reject) -> None:
    # Only a job it was not heard to start: giving one back deletes its attempt,
    # which would erase the record (and the output) of a run that happened.
    if msg.token in agent.unstarted:
        agent.forget(msg.token)
        ctx.jobs.release(msg.token, ctx.now)
        ctx.wake()


def on_bye(ctx: Context, agent: AgentConn, msg: m.Bye) -> None:
    if agent.inflight:
        log.warning("agent %s left with %d jobs unreported; they run again",
                    agent.agent_id, len(agent.inflight))
    log.info("agent %s disconnected", agent.agent_id)
    ctx.leases.end_leases(agent, Outcome.LEASE_LOST, said_bye=True)
    ctx.leases.depart(agent)


def _known(handler: Callable[[Context, AgentConn, Any], None]
           ) -> Callable[[Context, bytes, Any, str | None], None]:
    """Wrap a handler so it runs only for agents that said Hello."""

    def run(ctx: Context, ident: bytes, msg: Any, key_name: str | None) -> None:
        agent = ctx.agents.get(ident)
        if agent is None:
            ctx.send(ident, m.Error(code=ErrorCode.HELLO_FIRST.value,
                                    message="unknown agent: say hello first"))
            return
        handler(ctx, agent, msg)

    return run


HANDLERS: dict[type, Callable[[Context, bytes, Any, str | None], None]] = {
    m.Hello: on_hello,
    m.Started: _known(on_started),
    m.Output: _known(on_output),
    m.Result: _known(on_result),
    m.Heartbeat: _known(on_heartbeat),
    m.Drain: _known(on_drain),
    m.Reject: _known(on_reject),
    m.Bye: _known(on_bye),
}
