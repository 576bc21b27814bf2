"""Bounded buffering of a job's output on the agent."""

from __future__ import annotations


class StreamBuffer:
    """Output of one stream that the broker has not received yet.

    Holds at most ``limit`` bytes, the newest: while the broker is away a job
    may print gigabytes, and the agent keeps only what would be stored anyway.
    ``offset`` is the stream position of the first byte held, so the broker
    sees the gap when bytes were dropped.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.offset = 0
        self.data = bytearray()

    def __len__(self) -> int:
        return len(self.data)

    def append(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.offset += excess

    def peek(self, max_bytes: int, start: int = 0) -> tuple[int, bytes]:
        """Up to ``max_bytes`` from position ``start`` of what is held, with its stream offset."""
        return self.offset + start, bytes(self.data[start:start + max_bytes])

    def consume(self, count: int) -> None:
        """Forget the first ``count`` bytes (they were sent)."""
        count = min(count, len(self.data))
        del self.data[:count]
        self.offset += count
