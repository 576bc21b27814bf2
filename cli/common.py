"""Options and helpers shared by every command module of the CLI."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .visible import visible

if TYPE_CHECKING:
    from queuectl.client import Client

# Only the global option reads QUEUECTL_BROKER, so a command's own --broker
# given on the command line always wins over the environment.
BrokerOpt = Annotated[str | None, typer.Option(
    "--broker", help="broker endpoint [default: $QUEUECTL_BROKER or tcp://127.0.0.1:5555]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]


def client(ctx: typer.Context, broker: str | None) -> Client:
    """A client for ``--broker`` (the command's, else the global one, else the default)."""
    from queuectl.client import Client

    return Client(endpoint(ctx, broker))


def endpoint(ctx: typer.Context, broker: str | None) -> str | None:
    """The command's ``--broker``, else the global one (which reads QUEUECTL_BROKER)."""
    return broker or (ctx.obj or {}).get("broker")


def emit_json(document: Any) -> None:
    # allow_nan=False: a NaN or an infinity is not JSON; better an error than a
    # document a script cannot parse (the broker never sends one: broker/views.py).
    sys.stdout.write(json.dumps(document, allow_nan=False) + "\n")


def present(document: Any, as_json: bool, table: str) -> None:
    """Print ``document`` as JSON for scripts, or as ``render.<table>`` for people."""
    if as_json:
        emit_json(document)
    else:
        from . import render  # rich loads only when a table is printed

        getattr(render, table)(document)


def say(text: str) -> None:
    """One line for people, on stdout; control characters in it show escaped."""
    sys.stdout.write(visible(text) + "\n")


def note(text: str) -> None:
    """One line of progress for people, on stderr so stdout stays clean for scripts."""
    sys.stderr.write(visible(text) + "\n")
