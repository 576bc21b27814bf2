"""Request and reply with a broker: the client's socket, its timeouts, its errors.

One DEALER socket with request ids (the ZeroMQ guide's Lazy Pirate client):
a reply that does not come in time closes the socket, so a late reply can
never be taken for the answer to a later request. A request that may take
long (one the broker parks, or a big batch) is preceded by a ping, so that a
missing broker is still reported within ``timeout`` seconds (exit code 3).
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import zmq

from queuectl.keys import ClientKeys, KeyFileError, client_keys, secure_client
from queuectl.proto import (
    MAX_FRAME,
    VERSION,
    ErrorCode,
    ProtocolError,
    VersionMismatch,
    decode,
    encode,
    ops,
)
from queuectl.proto import messages as m

DEFAULT_BROKER = "tcp://127.0.0.1:5555"
DEFAULT_TIMEOUT = 5.0
SLOW_RATE = 10_000     # jobs a second that even a slow broker stores or lists
MAX_ITEMS = 10_000_000  # no request is about more jobs than this (the broker refuses it)
PING_ABOVE = 1.0       # requests that may take longer than this are preceded by a ping...
PING_FRESH = 1.0       # ...unless the broker answered on this connection this recently
RECONNECT_BUDGET = 30.0  # seconds a wait without a deadline rides out a missing broker
T = TypeVar("T")


class QueueError(Exception):
    exit_code = 1


class InvalidInput(QueueError):
    exit_code = 2


class NotFound(QueueError):
    pass


class Conflict(QueueError):
    pass


class BrokerUnreachable(QueueError):
    exit_code = 3


class ProtocolMismatch(QueueError):
    pass


class BrokerError(QueueError):
    pass


class Refused(QueueError):
    """The broker refused this client's key, or the request for its role."""


class Unavailable(BrokerError):
    """The broker cannot serve the request now: it is stopping, or its store
    cannot write. The same request may work later."""


# Keyed by a Reply's error_code, which may be None (the lookup then gives the default).
ERRORS: dict[str | None, type[QueueError]] = {
    ErrorCode.INVALID: InvalidInput, ErrorCode.NOT_FOUND: NotFound, ErrorCode.CONFLICT: Conflict,
    ErrorCode.VERSION: ProtocolMismatch, ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.FORBIDDEN: Refused}
# Handshake failures the socket monitor reports: the peers' keys do not match.
# AUTH (the broker refused our key) and PROTOCOL (we speak no CURVE, it does)
# are certain. NO_DETAIL is a connection cut during the handshake: what a wrong
# broker key looks like, again at every retry, but also a broker restarting.
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
CUT_HANDSHAKES = 3  # cut handshakes, with keys and no answer, that mean a wrong broker key


# A signal that lands just before a blocking poll starts does not interrupt it
# (Python runs handlers between bytecodes), so waits are polled in slices:
# Ctrl-C during a long `wait` or `logs --follow` takes effect within one slice.
POLL_SLICE = 0.5


def default_endpoint() -> str:
    return os.environ.get("QUEUECTL_BROKER") or DEFAULT_BROKER


def default_timeout() -> float:
    """``QUEUECTL_TIMEOUT`` in seconds, else 5. Raises InvalidInput unless it is a number > 0."""
    text = os.environ.get("QUEUECTL_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"QUEUECTL_TIMEOUT must be a number of seconds greater than 0, "
                           f"got {text[:40]!r}")
    return value


def size_allowance(items: int) -> float:
    """Extra seconds a slow broker may need for a request about ``items`` jobs."""
    return min(max(0, items), MAX_ITEMS) / SLOW_RATE


