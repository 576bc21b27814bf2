"""Handlers and single iterations of the loop, without processes or sockets.

A handler takes a ``Context`` (broker/context.py): a real store in a temporary
directory, the broker's services, and an outbox to read what it would send.
The loop's ``step`` takes its clock from the caller, so a test can move time
forward by a whole lease in one call instead of waiting for it.
"""

from __future__ import annotations

from typing import Any

import pytest

from queuectl.broker import admin, agent_handlers
from queuectl.broker.context import Clock, Context
from queuectl.broker.dispatch import dispatch
from queuectl.broker.intake import owner_of
from queuectl.broker.parking import PARKED
from queuectl.broker.server import Broker
from queuectl.proto import ErrorCode, decode_batch, encode, ops
from queuectl.proto import config as config_keys
from queuectl.proto import messages as m
from queuectl.proto.jobspec import SpecError

T0 = 1_800_000_000.0  # a wall clock well within the sane window of any test run
AGENT = b"agent-1/" + b"s" * 32
OTHER = b"agent-2/" + b"t" * 32
CLIENT = b"client"


@pytest.fixture
def ctx(store):
    return Context(store, {**config_keys.defaults(), **store.config()}, Clock(T0, 100.0))


def hello(ctx: Context, ident: bytes = AGENT, agent_id: str = "agent-1", slots: int = 1,
          tokens: tuple[int, ...] = ()) -> None:
    msg = m.Hello(agent_id=agent_id, host="h", pid=1, slots=slots, labels={},
                  tokens=list(tokens), routing=ident.decode())
    agent_handlers.HANDLERS[m.Hello](ctx, ident, msg, None)


def sent(ctx: Context, kind: type) -> list[tuple[bytes, Any]]:
    """Take what the context would send now; those of ``kind``, with their peers."""
    return [(ident, msg) for ident, msgs in ctx.outbox.take().items() for msg in msgs
            if isinstance(msg, kind)]


def request(ctx: Context, op: str, **args: Any) -> Any:
    return admin.handle(ctx, CLIENT, m.Request(req_id=1, op=op, args=args))


def test_a_hello_is_welcomed_and_the_next_dispatch_leases_a_job_to_it(ctx):
    hello(ctx)
    assert [ident for ident, _ in sent(ctx, m.Welcome)] == [AGENT]
    request(ctx, "enqueue", job={"id": "j1", "command": "true"})
    dispatch(ctx)
    [(ident, job)] = sent(ctx, m.Dispatch)
    assert (ident, job.job_id, job.attempt) == (AGENT, "j1", 1)
    assert ctx.store.job("j1").state.value == "processing"


def test_a_result_from_another_connection_does_not_finish_the_job(ctx):
    hello(ctx)
    hello(ctx, OTHER, "agent-2")
    request(ctx, "enqueue", job={"id": "j1", "command": "sleep 9"})
    dispatch(ctx)
    [(owner, job)] = sent(ctx, m.Dispatch)
    impostor = OTHER if owner == AGENT else AGENT
    forged = m.Result(token=job.token, outcome="ok", exit_code=0, detail="", started_at=T0,
                      finished_at=T0 + 1, pid=7)
    agent_handlers.HANDLERS[m.Result](ctx, impostor, forged, None)
    assert ctx.store.job("j1").state.value == "processing"
    agent_handlers.HANDLERS[m.Result](ctx, owner, forged, None)
    assert ctx.store.job("j1").state.value == "completed"


def test_a_wait_is_parked_and_answered_when_the_job_completes(ctx):
    hello(ctx)
    request(ctx, "enqueue", job={"id": "j1", "command": "true"})
    dispatch(ctx)
    [(_, job)] = sent(ctx, m.Dispatch)
    assert request(ctx, "wait", id="j1", hold=5) is PARKED
    assert sent(ctx, m.Reply) == []
    done = m.Result(token=job.token, outcome="ok", exit_code=0, detail="", started_at=T0,
                    finished_at=T0 + 0.5, pid=7)
    agent_handlers.HANDLERS[m.Result](ctx, AGENT, done, None)
    [(ident, reply)] = sent(ctx, m.Reply)
    assert ident == CLIENT and reply.result["done"] and reply.result["job"]["state"] == "completed"


def test_arguments_are_checked_against_the_declaration_before_the_handler_runs(ctx):
    with pytest.raises(SpecError, match="field 'id': has the wrong type"):
        request(ctx, "get", id=42)
    with pytest.raises(SpecError, match="field 'ids': must be a list of strings"):
        request(ctx, "wait_agents", ids=["a", 1])
    with pytest.raises(SpecError, match="field 'id': is required"):
        request(ctx, "cancel")


