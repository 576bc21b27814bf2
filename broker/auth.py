"""Who may do what: CURVE on the broker's socket, a ZAP handler, and roles.

With keys (``queuectl keys init``) the ROUTER is a CURVE server. pyzmq's ZAP
authenticator (``zmq.auth``, in its own thread) accepts a handshake only from a
public key on the allow-list, which it reads from the keys directory whenever
that changed, so a key added or revoked counts for the next connection. A
connection made before a revocation stays open in libzmq, so the broker also
checks the key behind every frame (the ZAP User-Id, which libzmq attaches to
each message) against the allow-list, refreshed once per maintenance tick.

The ROUTER hands an identity over to the newest connection that claims it
(``ROUTER_HANDOVER``, so a reconnecting agent gets its own back), and ZAP does
not see the identity a peer claims. So an agent's routing identity carries a
secret part (``agent/worker.py``): one that ``queuectl agents`` shows no one,
so no other key can claim it and receive that agent's jobs.

Roles: ``admin`` may do everything (it could enqueue any command anyway);
``agent`` may only speak the agent protocol (run jobs); ``reader`` may only
make requests that change nothing (the stats page's role): each operation's
least role is declared with it (``queuectl/proto/ops.py``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

from queuectl.keys import KeyStore, Principal, load
from queuectl.proto import messages as m
from queuectl.proto import ops
from queuectl.proto.states import Role

log = logging.getLogger(__name__)

ZAP_DOMAIN = "queuectl"


class Guard:
    """The allow-list as the broker sees it, and the check of each message."""

    def __init__(self, store: KeyStore):
        """Raises KeyFileError if the broker's own key cannot be read."""
        self.keys = store
        self.public, self.secret = load(store.broker_secret, secret=True)
        self._lock = threading.Lock()  # the ZAP thread and the loop both refresh
        self._stamp: tuple[object, ...] | None = None
        self._unseen_change = False  # a change the loop has not acted on (``changed``)
        self.allowed: dict[bytes, Principal] = {}
        self.refresh()
        self._unseen_change = False
        self._auth: Any = None  # zmq.auth.thread.ThreadAuthenticator, with CURVE

    def refresh(self) -> None:
        """Re-read the allow-list if it changed on disk."""
        with self._lock:
            stamp = self.keys.stamp()
            if stamp == self._stamp:
                return
            problems: list[str] = []
            self.allowed, self._stamp = self.keys.allowed(problems), stamp
            self._unseen_change = True
        for problem in problems:
            log.warning("allow-list: %s; it allows no one", problem)

    def changed(self) -> bool:
        """For the broker's loop: refresh, and say whether the allow-list changed
        since the loop last asked (the ZAP thread may have re-read it first)."""
        self.refresh()
        with self._lock:
            changed, self._unseen_change = self._unseen_change, False
        return changed

    # --- the socket ------------------------------------------------------------

    def secure(self, ctx: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes]) -> None:
        """Before ``bind``: make ``sock`` a CURVE server behind the ZAP handler."""
        from zmq.auth.thread import ThreadAuthenticator  # loads asyncio: only with CURVE

        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("queuectl.broker.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP (in the authenticator's thread): may this public key connect?"""
        self.refresh()
        principal = self.allowed.get(key)
        if principal is None:
            log.warning("refused a connection: its key %s... is not on the allow-list",
                        key[:8].decode(errors="replace"))
        return principal is not None

    def allows_agent(self, name: str) -> bool:
        return any(p.name == name and p.role in (Role.ADMIN, Role.AGENT)
                   for p in self.allowed.values())

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    # --- each message ------------------------------------------------------------

    def who(self, user_id: str | None) -> Principal | None:
        """The principal behind a frame's ZAP User-Id (its z85 public key), or
        None when that key is no longer allowed."""
        if not user_id:
            return None
        return self.allowed.get(user_id.encode())


def forbidden(principal: Principal | None, msg: Any) -> str | None:
    """Why ``principal`` may not send ``msg``, or None if it may."""
    if principal is None:
        return "this key is not on the broker's allow-list (revoked?)"
    if principal.role == Role.ADMIN:
        return None
    if isinstance(msg, m.Request):
        op = ops.OPS.get(msg.op)
        if principal.role == Role.READER and op is not None and op.role is Role.READER:
            return None
        return f"the key {principal.name!r} ({principal.role}) may not make {msg.op!r} requests"
    if principal.role == Role.AGENT:
        return None
    return f"the key {principal.name!r} ({principal.role}) may not act as an agent"
