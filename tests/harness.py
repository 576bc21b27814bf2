"""Helpers for integration tests: real processes, free loopback ports, deadlines.

The one home of the helpers tests share (``start_agent``, ``wait_state``,
``kill_if_alive`` and the rest): a test file defines only what is its own.
Every process is started in its own session and registered with a
``Processes`` owner, which kills each process group at teardown even when
the test failed. Waiting is ``wait_until(condition, timeout)``: poll a
condition until it holds or the deadline passes, never a bare sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Return the first truthy value of ``condition()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except AssertionError as exc:
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)


def program(name: str) -> list[str]:
    """The console script installed next to this Python, else ``python -m``."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    module = {"queuectl": "queuectl.cli.main", "queuectl-broker": "queuectl.broker",
              "queuectl-agent": "queuectl.agent"}[name]
    return [sys.executable, "-m", module]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def watchdog_pid(agent_pid: int) -> int:
    """The agent's watchdog process (its child running queuectl.agent.watchdog), or 0."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == agent_pid and b"queuectl.agent.watchdog" in cmdline:
            return int(entry.name)
    return 0


class LoggedProcess(subprocess.Popen[Any]):
    """A child process whose stdout and stderr go to the file ``log_path``."""

    log_path: Path


class Processes:
    """Owns every process a test starts; ``cleanup`` kills their groups."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[LoggedProcess] = []

    def start(self, argv: list[str], log_name: str, env: dict[str, str] | None = None,
              **kwargs: Any) -> LoggedProcess:
        with open(self.workdir / log_name, "ab") as log:  # the child keeps its own copy
            proc = LoggedProcess(argv, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, env=env, **kwargs)
        proc.log_path = self.workdir / log_name
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


class Broker:
    """A real ``queuectl-broker`` on a free loopback port with its own store."""

    def __init__(self, procs: Processes, home: Path, port: int | None = None):
        self.procs = procs
        self.home = home
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.db = home / "queue.db"
        self.proc: LoggedProcess | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        return {**os.environ, "QUEUECTL_HOME": str(self.home), "QUEUECTL_BROKER": self.endpoint}

    def start(self, *extra: str) -> Broker:
        self.starts += 1
        self.proc = self.procs.start(
            program("queuectl-broker") + ["--bind", self.endpoint, "--db", str(self.db), *extra],
            f"broker-{self.starts}.log", env=self.env())
        wait_until(self.answers, 15, message=f"broker on {self.endpoint}")
        return self

    def answers(self) -> bool:
        from queuectl.client import BrokerUnreachable, Client

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"broker exited with {self.proc.returncode}: {self.log()}")
        try:
            with Client(self.endpoint, timeout=0.3, **self.key_files()) as qc:
                qc.ping()
            return True
        except BrokerUnreachable:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def client(self, timeout: float = 5.0):
        from queuectl.client import Client

        return Client(self.endpoint, timeout=timeout, **self.key_files())

    def key_files(self) -> dict[str, str]:
        """After ``queuectl keys init`` in its home: the admin key of that home,
        which its CLI commands and agents use by default too."""
        keys = self.home / "keys"
        if (keys / "broker.key").exists():
            return {"key": str(keys / "client.key_secret"), "broker_key": str(keys / "broker.key")}
        return {}

    def log(self) -> str:
        if self.proc is None:
            return ""
        return Path(self.proc.log_path).read_text(errors="replace")[-4000:]


class Agent:
    """A real ``queuectl-agent`` process."""

    def __init__(self, procs: Processes, broker: Broker, count: int, labels: dict[str, str],
                 grace: float | None, name: str, env: dict[str, str] | None = None):
        argv = program("queuectl-agent") + ["--count", str(count), "--broker", broker.endpoint]
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        if grace is not None:
            argv += ["--grace", str(grace)]
        self.proc = procs.start(argv, f"{name}.log", env={**broker.env(), **(env or {})})
        self.pid = self.proc.pid

    def log(self) -> str:
        return Path(self.proc.log_path).read_text(errors="replace")[-4000:]


def start_agent(procs: Processes, broker: Broker, count: int = 2, *,
                labels: dict[str, str] | None = None, grace: float | None = None,
                name: str = "agent-1", env: dict[str, str] | None = None,
                wait: bool = True, timeout: float = 15) -> Agent:
    """A real agent of ``count`` slots for ``broker``, its log in ``NAME.log``.

    With ``wait`` it returns once the broker lists the agent (by its PID), within
    ``timeout`` seconds; without, at once (an agent the broker should refuse, or
    many started together and waited for as a fleet)."""
    agent = Agent(procs, broker, count, labels or {}, grace, name, env=env)
    if wait:
        def connected() -> bool:
            with broker.client() as qc:
                return any(a["pid"] == agent.pid for a in qc.agents())

        wait_until(connected, timeout, message=f"agent {name} (pid {agent.pid}) to connect")
    return agent