def test_every_declared_operation_has_a_handler_and_reads_only_declared_roles():
    assert admin.HANDLERS.keys() == ops.OPS.keys()
    read_only = {name for name, op in ops.OPS.items() if op.read_only}
    assert read_only == {"ping", "get", "list", "status", "metrics", "dlq_list", "config_show",
                         "config_get", "agents", "queue_list"}
    assert {"wait", "logs"} <= {name for name, op in ops.OPS.items() if op.role.value == "reader"}


# --- single iterations of the loop, with an injected clock ------------------------------

class Wire:
    """Stands in for the ROUTER socket and keeps what the broker sends."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send_multipart(self, parts: list[bytes], flags: int = 0) -> None:
        self.sent.append(parts)

    def messages(self, kind: type) -> list[Any]:
        return [msg for _, frame in self.sent for msg in decode_batch(frame)
                if isinstance(msg, kind)]


@pytest.fixture
def broker(store):
    broker = Broker(store, "inproc://unused")
    broker.socket = Wire()
    return broker


def frame(ident: bytes, msg: Any) -> tuple[bytes, bytes, None]:
    return ident, encode(msg), None


def test_an_agent_silent_for_a_lease_is_lost_and_its_job_fails_for_a_retry(broker, store):
    lease = broker.config["lease_sec"]
    hello_msg = m.Hello(agent_id="agent-1", host="h", pid=1, slots=1, labels={},
                        routing=AGENT.decode())
    enqueue = m.Request(req_id=1, op="enqueue", args={"job": {"id": "j1", "command": "sleep 9"}})
    broker.step([frame(AGENT, hello_msg), frame(CLIENT, enqueue)], now=(T0, 100.0))
    [dispatched] = broker.socket.messages(m.Dispatch)
    broker.step([frame(AGENT, m.Started(token=dispatched.token, pid=5, started_at=T0))],
                now=(T0 + 0.1, 100.1))

    broker.step([], now=(T0 + lease / 2, 100.0 + lease / 2))  # silent, but within its lease
    assert len(broker.agents) == 1 and store.job("j1").state.value == "processing"

    broker.step([], now=(T0 + lease + 1, 101.0 + lease))  # a whole lease without a word
    assert len(broker.agents) == 0
    job = store.job("j1")
    assert (job.state.value, job.last_error, job.attempts) == ("failed", "agent lost", 1)
    assert job.run_at > T0 + lease  # its retry waits for the backoff, from the iteration's clock


def test_a_request_in_an_iteration_is_answered_after_it_with_the_iterations_time(broker, store):
    enqueue = m.Request(req_id=7, op="enqueue",
                        args={"job": {"id": "j1", "command": "true", "delay": "10s"}})
    broker.step([frame(CLIENT, enqueue)], now=(T0, 50.0))
    [reply] = broker.socket.messages(m.Reply)
    assert reply.ok and reply.req_id == 7
    assert store.job("j1").run_at == T0 + 10
    unknown = m.Request(req_id=8, op="no_such_op", args={})
    broker.step([frame(CLIENT, unknown)], now=(T0 + 1, 51.0))
    reply = broker.socket.messages(m.Reply)[-1]
    assert (reply.ok, reply.error_code) == (False, ErrorCode.INVALID.value)


def test_a_restarted_broker_hands_leases_back_only_to_their_owner(ctx):
    """After a restart, the lease table holds the store's leases as orphans until
    the connection that owned them says Hello; another one cannot adopt them."""
    hello(ctx)
    request(ctx, "enqueue", job={"id": "j1", "command": "sleep 9"})
    dispatch(ctx)
    [(_, job)] = sent(ctx, m.Dispatch)
    restarted = Context(ctx.store, ctx.config, Clock(T0 + 5, 105.0))
    restarted.leases.resync()
    assert job.token in restarted.leases.orphans
    hello(restarted, OTHER, "agent-2", tokens=(job.token,))
    [(_, welcome)] = sent(restarted, m.Welcome)
    assert welcome.cancel == [job.token]  # not its lease: it is told to cancel it
    hello(restarted, tokens=(job.token,))
    [(_, welcome)] = sent(restarted, m.Welcome)
    conn, lease = restarted.agents.get(AGENT), restarted.store.lease(job.token)
    assert conn is not None and lease is not None
    assert welcome.cancel == [] and job.token in conn.inflight
    assert lease.owner == owner_of(AGENT, None)
