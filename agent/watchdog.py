"""The orphan killer: one small process per agent, so jobs never outlive it
and never run on past a frozen agent's lease.

The agent writes lines on this process's stdin: ``+PGID`` when a job starts,
``-PGID`` when it has been reaped, ``=SECONDS`` to set the silence limit,
and ``.`` as a sign of life. The watchdog kills every process group still
listed (SIGKILL) when:

* stdin reaches EOF: the agent is gone (the kernel closes the pipe even on
  SIGKILL);
* the agent has been silent for longer than the limit while jobs run: it is
  frozen (SIGSTOP, a debugger, a stall of the process). The broker would soon
  judge its lease lost and run the jobs elsewhere; killing them first is what
  keeps one job from running twice at the same time. The agent sets the limit
  to ``lease_sec - 2 * heartbeat_sec``, the same cut-off it applies itself
  when it loses the broker. For such a kill the watchdog first writes
  ``killed PGID`` on its stdout, so the agent, once it runs again, reports
  those jobs as lost rather than as killed by a signal.

Costs nothing per job: no ``preexec_fn`` and no wrapper process, so spawning
stays on the fast path. The watchdog runs in its own session and ignores the
terminal's signals, so a Ctrl-C, a SIGSTOP or a kill of the agent's process
group does not take it down with the agent. A freeze of the whole host or
container (cgroup freezer, a suspended VM) stops the watchdog too; see
docs/RELIABILITY.md.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from typing import IO

log = logging.getLogger(__name__)

# After reading, the watchdog naps this long before it reads again: the agent's
# lines then arrive in bulk instead of waking this process once per job, which
# at thousands of jobs a second costs the agent a context switch per line. The
# agent's exit is still seen within this time; lines are never lost (the pipe
# holds them, and the agent keeps what does not fit).
COALESCE = 0.02
ALIVE_EVERY = 0.1  # at most this fraction of the limit between two signs of life
RESPAWN_BACKOFF = (0.5, 30.0)  # seconds between attempts to restart a dead watchdog
HEALTHY_AFTER = 5.0  # a watchdog alive this long resets the restart backoff


def _kill(groups: set[int]) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _job_groups_of(parent: int) -> set[int]:
    """Process groups led by ``parent``'s children other than this watchdog: the
    agent's jobs, including one it spawned but had not reported yet (it was
    stopped between the spawn and the ``+PGID`` line)."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid, ppid, pgrp = int(entry.name), int(fields[1]), int(fields[2])
        if ppid == parent and pgrp == pid and pid != os.getpid():
            found.add(pid)
    return found


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
        if limit is not None:
            timeout = max(0.0, heard + limit - time.monotonic())
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            heard = time.monotonic()  # next look after another full limit
            groups |= _job_groups_of(os.getppid())
            if not groups:
                continue
            sys.stderr.write(
                f"queuectl watchdog: agent pid {os.getppid()} silent for {limit:g}s, past its "
                f"lease; killed the process groups {sorted(groups)} so they cannot run twice\n")
            sys.stderr.flush()
            try:  # tell the agent first: the notice must be there when it sees the exits
                os.write(sys.stdout.fileno(), b"".join(b"killed %d\n" % g for g in groups))
            except OSError:
                pass
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
        time.sleep(COALESCE)
    _kill(groups)
    return 0


class Watchdog:
    """The agent's handle on its watchdog process.

    Writes never block the agent: a stopped watchdog only makes lines queue
    up here. A watchdog that died is started again (with backoff) and told
    the current limit and process groups, so jobs stay supervised.
    """

    # The pipes of ``proc``, both asked for, hence never None while it runs.
    _stdin: IO[bytes]
    _stdout: IO[bytes]

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.groups: set[int] = set()
        self.proc: subprocess.Popen[bytes] | None = None
        self._pending = bytearray()
        self._notices = b""
        self._early_kills: set[int] = set()
        self._alive_at = 0.0
        self._retry_at = 0.0
        self._backoff = RESPAWN_BACKOFF[0]
        self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", "from queuectl.agent.watchdog import main; main()"],
            # cwd "/": with -c, Python imports from the working directory first,
            # which must not shadow the installed package (say, a source checkout).
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, cwd="/")
        assert proc.stdin is not None and proc.stdout is not None  # both are PIPE
        self.proc, self._stdin, self._stdout = proc, proc.stdin, proc.stdout
        os.set_blocking(self._stdin.fileno(), False)
        os.set_blocking(self._stdout.fileno(), False)
        self._pending = bytearray(b"=%r\n" % self.limit)
        self._pending += b"".join(b"+%d\n" % pgid for pgid in sorted(self.groups))
        return proc

    def _died(self, proc: subprocess.Popen[bytes]) -> None:
        self._early_kills |= self.killed()  # what it said before it died still counts
        status = proc.wait()
        self._stdin.close()
        self._stdout.close()
        self.proc = None
        self._retry_at = time.monotonic() + self._backoff
        log.error("the watchdog process died (status %s); starting a new one in %.1fs; until "
                  "then jobs would outlive a crash of this agent", status, self._backoff)
        self._backoff = min(self._backoff * 2, RESPAWN_BACKOFF[1])

    def _write(self, line: bytes) -> None:
        self._pending += line
        self._flush()

    def _flush(self) -> None:
        proc = self.proc
        if proc is None:
            if time.monotonic() < self._retry_at:
                return
            proc = self._spawn()
        while self._pending:
            try:
                written = os.write(self._stdin.fileno(), self._pending)
            except BlockingIOError:
                return  # the watchdog is not reading (stopped?): keep the lines
            except BrokenPipeError:
                self._died(proc)
                return
            del self._pending[:written]
        if (self._backoff > RESPAWN_BACKOFF[0]
                and time.monotonic() - self._started > HEALTHY_AFTER):
            self._backoff = RESPAWN_BACKOFF[0]

    def killed(self) -> set[int]:
        """Process groups the watchdog killed because the agent was silent too long."""
        killed, self._early_kills = self._early_kills, set()
        if self.proc is None:
            return killed
        try:
            self._notices += os.read(self._stdout.fileno(), 65536)
        except (BlockingIOError, OSError):
            pass
        *lines, self._notices = self._notices.split(b"\n")
        return killed | {int(line.split()[1]) for line in lines if line.startswith(b"killed ")}

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
        if self.proc is None:
            return
        try:
            self._stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait()
        self._stdout.close()


if __name__ == "__main__":
    sys.exit(main())
