"""The trust boundary for agents: every agent message is checked here, once.

The codec already guarantees each field's type. This module checks what a
type cannot: sizes and ranges (a Hello's labels and tokens, process ids,
exit codes, stream offsets), that times are times (a finite value near the
broker's own clock; anything else is replaced by the broker's time and
logged), and that a connection speaks only of attempts leased to it.

A connection is known by its **owner**: a digest of its socket identity
(which carries a secret only the agent knows) and, with CURVE, of its key.
Every attempt records the owner it was leased to, so after a broker restart
only the same agent, over the same key, can adopt it, and no peer that merely
knows an agent's id (anyone can read it in ``queuectl agents``) can report
its results or its output. Free text (a result's detail) reaches users with
its control characters escaped. Handlers receive only checked values.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import NamedTuple

from queuectl.escape import has_control, visible
from queuectl.proto import messages as m

log = logging.getLogger(__name__)

MAX_SLOTS = 10_000
MAX_ID = 256           # characters of an agent id, a host name
MAX_LABELS = 64
MAX_LABEL_KEY = 128
MAX_LABEL_VALUE = 256
MAX_LABEL_CHARS = 4096  # names and values of one agent's labels, in all
ROUTING = range(17, 256)  # bytes of a socket identity: libzmq's limit, and room for a secret
MAX_PID = 2**31 - 1
EXIT_CODES = range(-255, 256)  # a status (0-255) or a signal (negative, from subprocess)
MAX_OFFSET = 2**48     # bytes into one stream: far beyond any output limit
# Clocks of other hosts may be off by this much (seconds) before the broker
# stops believing their times.
CLOCK_SKEW = 300.0
LOG_EVERY = 60.0  # seconds between two warnings about one agent


def owner_of(ident: bytes, key_name: str | None) -> bytes:
    """The owner digest of a connection. Hashed, so the store (and every copy of
    it) never holds the secret part of an agent's socket identity."""
    return hashlib.blake2b(ident + b"\0" + (key_name or "").encode(), digest_size=16).digest()


def peer_name(ident: bytes) -> str:
    """How logs name a peer: the public part of an agent's identity (before the
    secret), or a short hex prefix of another identity."""
    name, slash, _ = ident.partition(b"/")
    if slash and name:
        return repr(name[:64].decode(errors="replace"))[1:-1]  # control characters escaped
    return ident.hex()[:12]


def _bad_text(name: str, value: str, limit: int, empty_ok: bool = False) -> str | None:
    if not value and not empty_ok:
        return f"{name} must not be empty"
    if len(value) > limit:
        return f"{name} must be at most {limit} characters"
    if has_control(value):
        return f"{name} must not contain control characters"
    return None


def hello_problem(msg: m.Hello) -> str | None:
    """Why ``msg`` cannot be accepted from any connection, or None."""
    problem = (_bad_text("agent_id", msg.agent_id, MAX_ID)
               or _bad_text("host", msg.host, MAX_ID, empty_ok=True))
    if problem:
        return problem
    routing = msg.routing.encode()
    if len(routing) not in ROUTING or msg.routing == msg.agent_id:
        return ("routing must be the agent's own socket identity: "
                f"{ROUTING.start}-{ROUTING.stop - 1} bytes that include a secret, not its id "
                "(upgrade the agent)")
    if not 1 <= msg.slots <= MAX_SLOTS:
        return f"slots must be from 1 to {MAX_SLOTS}"
    if not 0 <= msg.pid <= MAX_PID:
        return "pid is out of range"
    if len(msg.labels) > MAX_LABELS:
        return f"at most {MAX_LABELS} labels"
    if sum(len(k) + len(v) for k, v in msg.labels.items()
           if isinstance(k, str) and isinstance(v, str)) > MAX_LABEL_CHARS:
        return f"labels must hold at most {MAX_LABEL_CHARS} characters in all"
    for key, value in msg.labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return "labels must map strings to strings"
        problem = (_bad_text("a label name", key, MAX_LABEL_KEY)
                   or _bad_text("a label value", value, MAX_LABEL_VALUE, empty_ok=True))
        if problem:
            return problem
    # Running, held ahead (prefetch: two per slot) and results not yet acknowledged.
    if len(msg.tokens) > 3 * msg.slots:
        return "more tokens than the agent can hold (3 per slot)"
    if not all(type(t) is int and 0 < t < 2**63 for t in msg.tokens):
        return "tokens must be attempt tokens (positive 64-bit integers)"
    return None


