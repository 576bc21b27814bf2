"""``queuectl up``: a broker, local agent slots and the stats page in the foreground,
for one machine."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Annotated

import typer

from .common import endpoint as common_endpoint
from .common import note

PR_SET_PDEATHSIG = 1
DEFAULT_HTTP = "127.0.0.1:8080"
HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})\Z")


def _die_with_parent() -> None:
    """In the child: get SIGTERM if ``queuectl up`` itself is killed."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _spawn(module: str, *args: str) -> subprocess.Popen[bytes]:
    # Own session: the terminal's Ctrl-C reaches only `up`, which then stops
    # the agents first and the broker last, so every result is delivered.
    return subprocess.Popen([sys.executable, "-m", module, *args], start_new_session=True,
                            preexec_fn=_die_with_parent)


def _stop(proc: subprocess.Popen[bytes], name: str, patience: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(patience)
    except subprocess.TimeoutExpired:
        note(f"{name} did not stop within {patience:g}s; killing it")
        proc.kill()
        proc.wait()


def _page_address(http: str | None, no_http: bool) -> tuple[str, int] | None:
    """Where the stats page listens (``--http HOST:PORT``), or None with ``--no-http``."""
    from queuectl.client import InvalidInput
    from queuectl.dashboard import TOKEN_ENV
    from queuectl.dashboard.server import check_token, is_loopback

    if no_http:
        if http is not None:
            raise InvalidInput("give --http HOST:PORT or --no-http, not both")
        return None
    text = DEFAULT_HTTP if http is None else http
    match = HOST_PORT.match(text)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise InvalidInput(f"--http must be HOST:PORT with a port from 1 to 65535 "
                           f"(e.g. 127.0.0.1:8080), got {text!r}")
    host = match.group(1).strip("[]")
    if not is_loopback(host):
        token = os.environ.get(TOKEN_ENV)
        if not token:
            raise InvalidInput(f"--http {text}: binding {host} exposes the queue; set {TOKEN_ENV} "
                               "to a token the page will require")
        check_token(token, host, TOKEN_ENV)
    return host, int(match.group(2))


def _connectable(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _port_in_use(host: str, port: int) -> bool:
    """Whether another process already listens there (checked like the server binds)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        return False  # the page itself reports the bad address
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _page_listening(page: subprocess.Popen[bytes], host: str, port: int, stopping: list[int],
                    timeout: float = 20) -> bool:
    """Wait until the stats page accepts connections; False if it exits first."""
    deadline = time.monotonic() + timeout
    while page.poll() is None and not stopping and time.monotonic() < deadline:
        try:
            socket.create_connection((_connectable(host), port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)  # the page is still importing Flask
    return False


def _start_page(address: tuple[str, int], endpoint: str,
                stopping: list[int]) -> subprocess.Popen[bytes] | None:
    """The stats page as a child; None (after one warning line) if it cannot listen."""
    host, port = address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if _port_in_use(host, port):
        reason = "address in use"
        page = None
    else:
        page = _spawn("queuectl.dashboard", "--host", host, "--port", str(port),
                      "--broker", endpoint)
        if _page_listening(page, host, port, stopping):
            return page
        _stop(page, "stats page", 5)
        reason = f"it exited with code {page.returncode}" if not stopping else "interrupted"
    if not stopping:
        note(f"queuectl: warning: the stats page could not listen on {shown} ({reason}); "
             "running without it \u2014 choose another with --http HOST:PORT")
    return None


def up(
    ctx: typer.Context,
    agents: Annotated[int | None, typer.Option(
        "--agents", "-n", min=1, max=10_000,
        help="local agent slots [default: number of CPUs]")] = None,
    bind: Annotated[str | None, typer.Option(
        "--bind", help="broker endpoint [default: --broker, else $QUEUECTL_BROKER, "
                       "else tcp://127.0.0.1:5555]")] = None,
    db: Annotated[str | None, typer.Option(
        "--db", help="SQLite store [default: $QUEUECTL_HOME/queue.db]")] = None,
    http: Annotated[str | None, typer.Option(
        "--http", metavar="HOST:PORT",
        help="where the stats page listens [default: 127.0.0.1:8080]; an address other than "
             "loopback needs QUEUECTL_DASHBOARD_TOKEN")] = None,
    no_http: Annotated[bool, typer.Option(
        "--no-http", help="do not serve the stats page")] = False,
) -> None:
    """Run a broker, local agents and the stats page in the foreground until Ctrl-C."""
    from queuectl.client import BrokerUnreachable, Client, QueueError, default_endpoint

    address = _page_address(http, no_http)
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
    page = _start_page(address, endpoint, stopping) if address else None
    where = ""
    if page is not None and address is not None:  # a page is started only for an address
        from queuectl.dashboard.server import url

        where = f", stats page {url(*address)}"
    note(f"QueueCTL is up: broker {endpoint}, {slots} agent slot(s){where}. "
         f"Try: queuectl enqueue '{{\"command\":\"echo hello\"}}'. Ctrl-C stops.")
    failed = None
    while not stopping:
        for name, proc in (("broker", broker), ("agent", agent)):
            if proc.poll() is not None:
                failed = f"the {name} exited unexpectedly with code {proc.returncode}"
                stopping.append(0)
        if page is not None and page.poll() is not None:  # not fatal: the queue still works
            note(f"queuectl: warning: the stats page exited with code {page.returncode}; "
                 "the broker and agents keep running")
            page = None
        time.sleep(0.2)  # supervising the children; nothing here is on a job's path
    note("Stopping: the stats page, then the agents finish running jobs, then the broker stops.")
    if page is not None:
        _stop(page, "stats page", 5)
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
