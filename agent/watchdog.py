"""The orphan killer: one small process per agent, so jobs never outlive it
and never run on past a frozen agent's lease.

The agent writes lines on this process's stdin: ``+PGID`` when a job starts,
``-PGID`` when it has been reaped, ``=SECONDS`` to set the silence limit,
and ``.`` as a sign of life. The watchdog kills every process group still
listed (SIGKILL) when:

* stdin reaches EOF: the agent is gone (the kernel closes the pipe even on
  SIGKILL);
* the agent has been silent for longer than the limit while jobs run: it is
  frozen (SIGSTOP, a debugger, a starved VM). The broker would soon judge its
  lease lost and run the jobs elsewhere; killing them first is what keeps one
  job from running twice at the same time. The agent sets the limit to
  ``lease_sec - 2 * heartbeat_sec``, the same cut-off it applies itself when
  it loses the broker.

Costs nothing per job: no ``preexec_fn`` and no wrapper process, so spawning
stays on the fast path. The watchdog runs in its own session and ignores the
terminal's signals, so a Ctrl-C, a SIGSTOP or a kill of the agent's process
group does not take it down with the agent.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time

log = logging.getLogger(__name__)

ALIVE_EVERY = 0.25  # at most this fraction of the limit between two signs of life
RESPAWN_AFTER = 1.0  # a watchdog that died younger than this is not started again


def _kill(groups: set[int]) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    fd = sys.stdin.fileno()
    groups: set[int] = set()
    limit: float | None = None
    heard = time.monotonic()
    pending = b""
    while True:
        timeout = None
        if groups and limit is not None:
            timeout = max(0.0, heard + limit - time.monotonic())
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            sys.stderr.write(
                f"queuectl watchdog: agent pid {os.getppid()} silent for {limit:g}s, past its "
                f"lease; killed the process groups {sorted(groups)} so they cannot run twice\n")
            sys.stderr.flush()
            _kill(groups)
            groups.clear()
            continue
        data = os.read(fd, 65536)
        if not data:
            break
        heard = time.monotonic()
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            sign, arg = line[:1], line[1:]
            try:
                if sign == b"+":
                    groups.add(int(arg))
                elif sign == b"-":
                    groups.discard(int(arg))
                elif sign == b"=":
                    limit = float(arg)
            except ValueError:
                continue
    _kill(groups)
    return 0


class Watchdog:
    """The agent's handle on its watchdog process.

    Writes never block the agent: a stopped watchdog only makes lines queue
    up here. A watchdog that died is started again and told the current
    limit and process groups, so jobs stay supervised.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.groups: set[int] = set()
        self._pending = bytearray()
        self._alive_at = 0.0
        self._spawn()

    def _spawn(self) -> None:
        self._started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from queuectl.agent.watchdog import main; main()"],
            # cwd "/": with -c, Python imports from the working directory first,
            # which must not shadow the installed package (say, a source checkout).
            stdin=subprocess.PIPE, start_new_session=True, cwd="/")
        os.set_blocking(self.proc.stdin.fileno(), False)
        self._pending = bytearray(b"=%r\n" % self.limit)
        self._pending += b"".join(b"+%d\n" % pgid for pgid in sorted(self.groups))
        self._flush()

    def _write(self, line: bytes) -> None:
        self._pending += line
        self._flush()

    def _flush(self) -> None:
        while self._pending:
            try:
                written = os.write(self.proc.stdin.fileno(), self._pending)
            except BlockingIOError:
                return  # the watchdog is not reading (stopped?): keep the lines
            except BrokenPipeError:
                self.proc.stdin.close()
                status = self.proc.wait()
                if time.monotonic() - self._started < RESPAWN_AFTER:
                    log.error("the watchdog process keeps dying (status %s); jobs would "
                              "outlive a crash of this agent", status)
                    self._pending.clear()
                    return
                log.error("the watchdog process died (status %s); starting a new one", status)
                self._spawn()
                return
            del self._pending[:written]

    def watch(self, pgid: int) -> None:
        self.groups.add(pgid)
        self._write(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        self.groups.discard(pgid)
        self._write(b"-%d\n" % pgid)

    def set_limit(self, seconds: float) -> None:
        if seconds != self.limit:
            self.limit = seconds
            self._write(b"=%r\n" % seconds)

    def alive(self, now: float) -> None:
        """A sign of life, sent often enough that a running agent is never taken for frozen."""
        if now - self._alive_at >= self.limit * ALIVE_EVERY:
            self._alive_at = now
            self._write(b".\n")

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