class Connection:
    def __init__(self, endpoint: str | None = None, timeout: float | None = None, *,
                 key: str | None = None, broker_key: str | None = None):
        self.endpoint = endpoint or default_endpoint()
        self.timeout = default_timeout() if timeout is None else timeout
        self.answered = False  # a broker has answered this connection at least once
        self.answered_at = -PING_FRESH  # monotonic time of the latest answer
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._poller: zmq.Poller | None = None
        self._failures: list[int] = []  # handshake failures on this socket
        self._key_files = (key, broker_key)
        self._keys: ClientKeys | None = None
        self._keys_read = False
        self._ids = itertools.count(1)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.disable_monitor()
            if self._monitor is not None:  # it is: _connect opens both
                self._monitor.close(linger=0)
            self._socket.close(linger=0)
            self._socket = self._monitor = None

    def _curve(self) -> ClientKeys | None:
        """This client's CURVE keys (read once), or None to connect without."""
        if not self._keys_read:
            try:
                self._keys = client_keys(*self._key_files)
            except KeyFileError as exc:
                raise InvalidInput(str(exc)) from None
            self._keys_read = True
        return self._keys

    def _connect(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
            if "[" in self.endpoint:
                sock.setsockopt(zmq.IPV6, 1)
            try:
                secure_client(sock, self._curve())
                monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
            except BaseException:
                sock.close(linger=0)
                raise
            try:
                sock.connect(self.endpoint)
            except zmq.ZMQError as exc:
                sock.disable_monitor()
                monitor.close(linger=0)
                sock.close(linger=0)
                raise InvalidInput(f"bad broker endpoint {self.endpoint!r}: {exc}") from None
            self._socket, self._monitor = sock, monitor
            self._poller = zmq.Poller()
            self._poller.register(sock, zmq.POLLIN)
            self._poller.register(monitor, zmq.POLLIN)
            self._failures = []
        return self._socket

    def _refusal(self, final: bool) -> str | None:
        """Why the handshake with the broker failed, if the monitor saw it fail for
        certain. Cut handshakes count only once the request has timed out
        (``final``), and several of them: a broker restarting cuts one, and its
        clients must go on waiting (``survive_restarts``)."""
        # Imported here: it loads asyncio (25 ms), and the CLI starts fast.
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor is not None:  # None: closed, nothing more to read
            try:
                self._failures.append(recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"])
            except zmq.Again:
                break
        cut = self._failures.count(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL) >= CUT_HANDSHAKES
        if self._curve() is None and (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL in self._failures
                                      or (final and cut)):  # libzmq reports it either way
            return (f"the broker at {self.endpoint} requires CURVE keys: set QUEUECTL_KEY "
                    "(this client's .key_secret) and QUEUECTL_BROKER_KEY (the broker's broker.key)")
        if zmq.EVENT_HANDSHAKE_FAILED_AUTH in self._failures:
            return (f"the broker at {self.endpoint} refused this client's key (not on its "
                    "allow-list, or revoked): ask its admin for one (queuectl keys add-client)")
        if zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL in self._failures or (final and cut):
            return (f"the CURVE handshake with {self.endpoint} failed: check that "
                    "QUEUECTL_BROKER_KEY is this broker's broker.key, and that it uses CURVE")
        return None

    def call(self, op: str, hold: float = 0.0, extra: float = 0.0, **args: Any) -> Any:
        """One admin request; returns its result or raises its error.

        ``hold`` is how long the broker may park the request (``wait``,
        ``logs --follow``); ``extra`` is time the work itself may take.
        """
        if hold:
            args["hold"] = hold
        req_id, frame = self._request(op, args)
        if hold + extra > PING_ABOVE:
            # A long request first proves a broker is there (a ping fails within
            # `timeout`), unless one answered a moment ago: enqueue then wait
            # saves a round trip.
            if time.monotonic() - self.answered_at > PING_FRESH:
                self.call("ping")
            try:
                return self._exchange(frame, req_id, self.timeout + hold + extra)
            except BrokerUnreachable:
                raise BrokerUnreachable(
                    f"the broker at {self.endpoint} answered just before but not the {op} request "
                    f"within {self.timeout + hold + extra:.0f}s; it may still complete it, "
                    "so check before retrying") from None
        return self._exchange(frame, req_id, self.timeout)

    def submit(self, op: str, extra: float = 0.0, **args: Any) -> Callable[[], Any]:
        """Send a short request now; returns a function that waits for its reply
        (or raises its error), so the caller can work meanwhile. Waiting for a
        later request skips this reply: collect it first."""
        req_id, frame = self._request(op, args)
        self._connect().send(frame)
        return lambda: self._await(req_id, self.timeout + extra)

    def _request(self, op: str, args: dict[str, Any]) -> tuple[int, bytes]:
        declared = ops.OPS.get(op)
        if declared is None:
            raise InvalidInput(f"unknown operation {op!r} (see queuectl/proto/ops.py)")
        unknown = sorted(args.keys() - set(ops.argument_names(declared)))
        if unknown:
            raise InvalidInput(f"the {op} operation takes no argument {unknown[0]!r}")
        req_id = next(self._ids)
        try:
            frame = encode(m.Request(req_id=req_id, op=op, args=args))
        except UnicodeEncodeError:
            raise InvalidInput("an argument is not valid UTF-8 text") from None
        except (OverflowError, ValueError) as exc:  # msgpack: ints beyond 64 bits, deep nesting
            raise InvalidInput(f"an argument cannot be sent: {exc}") from None
        if len(frame) > MAX_FRAME:
            raise InvalidInput(f"the request is {len(frame)} bytes, more than the {MAX_FRAME} "
                               "bytes one message may carry; split it into smaller batches")
        return req_id, frame

    def _exchange(self, frame: bytes, req_id: int, wait: float) -> Any:
        self._connect().send(frame)
        return self._await(req_id, wait)

    def _await(self, req_id: int, wait: float) -> Any:
        sock = self._connect()
        poller = self._poller
        assert poller is not None  # _connect made it with the socket
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                refusal = self._refusal(final=True)
                self.close()
                if refusal:
                    raise Refused(refusal)
                raise BrokerUnreachable(
                    f"no broker answered at {self.endpoint} within {wait:g}s "
                    "(is queuectl-broker running? set --broker or QUEUECTL_BROKER)")
            events = dict(poller.poll(int(min(remaining, POLL_SLICE) * 1000) + 1))
            if self._monitor in events:
                refusal = self._refusal(final=False)
                if refusal:
                    self.close()
                    raise Refused(refusal)
            if sock not in events:
                continue
            reply = self._decode(sock.recv())
            self.answered, self.answered_at = True, time.monotonic()
            if isinstance(reply, m.Reply) and reply.req_id == req_id:
                if reply.ok:
                    return reply.result
                raise ERRORS.get(reply.error_code, BrokerError)(reply.error or "broker error")

    def _decode(self, frame: bytes) -> Any:
        try:
            msg = decode(frame)
        except VersionMismatch as exc:
            raise ProtocolMismatch(f"the broker at {self.endpoint} speaks protocol version "
                                   f"{exc.peer_version!r}; this client speaks {VERSION}. "
                                   "Install matching QueueCTL versions.") from None
        except ProtocolError as exc:
            raise BrokerError(f"malformed reply from {self.endpoint}: {exc}") from None
        if isinstance(msg, m.Error):
            raise ERRORS.get(msg.code, BrokerError)(msg.message)
        return msg

    def survive_restarts(self, attempt: Callable[[], T], deadline: float | None = None) -> T:
        """Run an idempotent request until it is answered, across broker restarts.

        While the broker is missing or stopping, reconnect with backoff and send
        it again, until ``deadline`` (monotonic) or, without one, for
        RECONNECT_BUDGET seconds of continuous failure. A broker that never
        answered this connection is reported at once, like any other request.
        """
        failing_since: float | None = None
        pause = 0.05
        while True:
            try:
                return attempt()
            except (BrokerUnreachable, Unavailable) as exc:
                if not self.answered:
                    raise
                self.close()
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                give_up = failing_since + RECONNECT_BUDGET if deadline is None else deadline
                if now >= give_up:
                    raise type(exc)(f"gave up waiting: {exc}") from None
                time.sleep(min(pause, give_up - now))  # backoff between reconnections
                pause = min(pause * 2, 1.0)
