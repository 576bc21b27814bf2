"""``queuectl-agent``: connect N execution slots to a broker and run jobs."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from queuectl import logsetup
from queuectl.transport import DEFAULT_BROKER, default_endpoint


def parse_label(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (key, value); raises argparse.ArgumentTypeError."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"label {text!r} must be KEY=VALUE")
    return key.strip(), value.strip()


def run_agent(broker: str, count: int, labels: dict[str, str], grace: float,
              key: str | None = None, broker_key: str | None = None) -> int:
    """Run an agent in the foreground until SIGTERM/SIGINT; returns the exit code.
    ``key``/``broker_key``: CURVE key files (see queuectl.keys)."""
    import zmq  # imported here, not at CLI start-up

    from queuectl.keys import KeyFileError, client_keys

    from .worker import Agent

    try:
        keys = client_keys(key, broker_key)
    except KeyFileError as exc:
        print(f"queuectl-agent: {exc}", file=sys.stderr)
        return 2
    agent = Agent(broker, count, labels, grace, keys)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: agent.signal(signum))
    try:
        return agent.run()
    except zmq.ZMQError as exc:
        if agent.watchdog is not None:
            raise  # not an endpoint problem: a bug worth its traceback
        print(f"queuectl-agent: bad broker endpoint {broker!r}: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="queuectl-agent",
        description="Run QueueCTL jobs: connect N execution slots to a broker.")
    parser.add_argument("--count", type=int, default=os.cpu_count() or 1,
                        help="execution slots, jobs run at once (default: number of CPUs)")
    parser.add_argument("--broker", default=default_endpoint(),
                        help=f"broker endpoint (default $QUEUECTL_BROKER or {DEFAULT_BROKER})")
    parser.add_argument("--label", type=parse_label, action="append", default=[],
                        metavar="KEY=VALUE", help="a label jobs can require (repeatable)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds running jobs may finish after a stop request (default 30)")
    parser.add_argument("--key", default=None,
                        help="this agent's CURVE key, a .key_secret file (default "
                             "$QUEUECTL_KEY, else $QUEUECTL_HOME/keys/client.key_secret)")
    parser.add_argument("--broker-key", default=None,
                        help="the broker's public CURVE key, broker.key (default "
                             "$QUEUECTL_BROKER_KEY, else $QUEUECTL_HOME/keys/broker.key)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 10_000:
        parser.error("--count must be from 1 to 10000")
    if args.grace < 0:
        parser.error("--grace must be zero or more")
    logsetup.configure(args.log_level)
    return run_agent(args.broker, args.count, dict(args.label), args.grace, args.key,
                     args.broker_key)


if __name__ == "__main__":
    sys.exit(main())
