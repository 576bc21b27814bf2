"""``queuectl up``: a broker and local agent slots in the foreground, for one machine."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from typing import Annotated, Optional

import typer

from .common import endpoint as common_endpoint
from .common import note

PR_SET_PDEATHSIG = 1
HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})\Z")


def _die_with_parent() -> None:
    """In the child: get SIGTERM if ``queuectl up`` itself is killed."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _spawn(module: str, *args: str) -> subprocess.Popen:
    # Own session: the terminal's Ctrl-C reaches only `up`, which then stops
    # the agents first and the broker last, so every result is delivered.
    return subprocess.Popen([sys.executable, "-m", module, *args], start_new_session=True,
                            preexec_fn=_die_with_parent)


def _stop(proc: subprocess.Popen, name: str, patience: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(patience)
    except subprocess.TimeoutExpired:
        note(f"{name} did not stop within {patience:g}s; killing it")
        proc.kill()
        proc.wait()


def _check_http(http: str | None, no_http: bool) -> None:
    """Validate ``--http HOST:PORT``; the stats page itself is not built yet."""
    from queuectl.client import InvalidInput

    if http is None:
        return
    if no_http:
        raise InvalidInput("give --http HOST:PORT or --no-http, not both")
    match = HOST_PORT.match(http)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise InvalidInput(f"--http must be HOST:PORT with a port from 1 to 65535 "
                           f"(e.g. 127.0.0.1:8080), got {http!r}")
    note(f"queuectl: warning: the stats page is not available in this version; "
         f"--http {http} is ignored")


def up(
    ctx: typer.Context,
    agents: Annotated[Optional[int], typer.Option(
        "--agents", "-n", min=1, max=10_000,
        help="local agent slots [default: number of CPUs]")] = None,
    bind: Annotated[Optional[str], typer.Option(
        "--bind", help="broker endpoint [default: --broker, else $QUEUECTL_BROKER, "
                       "else tcp://127.0.0.1:5555]")] = None,
    db: Annotated[Optional[str], typer.Option(
        "--db", help="SQLite store [default: $QUEUECTL_HOME/queue.db]")] = None,
    http: Annotated[Optional[str], typer.Option(
        "--http", metavar="HOST:PORT",
        help="where the stats page would listen (not available in this version)")] = None,
    no_http: Annotated[bool, typer.Option(
        "--no-http", help="do not serve the stats page")] = False,
) -> None:
    """Run a broker and local agents in the foreground until Ctrl-C."""
    from queuectl.client import BrokerUnreachable, Client, QueueError, default_endpoint

    _check_http(http, no_http)
    slots = agents or os.cpu_count() or 1
    # The endpoint every other command uses by default, so `queuectl status` finds it.
    endpoint = bind or common_endpoint(ctx, None) or default_endpoint()
    broker_args = ["--bind", endpoint] + (["--db", db] if db else [])
    broker = _spawn("queuectl.broker", *broker_args)
    deadline = time.monotonic() + 15
    with Client(endpoint, timeout=0.5) as qc:
        while True:
            if broker.poll() is not None:
                raise QueueError(f"the broker exited with code {broker.returncode} (see above)")
            try:
                qc.ping()
                break
            except BrokerUnreachable:
                if time.monotonic() > deadline:
                    _stop(broker, "broker", 5)
                    raise
    agent = _spawn("queuectl.agent", "--count", str(slots), "--broker", endpoint)
    stopping: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, _frame: stopping.append(signum))
    note(f"QueueCTL is up: broker {endpoint}, {slots} agent slot(s). "
         f"Try: queuectl enqueue '{{\"command\":\"echo hello\"}}'. Ctrl-C stops.")
    failed = None
    while not stopping:
        for name, proc in (("broker", broker), ("agent", agent)):
            if proc.poll() is not None:
                failed = f"the {name} exited unexpectedly with code {proc.returncode}"
                stopping.append(0)
        time.sleep(0.2)  # supervising two children; nothing here is on a job's path
    note("Stopping: the agents finish running jobs, then the broker stops.")
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        while agent.poll() is None:
            if len(stopping) > 1:  # a second Ctrl-C: make the agents kill their jobs
                agent.send_signal(signal.SIGINT)
                stopping.pop()
            time.sleep(0.1)
    _stop(broker, "broker", 30)
    if failed:
        raise QueueError(failed)
