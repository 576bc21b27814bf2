"""The orphan killer: one small process per agent, so jobs never outlive it.

The agent writes ``+PGID`` when a job starts and ``-PGID`` when it has been
reaped, one per line, on this process's stdin. When stdin reaches EOF the
agent is gone (the kernel closes the pipe even on SIGKILL), and every
process group still listed is killed. Costs nothing per job: no
``preexec_fn`` and no wrapper process, so spawning stays on the fast path.
The watchdog runs in its own session and ignores the terminal's signals, so
a Ctrl-C or a kill of the agent's process group does not take it down first.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger(__name__)


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        try:
            sign, pgid = line[:1], int(line[1:])
        except ValueError:
            continue
        if sign == b"+":
            groups.add(pgid)
        elif sign == b"-":
            groups.discard(pgid)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return 0


class Watchdog:
    """The agent's handle on its watchdog process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from queuectl.agent.watchdog import main; main()"],
            stdin=subprocess.PIPE, start_new_session=True)

    def _write(self, line: bytes) -> None:
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            log.error("the watchdog process is gone; jobs would outlive a crash of this agent")

    def watch(self, pgid: int) -> None:
        self._write(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        self._write(b"-%d\n" % pgid)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