class Lease(NamedTuple):
    """What the store knows of an attempt that a connection speaks about."""

    owner: bytes | None
    dispatched_at: float
    started_at: float | None
    stdout_end: int
    stderr_end: int


class Intake:
    """Checks the values of agent messages against the broker's clock. What it
    logs about a peer (a replaced time, a refused Hello, a malformed frame) it
    logs at most once a minute per peer: a peer can send thousands a second."""

    def __init__(self) -> None:
        self._logged: dict[str, float] = {}

    def warn(self, peer: str, text: str, *args: object) -> None:
        """Log a warning about ``peer`` (an agent id or a peer's name), unless one
        was logged for it in the last minute."""
        now = time.monotonic()
        if now - self._logged.get(peer, -LOG_EVERY) >= LOG_EVERY:
            if len(self._logged) > 10_000:  # one entry per peer: bounded
                self._logged.clear()
            self._logged[peer] = now
            log.warning(text, *args)

    def time(self, value: float | None, now: float, earliest: float, agent_id: str,
             what: str) -> float | None:
        """``value`` if it is a time between ``earliest`` and now (give or take the
        skew allowed between hosts), else None (the caller uses its own)."""
        if value is None:
            return None
        if math.isfinite(value) and earliest - CLOCK_SKEW <= value <= now + CLOCK_SKEW:
            return value
        self.warn(agent_id, "agent %s reported %s %r, which is not a time near the broker's "
                  "clock; the broker's own time is used instead", agent_id, what, value)
        return None

    def started(self, msg: m.Started, earliest: float, now: float, agent_id: str) -> m.Started:
        """``msg`` with a start time the broker believes and a real process id. A
        Started comes over the connection its job was dispatched on, so the job
        started after ``earliest``, when that connection said Hello."""
        started_at = self.time(msg.started_at, now, earliest, agent_id, "started_at")
        pid = msg.pid if 0 < msg.pid <= MAX_PID else 0
        if started_at is None or pid != msg.pid:
            return m.Started(token=msg.token, pid=pid, started_at=now if started_at is None
                             else started_at)
        return msg

    def result(self, msg: m.Result, lease: Lease, now: float, agent_id: str) -> m.Result:
        """``msg`` with times, exit code, pid and stream ends the broker can store
        and show: times are finite and ordered, numbers in range."""
        finished_at = self.time(msg.finished_at, now, lease.dispatched_at, agent_id,
                                "finished_at")
        finished_at = now if finished_at is None else finished_at
        started_at = self.time(msg.started_at, now, lease.dispatched_at, agent_id, "started_at")
        if started_at is None:
            started_at = lease.started_at
        if started_at is not None and started_at > finished_at:
            started_at = finished_at
        exit_code = msg.exit_code if msg.exit_code in EXIT_CODES else None
        pid = msg.pid if msg.pid is not None and 0 < msg.pid <= MAX_PID else None
        detail = visible(msg.detail[:1000])  # it reaches terminals and logs
        if exit_code is None and msg.exit_code is not None:
            detail = detail or f"the agent reported exit code {str(msg.exit_code)[:24]}"
        return m.Result(token=msg.token, outcome=msg.outcome[:40], exit_code=exit_code,
                        detail=detail, started_at=started_at, finished_at=finished_at,
                        stdout_end=min(max(0, msg.stdout_end), MAX_OFFSET),
                        stderr_end=min(max(0, msg.stderr_end), MAX_OFFSET), pid=pid)


def output_problem(msg: m.Output) -> str | None:
    if msg.stream not in (m.STDOUT, m.STDERR):
        return "a bad stream"
    if not 0 <= msg.offset <= MAX_OFFSET - len(msg.data):
        return "a bad offset"
    return None
