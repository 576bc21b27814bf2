"""One attempt of one job on the agent: the process group, its pipes, its clock.

The command runs as ``/bin/sh -c COMMAND`` in a new session (its own process
group), so a timeout or a cancel kills the whole tree with one ``killpg``.
The agent's poll loop watches the stdout and stderr pipes and a pidfd, which
becomes readable when the shell exits; no thread per job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from queuectl.proto import messages as m
from queuectl.proto.states import Outcome

from .output import StreamBuffer

READ_SIZE = 65536


class RunningJob:
    def __init__(self, dispatch: m.Dispatch, output_limit: int):
        self.token = dispatch.token
        self.job_id = dispatch.job_id
        self.dispatch = dispatch
        self.stdout = StreamBuffer(output_limit)
        self.stderr = StreamBuffer(output_limit)
        self.proc: subprocess.Popen | None = None
        self.pidfd: int | None = None
        self.pipes: dict[int, StreamBuffer] = {}
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.deadline = self.started_mono + dispatch.timeout_sec
        self.kill_at: float | None = None
        self.forced: Outcome | None = None  # why we are killing it, if we are
        self.forced_detail = ""

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # the session leader's pid is the group id

    def spawn(self, base_env: dict[str, str]) -> None:
        """Start the command. Raises OSError when it cannot start (bad cwd, ...)."""
        env = dict(base_env)
        if self.dispatch.env:
            env.update(self.dispatch.env)
        env["QUEUECTL_JOB_ID"] = self.job_id
        env["QUEUECTL_ATTEMPT"] = str(self.dispatch.attempt)
        env["QUEUECTL_ATTEMPT_ID"] = str(self.token)
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", self.dispatch.command],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=self.dispatch.cwd or None, env=env, start_new_session=True)
        self.started_at, self.started_mono = time.time(), time.monotonic()
        self.deadline = self.started_mono + self.dispatch.timeout_sec
        self.pidfd = os.pidfd_open(self.proc.pid)
        for pipe, buffer in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            os.set_blocking(pipe.fileno(), False)
            self.pipes[pipe.fileno()] = buffer

    def read(self, fd: int) -> bool:
        """Read what the pipe holds; returns False at end of file."""
        buffer = self.pipes[fd]
        while True:
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            buffer.append(chunk)
            if len(chunk) < READ_SIZE:
                return True

    def pipe_closed(self, fd: int) -> None:
        """The pipe reached EOF; the file object closes it at ``reap``."""
        self.pipes.pop(fd, None)

    def kill(self, outcome: Outcome, grace: float, detail: str = "") -> None:
        """SIGTERM the group now and SIGKILL it after ``grace`` seconds."""
        if self.forced is None:
            self.forced, self.forced_detail = outcome, detail
        if self.kill_at is not None and grace > 0:
            return  # already terminating
        self._signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        self.kill_at = time.monotonic() + grace

    def escalate(self, now: float) -> None:
        if self.kill_at is not None and now >= self.kill_at:
            self._signal(signal.SIGKILL)
            self.kill_at = float("inf")

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def exited_by_itself(self) -> bool:
        """The shell has exited with a status of its own (not by a signal); not reaped yet."""
        info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is not None and info.si_code == os.CLD_EXITED

    def reap(self) -> int:
        """The shell has exited (pidfd readable): collect it and its buffered output."""
        if self.forced is not None:
            # Kill what is left of the group while the zombie leader still
            # holds the group id, so it cannot have been reused.
            self._signal(signal.SIGKILL)
        for fd in list(self.pipes):
            self.read(fd)
        returncode = self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.pipes.clear()
        os.close(self.pidfd)
        self.pidfd = None
        return returncode

    def result(self, returncode: int) -> m.Result:
        finished_at = self.started_at + (time.monotonic() - self.started_mono)
        if self.forced is not None:
            outcome, exit_code, detail = self.forced, None, self.forced_detail
        elif returncode == 0:
            outcome, exit_code, detail = Outcome.OK, 0, ""
        elif returncode > 0:
            outcome, exit_code, detail = Outcome.EXIT, returncode, ""
        else:
            outcome, exit_code = Outcome.SIGNAL, None
            try:
                detail = signal.Signals(-returncode).name
            except ValueError:
                detail = str(-returncode)
        return m.Result(token=self.token, outcome=outcome.value, exit_code=exit_code,
                        detail=detail, started_at=self.started_at, finished_at=finished_at,
                        stdout_end=self.stdout.end, stderr_end=self.stderr.end)

    def spawn_failure(self, exc: OSError) -> m.Result:
        now = time.time()
        return m.Result(token=self.token, outcome=Outcome.SPAWN_ERROR.value, exit_code=None,
                        detail=f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                        started_at=now, finished_at=now)
