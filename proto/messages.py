"""Every message that crosses the wire, one frozen dataclass each.

Agents and admin clients talk to the broker's single ROUTER socket.
Agent -> broker: Hello, Started, Output, Result, Heartbeat, Drain, Reject, Bye.
Broker -> agent: Welcome, Dispatch, Cancel, Revoke, Ack, Heartbeat, Stop, Error.
Client <-> broker: Request and Reply (admin operations by name).
A *token* is the id of one attempt: the lease that fences stale results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .codec import message

if TYPE_CHECKING:
    # A list field left at its default holds (), as a frozen dataclass takes no
    # mutable default. Only mypy sees this union: at run time the annotation is
    # the plain ``list`` that the codec (and the tests) read as the wire schema.
    Array = list[Any] | tuple[()]
else:
    Array = list

STDOUT = 1
STDERR = 2


# --- agent -> broker -------------------------------------------------------

@message("hello")
class Hello:
    agent_id: str
    host: str
    pid: int
    slots: int
    labels: dict
    # Attempts this agent still runs or holds an unacknowledged result for;
    # after a reconnect the broker adopts them or tells the agent to cancel.
    tokens: Array = ()
    # Counts this agent's Hellos; the Welcome echoes it, so an answer to an
    # older Hello (several can be in flight) is recognised and ignored.
    seq: int = 0
    # The agent's socket identity: its id plus a secret part, which no one
    # else learns, so no other peer can claim the identity and take its jobs.
    # Empty: the identity is the agent id (agents before protocol v3.1).
    routing: str = ""


@message("started")
class Started:
    token: int
    pid: int
    started_at: float


@message("output")
class Output:
    token: int
    stream: int
    offset: int  # byte offset of ``data`` within the stream
    data: bytes
    # True when the agent dropped the bytes before ``offset`` (its buffer was
    # full): the broker accepts the gap. Otherwise a chunk that starts past
    # what the broker stored is refused and the agent is told to rewind.
    gap: bool = False


@message("result")
class Result:
    token: int
    outcome: str  # one of proto.states.Outcome
    exit_code: int | None
    detail: str
    started_at: float | None
    finished_at: float
    # Where stdout and stderr ended: the broker applies the result only once it
    # has stored the output up to there (else it asks for a resend first).
    stdout_end: int = 0
    stderr_end: int = 0
    # The process id, also in Started; the Result repeats it for a broker that
    # missed the Started (a failed store batch).
    pid: int | None = None


@message("heartbeat")
class Heartbeat:
    pass


@message("drain")
class Drain:
    """The agent takes no new jobs (it is stopping)."""


@message("reject")
class Reject:
    """A dispatched job the agent will not start (no room, draining, or revoked)."""

    token: int


@message("bye")
class Bye:
    pass


# --- broker -> agent -------------------------------------------------------

@message("welcome")
class Welcome:
    heartbeat_sec: float
    lease_sec: float
    kill_grace_sec: float
    output_limit: int
    cancel: Array = ()  # tokens from Hello that the broker no longer leases to this agent
    # [token, stdout_end, stderr_end] for the other tokens from Hello: how far
    # the broker stored their output; the agent resends what follows.
    offsets: Array = ()
    hello_seq: int = 0  # the ``seq`` of the Hello this answers


@message("dispatch")
class Dispatch:
    token: int
    job_id: str
    attempt: int
    command: str
    timeout_sec: float
    env: dict | None = None
    cwd: str | None = None


@message("cancel")
class Cancel:
    token: int
    reason: str


@message("revoke")
class Revoke:
    """Give back a dispatched job if it has not started (answered with Reject)."""

    token: int


@message("ack")
class Ack:
    tokens: list  # results stored: the agent may forget them
    # Bytes of Output received since the last Ack: the agent keeps at most a
    # window of output unacknowledged, so a fast printer cannot fill the queues.
    output_bytes: int = 0
    # [token, stream, stored_end] for chunks refused because one before them
    # was lost (a failed batch): the agent resends from stored_end.
    rewind: Array = ()


@message("stop")
class Stop:
    pass


@message("error")
class Error:
    code: str
    message: str


# --- admin client <-> broker -----------------------------------------------

@message("request")
class Request:
    req_id: int
    op: str
    args: dict


@message("reply")
class Reply:
    req_id: int
    ok: bool
    result: Any = None
    error_code: str | None = None
    error: str | None = None
