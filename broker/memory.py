"""Give memory back to the system after a crowd of peers has gone.

Every connection costs the broker about 30 KiB inside libzmq, and each agent
some Python objects. When thousands of peers connect and leave (a flood of
fake agents, a fleet restarting), the memory is freed, but glibc keeps the
freed pages in its heap: the process stayed at 110 MiB where it started at
26 MiB (docs/RELIABILITY.md). ``malloc_trim`` returns them. It costs about
10 microseconds when there is nothing to return and a few tens of
milliseconds after a big release, so the broker calls it soon after many
agents have left or many megabytes of frames went through its socket (a
client that reads none of 2,000 big replies left 70 MiB held), and otherwise
once a minute (leaving connections that never said Hello are invisible to
the broker). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

EVERY = 60.0      # seconds between two trims, at most
DEPARTED = 64     # agents gone since the last trim that call for one at once
CHURNED = 64 * 1024 * 1024  # bytes of frames read and sent since the last trim, likewise


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


class Trimmer:
    def __init__(self, trim: Callable[[int], int] | None = None) -> None:
        self._trim = trim if trim is not None else _malloc_trim()
        self._due = 0.0
        self._departed = 0
        self._churned = 0

    def departed(self, count: int = 1) -> None:
        """``count`` agents were forgotten."""
        self._departed += count

    def churned(self, size: int) -> None:
        """A frame of ``size`` bytes was read or sent (and its memory freed since)."""
        self._churned += size

    def tick(self, mono: float) -> None:
        """From the loop's maintenance: trim if it is time."""
        if self._trim is None or (mono < self._due and self._departed < DEPARTED
                                  and self._churned < CHURNED):
            return
        self._due, self._departed, self._churned = mono + EVERY, 0, 0
        self._trim(0)
