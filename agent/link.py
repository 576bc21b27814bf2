"""The agent's connection to the broker: one DEALER socket, two kinds of liveness.

* **Transport**: libzmq's ZMTP heartbeats (PING/PONG) and the socket monitor
  say whether the connection is up. The broker's libzmq I/O thread answers
  PINGs even while its loop is busy writing a big batch to SQLite, so a busy
  broker is not mistaken for a dead one. libzmq reconnects by itself, with
  exponential backoff from 100 ms to 5 s.
* **Session**: the broker knows this agent once it has answered Hello with
  Welcome. After every (re)connection the agent says Hello again: a broker
  that restarted adopts the agent's leases, or tells it to cancel them.

``unheard_for`` is how long the broker may have been unable to hear us: zero
while the transport is up (our heartbeats reach its queue and it reads them
before judging any lease), else the time since the broker was last heard.

Messages are queued and leave in one frame per loop iteration (``flush``,
called before the loop waits; several frames when that is more than one frame
may carry), so a result, the next job's start and a heartbeat cost one send.
While a frame that carried a result waits for its Ack, new messages wait too
(up to ``HOLD_MAX``), as Nagle's algorithm does for TCP: under load the results
of several jobs then share one frame and one commit of the broker, and an idle
agent still sends each result at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from queuectl.keys import ClientKeys, secure_client
from queuectl.proto import (
    MAX_FRAME,
    ProtocolError,
    VersionMismatch,
    batches,
    decode_batch,
    encode_batch,
)
from queuectl.proto import messages as m

log = logging.getLogger(__name__)

HELLO_RETRY = 2.0  # seconds between Hellos while connected but not welcomed
HOLD_MAX = 0.005   # seconds queued messages wait, at most, for the last result's Ack
# Sent without waiting for an Ack. Started too: the broker must hear that a job
# started before the job can do anything, such as kill this agent; a lease the
# broker never heard start is given back uncounted when its agent is lost.
URGENT = (m.Hello, m.Started, m.Reject, m.Drain, m.Bye)
REFUSED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | REFUSED
REFUSED_LOG_EVERY = 60.0  # seconds between two log lines about a refused handshake
# Handshakes cut in a row (NO_DETAIL) before we say the broker key may be wrong:
# a wrong key cuts every one, a broker restarting one at most.
CUT_HANDSHAKES = 3


class Link:
    def __init__(self, endpoint: str, identity: str, hello: Callable[[int], m.Hello],
                 keys: ClientKeys | None = None):
        self.endpoint = endpoint
        self.keys = keys
        self.refused_logged_at = -REFUSED_LOG_EVERY
        self.cut_handshakes = 0
        self.identity = identity.encode()
        self.hello = hello
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.socket: zmq.Socket[bytes] | None = None
        self.monitor: zmq.Socket[bytes] | None = None
        self.heartbeat = 0.0     # the ZMTP heartbeat the socket was opened with
        self.transport_up = False
        self.up = False          # welcomed by the broker
        self.last_heard = time.monotonic()
        self.last_sent = 0.0
        self.hello_at = -HELLO_RETRY
        self.hello_seq = 0       # of the latest Hello; only its Welcome counts
        self.outbox: list[object] = []  # sent at the next flush, in one frame
        self.unacked_since: float | None = None  # a frame with a result awaits its Ack

    def open(self, heartbeat: float) -> None:
        """(Re)create the socket; raises zmq.ZMQError for a malformed endpoint."""
        self.close(linger=0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        # A dead or cut-off broker is noticed within 2 heartbeats.
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(heartbeat * 1000)))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(heartbeat * 1000)))
        if "[" in self.endpoint:
            sock.setsockopt(zmq.IPV6, 1)
        secure_client(sock, self.keys)
        self.monitor = sock.get_monitor_socket(EVENTS)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError:
            self.socket = sock
            self.close(linger=0)
            raise
        self.socket, self.heartbeat = sock, heartbeat
        self.transport_up = self.up = False
        self.outbox.clear()  # a new connection starts with Hello; the rest is resent
        self.unacked_since = None

    def on_monitor(self, now: float) -> None:
        """Apply connection events from libzmq."""
        if self.monitor is None:  # closed: no events to apply
            return
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.cut_handshakes = 0
                log.info("connected to broker %s", self.endpoint)
                self.transport_up, self.up = True, False
                self.last_heard = now
                self.say_hello(now)  # the broker may be a new process
            elif event == zmq.EVENT_DISCONNECTED and self.transport_up:
                log.warning("lost the connection to broker %s; reconnecting", self.endpoint)
                self.transport_up = self.up = False
            elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and \
                    self.cut_handshakes + 1 < CUT_HANDSHAKES:
                self.cut_handshakes += 1
            elif event & REFUSED and now - self.refused_logged_at >= REFUSED_LOG_EVERY:
                # libzmq keeps retrying: the key may be allowed later.
                self.refused_logged_at = now
                if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    why = "it refused this agent's key (not on its allow-list, or revoked)"
                elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and self.keys is None:
                    why = "it needs CURVE keys (--key, --broker-key)"
                elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                    why = "it does not speak CURVE (it has no keys)"
                elif self.keys is None:  # libzmq reports a keyless peer either way
                    why = "the connection is cut during every handshake: it needs CURVE keys " \
                          "(--key, --broker-key)"
                else:
                    why = ("the connection is cut during every handshake: check that "
                           "--broker-key is this broker's broker.key")
                log.error("the handshake with broker %s failed: %s; retrying", self.endpoint, why)

    def say_hello(self, now: float) -> None:
        self.hello_at = now
        self.hello_seq += 1
        self._send(self.hello(self.hello_seq))

    def rehello(self, now: float) -> None:
        """The session is in doubt: act on nothing until a new Hello is answered.
        A Hello sent less than a heartbeat ago is still on its way; ``tick``
        repeats it if no answer comes."""
        self.up = False
        if self.transport_up and now - self.hello_at >= self.heartbeat:
            self.say_hello(now)

    def tick(self, now: float) -> None:
        if self.transport_up and not self.up and now - self.hello_at >= HELLO_RETRY:
            self.say_hello(now)

    def welcomed(self) -> None:
        self.up = True

    def unheard_for(self, now: float) -> float:
        return 0.0 if self.transport_up else now - self.last_heard

    def send(self, msg: object) -> bool:
        """Queue ``msg`` if the broker has welcomed us; False means the caller must hold it."""
        if not self.up:
            return False
        self.outbox.append(msg)
        return True

    def _send(self, msg: object) -> bool:
        """Send now (Hello), after whatever is queued."""
        self.outbox.append(msg)
        return self.flush()

    def acked(self) -> None:
        """An Ack arrived: what waits for it may go."""
        self.unacked_since = None

    def hold_until(self) -> float | None:
        """When queued messages must leave although no Ack came (None: nothing held)."""
        if self.outbox and self.unacked_since is not None:
            return self.unacked_since + HOLD_MAX
        return None

    def flush(self) -> bool:
        """Send the queued messages in one frame, unless they wait for an Ack; False
        if libzmq would block (they stay queued)."""
        if not self.outbox or self.socket is None:
            return True
        now = time.monotonic()
        if (self.unacked_since is not None and now - self.unacked_since < HOLD_MAX
                and not any(isinstance(msg, URGENT) for msg in self.outbox)):
            return True
        groups = batches(self.outbox)
        for sent, group in enumerate(groups):
            try:
                self.socket.send(encode_batch(group), zmq.NOBLOCK)
            except zmq.Again:
                self.outbox = [msg for rest in groups[sent:] for msg in rest]
                return False
            if any(isinstance(msg, m.Result) for msg in group):
                self.unacked_since = now
            self.last_sent = now
        self.outbox.clear()
        return True

    def receive(self) -> list[object]:
        """Every message waiting on the socket; malformed frames are logged and dropped."""
        messages: list[object] = []
        if self.socket is None:  # closed: nothing waits
            return messages
        while True:
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return messages
            self.last_heard = time.monotonic()
            try:
                messages.extend(decode_batch(frame))
            except VersionMismatch as exc:
                messages.append(m.Error(code="version", message=f"broker: {exc}"))
            except ProtocolError as exc:
                log.warning("dropped a malformed frame from the broker: %s", exc)

    def close(self, linger: float = 2.0) -> None:
        """Close, giving queued messages (the final Bye) ``linger`` seconds."""
        if self.socket is not None and linger > 0:
            self.flush()
        if self.monitor is not None:
            if self.socket is not None:  # it is: open() makes the monitor from the socket
                self.socket.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        if self.socket is not None:
            self.socket.close(linger=int(linger * 1000))
            self.socket = None
        self.transport_up = self.up = False
