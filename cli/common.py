"""Options and helpers shared by every command module of the CLI."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from queuectl.client import Client

BrokerOpt = Annotated[Optional[str], typer.Option(
    "--broker", envvar="QUEUECTL_BROKER", show_envvar=True,
    help="broker endpoint [default: tcp://127.0.0.1:5555]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]


def client(ctx: typer.Context, broker: str | None) -> "Client":
    """A client for ``--broker`` (the command's, else the global one, else the default)."""
    from queuectl.client import Client

    endpoint = broker or (ctx.obj or {}).get("broker")
    return Client(endpoint)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document) + "\n")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")


def note(text: str) -> None:
    """Progress for people, on stderr so stdout stays clean for scripts."""
    sys.stderr.write(text + "\n")
