"""Bounded buffering of a job's output on the agent."""

from __future__ import annotations


class StreamBuffer:
    """The newest output of one stream, and how much of it was sent to the broker.

    Holds at most ``limit`` bytes, the newest: while the broker is away a job
    may print gigabytes, and the agent keeps only what would be stored anyway.
    Bytes stay held after they are sent, because a broker that crashes may
    not have stored them: when it comes back it says how far it got
    (``rewind``) and the agent sends the rest again. ``start`` is the stream
    position of the first byte held, so the broker sees a gap where bytes
    were dropped.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.start = 0
        self.data = bytearray()
        self._sent = 0

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    @property
    def sent(self) -> int:
        """Stream position up to which bytes were sent (or dropped unsent)."""
        return max(self._sent, self.start)

    def unsent(self) -> int:
        return self.end - self.sent

    def append(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.start += excess

    def dropped(self) -> bool:
        """Bytes after the last one sent were dropped unsent (the buffer overflowed)."""
        return self.start > self._sent

    def peek(self, max_bytes: int) -> tuple[int, bytes]:
        """Up to ``max_bytes`` of the unsent bytes, with the stream offset of the first."""
        begin = self.sent - self.start
        return self.sent, bytes(self.data[begin:begin + max_bytes])

    def mark_sent(self, count: int) -> None:
        self._sent = min(self.sent + count, self.end)

    def rewind(self, position: int) -> None:
        """The broker holds the stream up to ``position``: what follows is sent again."""
        self._sent = min(self._sent, max(position, 0))
