"""The agent's connection to the broker: a DEALER socket, Hello, liveness.

Shaped like the ZeroMQ guide's Paranoid Pirate worker: any frame from the
broker proves it is alive. After ``3 x heartbeat`` of silence the agent
recreates its socket (dropping anything queued for the dead broker) and says
Hello again, with exponential backoff between tries. Until a Welcome comes
back the link is down and ``send`` refuses, so the caller holds its results.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import zmq

from queuectl.proto import MAX_FRAME, ProtocolError, VersionMismatch, decode, encode
from queuectl.proto import messages as m

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0


class Link:
    def __init__(self, endpoint: str, identity: str, hello: Callable[[], m.Hello]):
        self.endpoint = endpoint
        self.identity = identity.encode()
        self.hello = hello
        self.ctx = zmq.Context.instance()
        self.socket: zmq.Socket | None = None
        self.up = False
        self.last_heard = time.monotonic()
        self.last_sent = 0.0
        self.backoff = BACKOFF_FIRST
        self.retry_at = 0.0

    def connect(self, now: float) -> None:
        """(Re)create the socket and say Hello; a Welcome will bring the link up."""
        if self.socket is not None:
            self.socket.close(linger=0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        if "[" in self.endpoint:
            sock.setsockopt(zmq.IPV6, 1)
        sock.connect(self.endpoint)
        self.socket = sock
        self.up = False
        self.retry_at = now + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        self._send(self.hello())

    def welcomed(self) -> None:
        if not self.up:
            log.info("connected to broker %s", self.endpoint)
        self.up = True
        self.backoff = BACKOFF_FIRST

    def needs_reconnect(self, now: float, heartbeat: float) -> bool:
        if self.up:
            if now - self.last_heard > 3 * heartbeat:
                log.warning("broker %s silent for %.1fs; reconnecting", self.endpoint,
                            now - self.last_heard)
                return True
            return False
        return now >= self.retry_at

    def send(self, msg: object) -> bool:
        """Send if the link is up; False means the caller must hold the message."""
        return self.up and self._send(msg)

    def _send(self, msg: object) -> bool:
        try:
            self.socket.send(encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.last_sent = time.monotonic()
        return True

    def receive(self) -> list[object]:
        """Every message waiting on the socket; malformed frames are logged and dropped."""
        messages = []
        while True:
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return messages
            self.last_heard = time.monotonic()
            try:
                messages.append(decode(frame))
            except VersionMismatch as exc:
                messages.append(m.Error(code="version", message=f"broker: {exc}"))
            except ProtocolError as exc:
                log.warning("dropped a malformed frame from the broker: %s", exc)

    def close(self, linger: float = 2.0) -> None:
        """Close for good, giving queued messages (the final Bye) ``linger`` seconds."""
        if self.socket is not None:
            self.socket.close(linger=int(linger * 1000))
            self.socket = None
