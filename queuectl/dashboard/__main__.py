"""``python -m queuectl.dashboard [--host H] [--port P] [--broker E] [--token T]``.

The same stats page as ``queuectl dashboard``; ``queuectl up`` starts it this way.
"""

from __future__ import annotations

import argparse
import os
import sys

from queuectl.client import QueueError, default_endpoint

from . import TOKEN_ENV
from .server import DEFAULT_HOST, DEFAULT_PORT, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m queuectl.dashboard",
        description="The QueueCTL stats page, as a client of a broker.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on [default: {DEFAULT_HOST}]")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on; 0 picks a free one [default: {DEFAULT_PORT}]")
    parser.add_argument("--broker", default=None,
                        help="broker endpoint [default: $QUEUECTL_BROKER or tcp://127.0.0.1:5555]")
    parser.add_argument("--token", default=None,
                        help=f"access token every request must carry [default: ${TOKEN_ENV}]")
    args = parser.parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        return run(args.host, args.port, args.broker or default_endpoint(), token)
    except QueueError as exc:
        sys.stderr.write(f"queuectl: {exc}\n")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
