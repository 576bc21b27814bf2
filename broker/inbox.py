"""Frames read from the broker's socket and not yet handled: fair, and bounded.

ROUTER hands the broker its peers' frames in turn, but one frame may be a
4 MiB chunk of jobs or a 60 MiB request, and a client may send many without
waiting. The loop used to handle all it had read (up to 512 frames) in one
iteration: twenty pipelined chunks held it for 1.9 s and two dozen 60 MiB
requests for 9 s, every one of them in memory at once, while other clients
waited. Now frames wait here, per peer in arrival order. Each iteration takes
them round-robin across peers, one frame per peer a round, up to
``STEP_BYTES`` (at least one frame); the loop also stops handling after
``STEP_SECONDS`` and puts the rest back. So a heavy peer delays the others by
about one of its frames. Reading stops while what waits here exceeds
``QUEUE_BYTES``: the rest stays in libzmq, which stops reading that connection.
"""

from __future__ import annotations

from collections import deque

from queuectl.keys import Principal

# One frame read from the ROUTER: the peer's identity, the data, and with CURVE
# the key it connected with (None without CURVE: everyone may do everything).
Frame = tuple[bytes, bytes, Principal | None]

STEP_BYTES = 8 * 1024 * 1024    # frame bytes one iteration takes, at least one frame
STEP_SECONDS = 0.1              # handling time after which an iteration puts the rest back
QUEUE_BYTES = 32 * 1024 * 1024  # frame bytes read ahead, at most (beyond one frame)


class Inbox:
    def __init__(self) -> None:
        self._peers: dict[bytes, deque[Frame]] = {}
        self.bytes = 0

    def __bool__(self) -> bool:
        return bool(self._peers)

    def full(self) -> bool:
        return self.bytes >= QUEUE_BYTES

    def put(self, frame: Frame) -> None:
        queue = self._peers.get(frame[0])
        if queue is None:
            queue = self._peers[frame[0]] = deque()
        queue.append(frame)
        self.bytes += len(frame[1])

    def put_back(self, frames: list[Frame]) -> None:
        """Frames taken but not handled: first again, each before its peer's later ones."""
        for frame in reversed(frames):
            queue = self._peers.get(frame[0])
            if queue is None:
                self._peers = {frame[0]: deque(), **self._peers}  # served first next time
                queue = self._peers[frame[0]]
            queue.appendleft(frame)
            self.bytes += len(frame[1])

    def take(self, budget: int = STEP_BYTES) -> list[Frame]:
        """Frames to handle now, round-robin across peers, up to ``budget`` bytes.
        A peer served goes to the back, so the next iteration starts with those
        this one did not reach."""
        taken: list[Frame] = []
        spent = 0
        while self._peers and spent < budget:
            for ident in list(self._peers):
                queue = self._peers.pop(ident)
                frame = queue.popleft()
                taken.append(frame)
                spent += len(frame[1])
                self.bytes -= len(frame[1])
                if queue:
                    self._peers[ident] = queue
                if spent >= budget:
                    break
        return taken
