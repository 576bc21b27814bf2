"""``queuectl-broker``: parse options, take the store, bind, run until signalled."""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import zmq

from queuectl import logsetup
from queuectl.keys import KeyFileError, KeyStore

from .auth import Guard
from .server import Broker
from .store import Store

log = logging.getLogger("queuectl.broker")

DEFAULT_BIND = "tcp://127.0.0.1:5555"


def default_home() -> str:
    return os.environ.get("QUEUECTL_HOME") or os.path.expanduser("~/.local/share/queuectl")


def is_loopback(endpoint: str) -> bool:
    """True for ipc:// and inproc:// and for tcp:// on 127.0.0.0/8, ::1 or localhost."""
    scheme = endpoint.split("://", 1)[0]
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a DNS name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="queuectl-broker",
        description="The QueueCTL broker: owns the job store and dispatches jobs to agents. "
                    "`queuectl-broker backup PATH` copies the store while it runs.")
    parser.add_argument("--bind", default=DEFAULT_BIND,
                        help=f"ZeroMQ endpoint to bind (default {DEFAULT_BIND})")
    parser.add_argument("--db", default=None,
                        help="SQLite store (default $QUEUECTL_HOME/queue.db)")
    parser.add_argument("--keys", default=None,
                        help="CURVE keys directory (default $QUEUECTL_HOME/keys); with the "
                             "broker's key in it (queuectl keys init) every peer must "
                             "authenticate")
    parser.add_argument("--insecure", action="store_true",
                        help="allow binding a non-loopback address without CURVE keys")
    parser.add_argument("--sync", choices=("normal", "full"), default="normal",
                        help="SQLite synchronous mode: normal survives a process crash, "
                             "full also a power loss (default normal)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser.parse_args(argv)


def lock_store(db_path: str) -> int:
    """Hold an exclusive lock beside the store so that two brokers never share it."""
    fd = os.open(db_path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SystemExit(f"queuectl-broker: another broker (pid {holder}) owns {db_path}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["backup"]:
        from . import backup

        return backup.main(argv[1:], os.path.join(default_home(), "queue.db"))
    args = parse_args(argv)
    logsetup.configure(args.log_level)
    keys = KeyStore(Path(args.keys) if args.keys else Path(default_home()) / "keys")
    guard = None
    if keys.initialised():
        try:
            guard = Guard(keys)
        except KeyFileError as exc:
            print(f"queuectl-broker: {exc}", file=sys.stderr)
            return 2
        log.info("CURVE on: %d keys allowed (%s)", len(guard.allowed), keys.dir)
    elif not is_loopback(args.bind) and not args.insecure:
        print(f"queuectl-broker: refusing to bind {args.bind}: it is not a loopback address and "
              f"there are no CURVE keys in {keys.dir}; run `queuectl keys init` (then give "
              "agents and clients their keys), or pass --insecure to accept that anyone who "
              "can reach it may run commands", file=sys.stderr)
        return 2
    elif not is_loopback(args.bind):
        # Printed whatever the log level: this must not go unseen.
        print(f"queuectl-broker: WARNING: INSECURE: {args.bind} accepts unauthenticated agents "
              "and clients, and traffic is plaintext: anyone who can reach it can run commands "
              "on the agents. Run `queuectl keys init` to turn on CURVE.", file=sys.stderr)
    db_path = args.db or os.path.join(default_home(), "queue.db")
    # The store holds every job's command and environment (often secrets): a new
    # store, its WAL and its directory are for this user only.
    os.umask(0o077)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(db_path)), exist_ok=True)
        lock_fd = lock_store(db_path)
        store = Store(db_path, synchronous=args.sync.upper())
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - unreadable path, corrupt file, newer schema: one line
        print(f"queuectl-broker: cannot open the store {db_path}: {exc}", file=sys.stderr)
        return 1
    broker = Broker(store, args.bind, guard)
    try:
        broker.bind()
    except zmq.ZMQError as exc:
        print(f"queuectl-broker: cannot bind {args.bind}: {exc} (is another broker running?)",
              file=sys.stderr)
        store.close()
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: broker.request_stop())
    broker.run()
    os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
