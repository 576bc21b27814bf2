"""``queuectl keys``: the CURVE keys of the broker's host (see queuectl/keys.py).

These commands edit ``$QUEUECTL_HOME/keys`` on the broker's host; they do not
talk to the broker. A running broker sees a key added or revoked within a
moment (it re-reads the allow-list when it changes).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from queuectl.proto.states import Role

from .common import JsonOpt, emit_json, note, say
from .visible import visible

if TYPE_CHECKING:
    from queuectl.keys import KeyStore  # imported where used: no I/O at import time

app = typer.Typer(help="CURVE keys: the broker's own, and who may connect (run on the broker's "
                       "host; edits $QUEUECTL_HOME/keys).", no_args_is_help=True)


def _store() -> KeyStore:
    from queuectl.keys import KeyStore, keys_dir

    return KeyStore(keys_dir())


def _fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"queuectl: {visible(message)}\n")
    raise typer.Exit(code)


def _checked_name(name: str) -> str:
    from queuectl.keys import NAME

    if not NAME.fullmatch(name):
        _fail(f"bad key name {name[:70]!r}: use 1-64 of A-Z a-z 0-9 . _ - "
              "(starting with a letter or digit)", 2)
    return name


@app.command("init")
def keys_init() -> None:
    """Create the broker's key pair, which turns CURVE on at its next start, and an
    admin key for this host's own CLI and agents (keys/client.key_secret)."""
    store = _store()
    try:
        store.init()
    except FileExistsError as exc:
        _fail(f"{exc}. To start over, stop the broker and remove {store.dir}; every "
              "agent and client then needs a new key")
    say(f"Broker keys created in {store.dir}")
    note("Restart the broker to turn CURVE on. Then give each agent host its own key "
         "(queuectl keys add-agent NAME) and each client one (queuectl keys add-client NAME).")


def _issue(name: str, role: str) -> None:
    store = _store()
    if not store.initialised():
        _fail(f"no broker keys in {store.dir}: run `queuectl keys init` first")
    try:
        secret = store.issue(_checked_name(name), role)
    except FileExistsError as exc:
        _fail(f"{exc}; revoke it first (queuectl keys revoke {name})")
    say(f"Created {role} key {name}: {secret}")
    note("Copy it and the broker's public key to the host that will use them:")
    note(f"  {secret} -> $QUEUECTL_HOME/keys/client.key_secret (or point QUEUECTL_KEY at it)")
    note(f"  {store.broker_public} -> $QUEUECTL_HOME/keys/broker.key "
         "(or point QUEUECTL_BROKER_KEY at it)")
    note(f"Keep the secret file private (0600); anyone who has it is {name}.")


@app.command("add-agent")
def add_agent(name: Annotated[str, typer.Argument(help="a name for the agent host")]) -> None:
    """Create a key that may only run jobs (an agent), and allow it."""
    _issue(name, Role.AGENT.value)


@app.command("add-client")
def add_client(
    name: Annotated[str, typer.Argument(help="a name for the client")],
    read_only: Annotated[bool, typer.Option(
        "--read-only", help="may only read: status, lists, logs (for the stats page)")] = False,
) -> None:
    """Create an admin client key (enqueue, manage jobs and config), or with
    --read-only one that may only read, and allow it."""
    _issue(name, (Role.READER if read_only else Role.ADMIN).value)


@app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="the key's name")]) -> None:
    """Take a key off the allow-list. The broker refuses it from then on, and an
    agent connected with it is dropped (its jobs run again elsewhere)."""
    found = _store().revoke(_checked_name(name))
    if found is None:
        _fail(f"no key named {name!r} (see queuectl keys list)")
    say(f"Revoked {found.role} key {name}")


@app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """The keys the broker allows, with their roles."""
    store = _store()
    allowed = sorted(({"name": p.name, "role": p.role, "public_key": key.decode()}
                      for key, p in store.allowed().items()),
                     key=lambda k: (k["role"], k["name"]))
    if as_json:
        emit_json(allowed)
        return
    from . import render

    render.table(f"Allowed keys ({store.dir})", ("Name", "Role", "Public key"),
                 [(k["name"], k["role"], k["public_key"]) for k in allowed])
