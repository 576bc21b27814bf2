"""``queuectl up``: a broker and local agent slots in the foreground, for one machine."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Annotated, Optional

import typer

from .common import note

PR_SET_PDEATHSIG = 1


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


def up(
    agents: Annotated[Optional[int], typer.Option(
        "--agents", "-n", min=1, max=10_000,
        help="local agent slots [default: number of CPUs]")] = None,
    bind: Annotated[Optional[str], typer.Option(
        "--bind", help="broker endpoint [default: tcp://127.0.0.1:5555]")] = None,
    db: Annotated[Optional[str], typer.Option(
        "--db", help="SQLite store [default: $QUEUECTL_HOME/queue.db]")] = None,
    no_http: Annotated[bool, typer.Option(
        "--no-http", help="do not serve the stats page")] = False,
) -> None:
    """Run a broker and local agents in the foreground until Ctrl-C."""
    from queuectl.client import BrokerUnreachable, Client, QueueError

    slots = agents or os.cpu_count() or 1
    endpoint = bind or "tcp://127.0.0.1:5555"
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
