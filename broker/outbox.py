"""What one iteration of the loop will send, held until its transaction commits.

Handlers never touch the socket: they queue messages here. The loop sends them
after the commit (group commit), so no peer hears of a change that a crash
could undo, and a failed commit throws them away (``discard``). What one
iteration has for an agent leaves in one frame: its acknowledgements (results
stored, output received, output to send again) are gathered into one ``Ack``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from queuectl.proto import ErrorCode
from queuectl.proto import messages as m


class Outbox:
    def __init__(self) -> None:
        self._messages: list[tuple[bytes, Any]] = []
        self._acks: dict[bytes, list[int]] = defaultdict(list)
        self._output_received: dict[bytes, int] = defaultdict(int)
        self._rewinds: dict[bytes, dict[tuple[int, int], int]] = defaultdict(dict)

    def __len__(self) -> int:
        return len(self._messages)

    def send(self, ident: bytes, msg: Any) -> None:
        self._messages.append((ident, msg))

    def reply(self, ident: bytes, req_id: int, result: Any,
              code: ErrorCode | None = None, error: str | None = None) -> None:
        self.send(ident, m.Reply(req_id=req_id, ok=code is None, result=result,
                                 error_code=code.value if code else None, error=error))

    def ack(self, ident: bytes, token: int) -> None:
        """The result of attempt ``token`` is stored: the agent may forget it."""
        self._acks[ident].append(token)

    def ack_output(self, ident: bytes, size: int) -> None:
        """Output received (stored or not): it frees the agent's send window. Kept
        apart from the acks, which a failed batch takes back."""
        self._output_received[ident] += size

    def rewind_output(self, ident: bytes, token: int, stream: int, stored_end: int) -> None:
        """A chunk came after one that was lost (its batch failed): ask for a resend."""
        self._rewinds[ident][(token, stream)] = stored_end

    def mark(self) -> int:
        return len(self._messages)

    def rollback(self, mark: int) -> None:
        """Forget what was queued since ``mark`` (a handler that failed)."""
        del self._messages[mark:]

    def discard(self) -> None:
        """The iteration's transaction failed: nothing it would say stands.
        Output received still frees the window; asked resends still hold."""
        self._messages.clear()
        self._acks.clear()

    def take(self) -> dict[bytes, list[Any]]:
        """Everything queued, by peer in the order queued, each agent's ``Ack`` last."""
        for ident in self._acks.keys() | self._output_received.keys() | self._rewinds.keys():
            rewind = [[token, stream, end]
                      for (token, stream), end in self._rewinds.get(ident, {}).items()]
            self._messages.append((ident, m.Ack(tokens=self._acks.get(ident, []),
                                                output_bytes=self._output_received.get(ident, 0),
                                                rewind=rewind)))
        self._acks.clear()
        self._output_received.clear()
        self._rewinds.clear()
        by_peer: dict[bytes, list[Any]] = defaultdict(list)
        for ident, msg in self._messages:
            by_peer[ident].append(msg)
        self._messages = []
        return by_peer
