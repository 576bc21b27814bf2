"""A fake agent for tests that play a hostile (or merely odd) peer.

It is a raw ZeroMQ DEALER speaking ``queuectl.proto``, nothing more: it says
whatever a test tells it to, with any agent id, socket identity and values,
so a test can try what an attacker holding some key could try. It runs no
commands.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from queuectl.proto import decode_batch, encode_batch
from queuectl.proto import messages as m


class FakeAgent:
    def __init__(self, endpoint: str, agent_id: str | None = None, *, routing: str | None = None,
                 slots: int = 1, labels: dict | None = None, host: str = "fake",
                 curve: tuple[bytes, bytes, bytes] | None = None,
                 context: zmq.Context | None = None):
        """``curve`` is (public, secret, server public) in z85, for a broker with keys;
        ``context`` a ZeroMQ context of the test's own (thousands of fake agents)."""
        self.agent_id = agent_id or f"fake-{secrets.token_hex(4)}"
        self.routing = (routing if routing is not None
                        else f"{self.agent_id}/{secrets.token_hex(16)}")
        self.slots, self.labels, self.host = slots, labels or {}, host
        self.seq = 0
        self.pings = 0
        self.inbox: list[Any] = []
        self.socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if self.routing:
            self.socket.setsockopt(zmq.IDENTITY, self.routing.encode())
        if curve is not None:
            self.socket.curve_publickey, self.socket.curve_secretkey, \
                self.socket.curve_serverkey = curve
        self.socket.connect(endpoint)

    def send(self, *msgs: Any) -> None:
        """``msgs`` in one frame, as a real agent batches them."""
        self.socket.send(encode_batch(list(msgs)))

    def hello(self, tokens: Sequence[int] = (), **fields: Any) -> None:
        self.seq += 1
        body: dict[str, Any] = {
            "agent_id": self.agent_id, "host": self.host, "pid": 4242, "slots": self.slots,
            "labels": self.labels, "tokens": list(tokens), "seq": self.seq, "routing": self.routing}
        body.update(fields)
        self.send(m.Hello(**body))

    def receive(self, timeout: float = 0.0) -> list[Any]:
        """What waits now, or else the first frame that arrives within ``timeout`` seconds."""
        got: list[Any] = []
        wait = int(timeout * 1000)
        while self.socket.poll(wait):
            got.extend(decode_batch(self.socket.recv()))
            wait = 0
        self.inbox.extend(got)
        return got

    def expect(self, kind: type, where: Callable[[Any], bool] = lambda msg: True,
               timeout: float = 10.0) -> Any:
        """The first message of ``kind`` (received now or before) for which ``where`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.inbox:
                if isinstance(msg, kind) and where(msg):
                    self.inbox.remove(msg)
                    return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = ", ".join(type(msg).__name__ for msg in self.inbox) or "nothing"
                raise AssertionError(f"no {kind.__name__} within {timeout}s (got {seen})")
            self.receive(min(remaining, 0.1))

    def welcomed(self, timeout: float = 10.0) -> m.Welcome:
        return self.expect(m.Welcome, lambda msg: msg.hello_seq == self.seq, timeout)

    def refused(self, timeout: float = 10.0) -> m.Error:
        """The Error the broker answers a refused Hello or message with."""
        return self.expect(m.Error, timeout=timeout)

    def settled(self, timeout: float = 10.0) -> None:
        """Return once the broker has handled everything this connection sent: a
        ping behind it on the same connection is answered after it."""
        self.pings += 1
        req_id = 2**62 + self.pings
        self.send(m.Request(req_id=req_id, op="ping", args={}))
        self.expect(m.Reply, lambda msg: msg.req_id == req_id, timeout)

    def close(self) -> None:
        self.socket.close(linger=0)
