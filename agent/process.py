"""One attempt of one job on the agent: the process group, its pipes, its clock.

The command runs as ``/bin/sh -c COMMAND`` in a new session (its own process
group), so a timeout or a cancel kills the whole tree with one ``killpg``.
The agent's poll loop watches the stdout and stderr pipes and a pidfd, which
becomes readable when the shell exits; no thread per job.

Spawning is the agent's hot path. A job without ``cwd`` starts with
``os.posix_spawn`` (glibc's vfork-style clone): about half the parent's CPU
time of ``subprocess.Popen``, whose Python-level setup dominates for a short
command (docs/BENCHMARKS.md). A job with ``cwd`` takes ``Popen``, which can
change directory in the child. Either way the child gets only stdin, stdout
and stderr: every other descriptor of the agent is close-on-exec
(``protect_descriptors`` covers those it inherited), and the signals Python
ignores are reset to their defaults, as ``Popen(restore_signals=True)`` does.
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
SHELL = "/bin/sh"
# Python sets SIGPIPE (and SIGXFSZ) to "ignore"; a command expects the default.
RESET_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ")
                      if hasattr(signal, name))
_devnull: int | None = None


def protect_descriptors() -> None:
    """Make every descriptor this process inherited (beyond 0-2) close-on-exec,
    so no job sees them. Python creates its own descriptors that way already."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the descriptor of the listing itself, closed by now


def _stdin() -> int:
    global _devnull
    if _devnull is None:
        _devnull = os.open(os.devnull, os.O_RDONLY)  # close-on-exec, kept for every job
    return _devnull


class RunningJob:
    def __init__(self, dispatch: m.Dispatch, output_limit: int):
        self.token = dispatch.token
        self.job_id = dispatch.job_id
        self.dispatch = dispatch
        self.stdout = StreamBuffer(output_limit)
        self.stderr = StreamBuffer(output_limit)
        self.pid = 0
        self.proc: subprocess.Popen[bytes] | None = None  # only for a job with a cwd
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
        return self.pid  # the session leader's pid is the group id

    def spawn(self, base_env: dict[str, str]) -> None:
        """Start the command. Raises OSError when it cannot start (bad cwd, ...)."""
        env = dict(base_env)
        if self.dispatch.env:
            env.update(self.dispatch.env)
        env["QUEUECTL_JOB_ID"] = self.job_id
        env["QUEUECTL_ATTEMPT"] = str(self.dispatch.attempt)
        env["QUEUECTL_ATTEMPT_ID"] = str(self.token)
        argv = [SHELL, "-c", self.dispatch.command]
        if self.dispatch.cwd:
            self.proc = proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=self.dispatch.cwd, env=env, start_new_session=True)
            self.pid = proc.pid
            assert proc.stdout is not None and proc.stderr is not None  # both are PIPE
            pipes = []
            for pipe in (proc.stdout, proc.stderr):
                pipes.append(os.dup(pipe.fileno()))  # a bare descriptor, as posix_spawn gives
                pipe.close()
        else:
            pipes = self._posix_spawn(argv, env)
        self.started_at, self.started_mono = time.time(), time.monotonic()
        self.deadline = self.started_mono + self.dispatch.timeout_sec
        self.pidfd = os.pidfd_open(self.pid)
        for fd, buffer in zip(pipes, (self.stdout, self.stderr), strict=True):
            os.set_blocking(fd, False)
            self.pipes[fd] = buffer

    def _posix_spawn(self, argv: list[str], env: dict[str, str]) -> list[int]:
        """Spawn with stdout and stderr on new pipes; returns their read ends."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.pid = os.posix_spawn(
                SHELL, argv, env, setsid=True, setsigdef=RESET_SIGNALS, setsigmask=(),
                file_actions=[(os.POSIX_SPAWN_DUP2, _stdin(), 0),
                              (os.POSIX_SPAWN_DUP2, out_w, 1),
                              (os.POSIX_SPAWN_DUP2, err_w, 2)])
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        return [out_r, err_r]

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
        """The pipe reached EOF."""
        self.pipes.pop(fd, None)
        os.close(fd)

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
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is not None and info.si_code == os.CLD_EXITED

    def reap(self) -> int:
        """The shell has exited (pidfd readable): collect it and its buffered output."""
        if self.forced is not None:
            # Kill what is left of the group while the zombie leader still
            # holds the group id, so it cannot have been reused.
            self._signal(signal.SIGKILL)
        for fd in list(self.pipes):
            self.read(fd)
            os.close(fd)
        self.pipes.clear()
        if self.proc is not None:
            returncode = self.proc.wait()
        else:
            returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        if self.pidfd is not None:  # it is: the pidfd is what said the shell had exited
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
                        stdout_end=self.stdout.end, stderr_end=self.stderr.end, pid=self.pid)

    def spawn_failure(self, exc: OSError) -> m.Result:
        now = time.time()
        return m.Result(token=self.token, outcome=Outcome.SPAWN_ERROR.value, exit_code=None,
                        detail=f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                        started_at=now, finished_at=now)

    def not_started(self, outcome: Outcome, detail: str) -> m.Result:
        """The result of an attempt that ended before its command started."""
        return m.Result(token=self.token, outcome=outcome.value, exit_code=None, detail=detail,
                        started_at=None, finished_at=time.time())
