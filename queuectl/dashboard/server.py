"""Serving the stats page: where it may listen, and the waitress server.

This module imports Flask and waitress only inside ``run``, so the CLI can check
an address (``check_bind``) without paying for them.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import signal
import sys

from queuectl import logsetup
from queuectl.client import InvalidInput

from . import TOKEN_ENV

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
THREADS = 8  # each keeps its own broker connection (ZeroMQ sockets are per thread)
MIN_TOKEN_CHARS = 16
GENERATE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` are only reachable from this machine."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int, token: str | None) -> None:
    """Refuse (InvalidInput, exit 2) what would expose the queue, before binding anything."""
    if not 0 <= port <= 65535:
        raise InvalidInput(f"--port must be from 0 to 65535, got {port}")
    if not host.strip():
        raise InvalidInput("--host must not be empty (use 0.0.0.0 for every address)")
    if not host.isprintable() or any(c.isspace() or c in "/?#@" for c in host):
        raise InvalidInput(f"--host must be an address or a host name, got {host!r}")
    if not is_loopback(host):
        if not token:
            raise InvalidInput(f"binding {host} exposes the queue; give --token or set {TOKEN_ENV}")
        check_token(token, host, f"--token or {TOKEN_ENV}")


def check_token(token: str, host: str, source: str) -> None:
    """Refuse (InvalidInput) a token too easy to guess for a page on ``host``, an
    address other than loopback. It travels in an HTTP header and a URL, hence
    no spaces."""
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or \
            any(c.isspace() for c in token):
        raise InvalidInput(f"the stats page token ({source}) must be at least {MIN_TOKEN_CHARS} "
                           f"characters without spaces to bind {host}; make one with: "
                           f"{GENERATE_TOKEN}")


def url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/"


def run(host: str, port: int, endpoint: str, token: str | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C; returns the exit code (1 if it cannot listen)."""
    check_bind(host, port, token)
    logsetup.configure(os.environ.get("QUEUECTL_LOG_LEVEL", "WARNING"),
                       "queuectl-dashboard: %(levelname)s %(name)s: %(message)s")
    _check_endpoint(endpoint)
    from waitress.server import MultiSocketServer, create_server  # where the stubs declare it

    from .app import create_app

    app = create_app(endpoint, token)
    try:
        server = create_server(app, host=host.strip("[]"), port=port, threads=THREADS,
                               ident="queuectl")
    except (OSError, ValueError) as exc:  # waitress: ValueError for a host it cannot resolve
        reason = "address in use" if getattr(exc, "errno", None) == errno.EADDRINUSE else \
            (getattr(exc, "strerror", None) or str(exc)).lower()
        sys.stderr.write(f"queuectl: the stats page could not listen on {host}:{port} "
                         f"({reason})\n")
        return 1
    if isinstance(server, MultiSocketServer):  # a name that resolved to several addresses
        bound = server.effective_listen[0][1]
    else:
        bound = server.effective_port  # type: ignore[attr-defined]  # types-waitress omits it
    # Cookies ignore the port: two pages on one host must not overwrite each other's.
    app.config["SESSION_COOKIE_NAME"] = f"queuectl_session_{bound}"
    app.config["QUEUECTL_TOKEN_COOKIE"] = f"queuectl_token_{bound}"
    signal.signal(signal.SIGTERM, _exit_quietly)
    sys.stderr.write(f"queuectl: stats page on {url(host.strip('[]'), int(bound))} for broker "
                     f"{endpoint}{' (token required)' if token else ''}\n")
    sys.stderr.flush()
    server.run()  # returns on SIGTERM or Ctrl-C (waitress catches SystemExit)
    return 0


def _check_endpoint(endpoint: str) -> None:
    """A malformed endpoint is the user's mistake now (InvalidInput, exit 2), not a
    400 on every page later. A broker that is merely down is fine: the page says so."""
    from queuectl.client import BrokerUnreachable, Client

    with Client(endpoint, timeout=0.5) as qc:
        try:
            qc.ping()
        except BrokerUnreachable:
            pass


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)