def get_job(broker: Broker, job_id: str) -> dict:
    with broker.client() as qc:
        return qc.get(job_id)


def state_of(broker: Broker, job_id: str) -> str:
    return get_job(broker, job_id)["state"]


def wait_state(broker: Broker, job_id: str, *states: str, timeout: float = 15,
               interval: float = 0.05) -> dict:
    """The job, once it is in one of ``states``; fails after ``timeout`` seconds."""
    def reached() -> dict | None:
        job = get_job(broker, job_id)
        return job if job["state"] in states else None

    return wait_until(reached, timeout, interval=interval,
                      message=f"job {job_id} to be {' or '.join(states)}")


def wait_done(broker: Broker, job_id: str, timeout: float = 15) -> dict:
    """The job once it is finished (the broker's ``wait``: completed, dead or canceled)."""
    with broker.client() as qc:
        return qc.wait(job_id, timeout=timeout)


def read_pid(path: Path, timeout: float = 15) -> int:
    """The PID a job wrote to ``path`` (waits for the job to write it)."""
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), timeout,
                          message=f"a pid in {path}"))


def kill_if_alive(*pids: int | None, group: bool = False) -> None:
    """Clean-up: SIGKILL each process a test started or watched, by PID, if it
    outlived the test (``None`` and 0 are skipped). With ``group``, a process that
    leads its own process group (a job's shell, a process of ``queuectl up``)
    takes its whole group along."""
    for pid in pids:
        if pid and pid_alive(pid):
            try:
                if group and os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def configure(broker: Broker, **settings: Any) -> None:
    """Set config keys through the broker. heartbeat_sec goes first: tests lower
    both it and lease_sec, and lease_sec must stay >= 4 x heartbeat_sec."""
    with broker.client() as qc:
        for key in sorted(settings, key=lambda key: key != "heartbeat_sec"):
            qc.config_set(key, settings[key])


def run_cli(broker: Broker | None, *args: str, input: str | None = None,
            timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``queuectl ARGS`` as a user would; returns the completed process."""
    full_env = dict(env or (broker.env() if broker else os.environ))
    return subprocess.run(program("queuectl") + list(args), input=input, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def run_in_terminal(broker: Broker | None, *args: str, timeout: float = 60,
                    columns: int = 250, env: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Run ``queuectl ARGS`` with stdin, stdout and stderr on a pseudo-terminal, as in
    an admin's shell; returns the exit code and every byte that reached the terminal
    (the terminal turns each newline into CRLF)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    full_env = {**(env or (broker.env() if broker else os.environ)), "TERM": "xterm-256color",
                "COLUMNS": str(columns)}
    for name in ("NO_COLOR", "FORCE_COLOR"):
        full_env.pop(name, None)
    proc = subprocess.Popen(program("queuectl") + list(args), stdin=slave, stdout=slave,
                            stderr=slave, env=full_env, start_new_session=True)
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"queuectl {' '.join(args)} still writing after {timeout}s: "
                                     f"{bytes(seen[-500:])!r}")
            if not select.select([master], [], [], remaining)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every process has closed the terminal
                break
            if not data:
                break
            seen += data
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), bytes(seen)
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def cli_json(broker: Broker, *args: str) -> Any:
    result = run_cli(broker, *args, "--json")
    assert result.returncode == 0, f"queuectl {' '.join(args)} failed: {result.stderr}"
    return json.loads(result.stdout)


class StatusProbe:
    """Calls ``status`` on its own client, ``gap`` seconds apart, until the ``with``
    block ends; ``worst`` is the longest wait for an answer. A broker stalled for
    longer than ``timeout`` makes ``error`` hold the client's exception."""

    def __init__(self, broker: Broker, gap: float = 0.02, timeout: float = 600.0):
        self.broker, self.gap, self.timeout = broker, gap, timeout
        self.worst, self.calls = 0.0, 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout)

    def _run(self) -> None:
        try:
            with self.broker.client(timeout=self.timeout) as qc:
                while not self._stop.is_set():
                    start = time.perf_counter()
                    qc.status()
                    self.worst = max(self.worst, time.perf_counter() - start)
                    self.calls += 1
                    self._stop.wait(self.gap)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc
