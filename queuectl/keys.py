"""CURVE keys: where they live, how they are made, and how sockets use them.

Layout under ``$QUEUECTL_HOME/keys`` (the directory is 0700, every file 0600):

    broker.key, broker.key_secret     the broker's pair (``queuectl keys init``)
    client.key_secret                 this host's own credential, used by default
    allowed/ROLE/NAME.key             public keys the broker accepts, by role
    issued/NAME.key_secret            pairs made by ``keys add-agent|add-client``,
                                      to copy to the host that will use them

The files are pyzmq's certificate format (``zmq.auth``). A broker whose keys
directory holds ``broker.key_secret`` speaks CURVE only. A client or agent uses
CURVE when it has a key: ``QUEUECTL_KEY`` (its ``.key_secret``) and
``QUEUECTL_BROKER_KEY`` (the broker's ``broker.key``), else the two files of
its own keys directory, when they exist.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import zmq

from queuectl.proto.states import Role

ROLES = tuple(role.value for role in Role)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LOCAL = "local"  # the admin credential ``keys init`` makes for the broker's own host


class KeyFileError(Exception):
    """A key file is missing, unreadable or malformed; the message says which."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


def home() -> Path:
    return Path(os.environ.get("QUEUECTL_HOME") or os.path.expanduser("~/.local/share/queuectl"))


def keys_dir(base: Path | None = None) -> Path:
    return (base or home()) / "keys"


@overload
def load(path: Path, secret: Literal[True]) -> tuple[bytes, bytes]: ...
@overload
def load(path: Path, secret: bool) -> tuple[bytes, bytes | None]: ...


def load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys of a certificate file; raises KeyFileError for a
    file that is missing, unreadable, or does not hold valid CURVE keys."""
    import zmq.auth  # loads asyncio: only when there are keys to read
    from zmq.utils import z85

    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except OSError as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    except Exception:  # noqa: BLE001 - pyzmq's parser raises IndexError, ValueError... on damage
        raise KeyFileError(f"the key file {path} is damaged: it is not a CURVE "
                           "certificate (make a new one with queuectl keys)") from None
    keys = [public] + ([secret_key] if secret else [])
    for key in keys:
        try:
            valid = key is not None and len(key) == 40 and len(z85.decode(key)) == 32
        except Exception:  # noqa: BLE001 - a character outside z85
            valid = False
        if not valid:
            what = "a secret key (.key_secret)" if secret else "a public key"
            raise KeyFileError(f"the key file {path} does not hold {what}")
    return public, secret_key


def _make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A new pair as ``NAME.key`` and ``NAME.key_secret`` in ``directory``, 0600."""
    import zmq.auth

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old)
    for path in (public, secret):
        os.chmod(path, 0o600)
    return Path(public), Path(secret)


def _install(source: Path, target: Path) -> None:
    """Copy a key file into place atomically, 0600 (a reader never sees half a key)."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


class KeyStore:
    """The broker host's keys directory (``queuectl keys`` edits it)."""

    def __init__(self, directory: Path):
        self.dir = directory

    @property
    def broker_secret(self) -> Path:
        return self.dir / "broker.key_secret"

    @property
    def broker_public(self) -> Path:
        return self.dir / "broker.key"

    def initialised(self) -> bool:
        return self.broker_secret.exists()

    def init(self) -> None:
        """The broker's pair, plus an admin credential for this host's own CLI."""
        if self.initialised():
            raise FileExistsError(f"{self.broker_secret} exists already; the broker has keys")
        for folder in (self.dir, self.dir / "allowed", self.dir / "issued"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        _make_pair(self.dir, "broker")
        if self.find(LOCAL) is None:
            self.issue(LOCAL, "admin")
        _install(self.dir / "issued" / f"{LOCAL}.key_secret", self.dir / "client.key_secret")

    def issue(self, name: str, role: str) -> Path:
        """A new pair for ``name``, allowed with ``role``; returns its secret file."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if self.find(name) is not None:
            raise FileExistsError(f"a key named {name!r} exists already")
        issued = self.dir / "issued"
        public, secret = _make_pair(issued, name)
        _install(public, self.dir / "allowed" / role / f"{name}.key")
        public.unlink()
        return secret

    def find(self, name: str) -> Principal | None:
        for role in ROLES:
            if (self.dir / "allowed" / role / f"{name}.key").exists():
                return Principal(name, role)
        return None

    def revoke(self, name: str) -> Principal | None:
        """Take ``name`` off the allow-list (the broker sees it within a moment)
        and delete its issued secret. Returns what was revoked, or None."""
        found = self.find(name)
        if found is None:
            return None
        (self.dir / "allowed" / found.role / f"{name}.key").unlink()
        (self.dir / "issued" / f"{name}.key_secret").unlink(missing_ok=True)
        return found

    def allowed(self, problems: list[str] | None = None) -> dict[bytes, Principal]:
        """z85 public key -> who it is, from the allow-list as it is now. An
        unreadable or damaged file allows no one; why goes to ``problems``."""
        result: dict[bytes, Principal] = {}
        for role in ROLES:
            folder = self.dir / "allowed" / role
            try:
                entries = sorted(folder.iterdir())
            except FileNotFoundError:
                continue
            for path in entries:
                if path.suffix != ".key" or path.name.startswith("."):
                    continue
                try:
                    public, _ = load(path, secret=False)
                except KeyFileError as exc:
                    if problems is not None:
                        problems.append(str(exc))
                    continue
                result.setdefault(public, Principal(path.stem, role))
        return result

    def stamp(self) -> tuple[object, ...]:
        """Changes whenever the allow-list may have changed: a file added, removed,
        or written over in place (each file's inode, size and mtime)."""
        stamps: list[object] = []
        for role in ROLES:
            folder = self.dir / "allowed" / role
            try:
                with os.scandir(folder) as entries:
                    files = sorted((entry.name, entry.inode(), entry.stat().st_size,
                                    entry.stat().st_mtime_ns) for entry in entries)
                stamps.append((folder.stat().st_ino, tuple(files)))
            except FileNotFoundError:
                stamps.append(None)
        return tuple(stamps)


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server: bytes


def client_keys(key: str | None = None, broker_key: str | None = None) -> ClientKeys | None:
    """The credential a client or agent connects with, or None for no CURVE.

    Each of the two files is the explicit path (an option), else its variable
    (QUEUECTL_KEY, QUEUECTL_BROKER_KEY), else the file in the keys directory
    if it exists. Having one of the pair without the other is an error
    (raises KeyFileError), as is a file that cannot be read."""
    key = key or os.environ.get("QUEUECTL_KEY") or _existing(keys_dir() / "client.key_secret")
    broker_key = (broker_key or os.environ.get("QUEUECTL_BROKER_KEY")
                  or _existing(keys_dir() / "broker.key"))
    if key is None and broker_key is None:
        return None
    if key is None or broker_key is None:
        missing = "this client's own key (QUEUECTL_KEY, a .key_secret file)" if key is None \
            else "the broker's public key (QUEUECTL_BROKER_KEY, its broker.key)"
        raise KeyFileError(f"CURVE needs two keys, and {missing} is missing")
    public, secret = load(Path(key), secret=True)
    server, _ = load(Path(broker_key), secret=False)
    return ClientKeys(public, secret, server)


def _existing(path: Path) -> str | None:
    return str(path) if path.exists() else None


def secure_client(sock: zmq.Socket[bytes], keys: ClientKeys | None) -> None:
    """Before ``connect``: speak CURVE with these keys (nothing for None)."""
    if keys is not None:
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public
        sock.curve_serverkey = keys.server
