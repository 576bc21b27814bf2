"""``queuectl dashboard``: the stats page alone, as a client of a broker.

Flask and waitress load only when the command runs (``queuectl --help`` stays fast).
"""

from __future__ import annotations

from typing import Annotated

import typer

from queuectl.dashboard import TOKEN_ENV

from .common import BrokerOpt
from .common import endpoint as common_endpoint


def dashboard(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(
        "--host", help="address to listen on; any but loopback needs --token")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, help="port to listen on (0 picks a free one)")] = 8080,
    token: Annotated[str | None, typer.Option(
        "--token", envvar=TOKEN_ENV, show_envvar=True,
        help="access token every request must carry (Authorization: Bearer, or ?token= once)")]
    = None,
    broker: BrokerOpt = None,
) -> None:
    """Serve the stats page (live counters, charts, agents, jobs, DLQ, /metrics)
    until Ctrl-C."""
    from queuectl.client import default_endpoint
    from queuectl.dashboard.server import check_bind, run

    check_bind(host, port, token)  # refuse before anything heavy is imported
    endpoint = common_endpoint(ctx, broker) or default_endpoint()
    raise typer.Exit(run(host, port, endpoint, token or None))
