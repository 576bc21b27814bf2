"""Real network partitions for the fault suite: Linux network namespaces and veth links.

A ``Topology`` creates namespaces with unique names (``qctl-<pid>-<n>``, so
parallel test runs never collide), joins two of them with a veth pair whose
ends are created directly inside the namespaces (nothing appears in the root
namespace), and gives each end an address in a private test range,
``10.250.<link>.0/24``, set inside those namespaces only. ``Link.cut`` takes
both ends down, a cable pulled out; ``Link.heal`` puts it back. ``cleanup``
deletes every namespace it created (which also destroys their veth pairs),
even after a failure; call it after the processes inside were killed.

Programs run inside a namespace as ``ip netns exec NAME ARGV``, which execs
ARGV, so the PID a test sees is the program's own PID.

``Bridge`` lets the test process, which stays in the root namespace, talk to
a server inside a namespace: a small forwarder process listens on
127.0.0.1 in the root namespace, moves its own network namespace into the
target with ``setns(2)``, and relays each connection to the server there.
The bridge only carries the test's admin traffic: agents reach the broker
over their veth links, which is where partitions are cut.

Run as a script, this module is that forwarder:
``python netns.py bridge NAMESPACE LISTEN_PORT TARGET_HOST TARGET_PORT``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"
CLONE_NEWNET = 0x40000000
SUBNET = "10.250.{}.0/24"


class Unavailable(RuntimeError):
    """Network namespaces cannot be used here (not root, no iproute2, no privilege)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([IP, *args], check=False, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({result.returncode}): "
                           f"{result.stderr.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why ``ip netns`` cannot be used by this process, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run the partition tests as root"
    if not os.path.exists(IP):
        return "iproute2's `ip` command is not installed"
    result = _ip("netns", "help", check=False)
    if "netns" not in (result.stdout + result.stderr):
        return "this `ip` has no netns support"
    return None


@dataclass
class Namespace:
    name: str

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs it: same PID)."""
        return [IP, "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.exec_argv(argv), check=False, capture_output=True, text=True,
                              timeout=timeout)

    def ip(self, *args: str) -> subprocess.CompletedProcess:
        return _ip("-n", self.name, *args)

    def can_connect(self, host: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from inside this namespace reaches ``host:port``
        (there is no ping here; a real socket is the better witness anyway)."""
        probe = ("import socket, sys\n"
                 f"try:\n    socket.create_connection(({host!r}, {port}), {timeout}).close()\n"
                 "except OSError:\n    sys.exit(1)\n")
        result = self.run([sys.executable, "-c", probe], timeout=timeout + 20)
        return result.returncode == 0


@dataclass
class Link:
    """A veth pair: ``left`` end in one namespace, ``right`` end in another."""

    left: Namespace
    right: Namespace
    left_dev: str
    right_dev: str
    left_addr: str
    right_addr: str
    cut_count: int = 0

    def cut(self) -> None:
        """Pull the cable: both ends down. The right side's routes to the left go
        away, so its connection attempts fail at once rather than hanging."""
        self.left.ip("link", "set", self.left_dev, "down")
        self.right.ip("link", "set", self.right_dev, "down")
        self.cut_count += 1

    def heal(self) -> None:
        """Plug it back in: the left end first, so that when the right side's
        route returns, the peer already answers."""
        self.left.ip("link", "set", self.left_dev, "up")
        self.right.ip("link", "set", self.right_dev, "up")

    def is_up(self) -> bool:
        out = self.left.ip("-o", "link", "show", self.left_dev).stdout
        out += self.right.ip("-o", "link", "show", self.right_dev).stdout
        return out.count("state UP") == 2


@dataclass
class Topology:
    """Namespaces and links created by one test; ``cleanup`` removes them all."""

    prefix: str = field(default_factory=lambda: f"qctl-{os.getpid()}")
    namespaces: list[Namespace] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    _counter: itertools.count = field(default_factory=itertools.count)

    def namespace(self) -> Namespace:
        ns = Namespace(f"{self.prefix}-{next(self._counter)}")
        result = _ip("netns", "add", ns.name, check=False)
        if result.returncode != 0:
            raise Unavailable(f"ip netns add {ns.name} failed: {result.stderr.strip()}")
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def link(self, left: Namespace, right: Namespace) -> Link:
        """Join two namespaces; the left end gets 10.250.N.1, the right end .2."""
        n = len(self.links) + 1
        if n > 254:
            raise ValueError("too many links for the 10.250.N.0/24 plan")
        # Device names live inside the namespaces only: "v<link>-<peer index>".
        left_dev = f"v{n}-{right.name.rsplit('-', 1)[1]}"[:15]
        right_dev = f"v{n}-{left.name.rsplit('-', 1)[1]}"[:15]
        _ip("link", "add", "name", left_dev, "netns", left.name, "type", "veth",
            "peer", "name", right_dev, "netns", right.name)
        subnet = SUBNET.format(n)
        left_addr, right_addr = subnet.replace(".0/24", ".1"), subnet.replace(".0/24", ".2")
        link = Link(left, right, left_dev, right_dev, left_addr, right_addr)
        self.links.append(link)
        left.ip("addr", "add", f"{left_addr}/24", "dev", left_dev)
        right.ip("addr", "add", f"{right_addr}/24", "dev", right_dev)
        left.ip("link", "set", left_dev, "up")
        right.ip("link", "set", right_dev, "up")
        return link

    def cleanup(self) -> list[str]:
        """Delete every namespace (their veth ends go with them); returns errors."""
        errors = []
        for ns in reversed(self.namespaces):
            result = _ip("netns", "del", ns.name, check=False)
            if result.returncode != 0 and "No such file" not in result.stderr:
                errors.append(f"{ns.name}: {result.stderr.strip()}")
        self.namespaces.clear()
        self.links.clear()
        return errors

    def leftovers(self) -> list[str]:
        """Namespaces with this topology's prefix that still exist."""
        listing = _ip("netns", "list", check=False).stdout.split()
        return [name for name in listing if name.startswith(self.prefix + "-")]


def bridge_argv(ns: Namespace, listen_port: int, target_host: str, target_port: int) -> list[str]:
    """The forwarder: 127.0.0.1:listen_port in the root namespace -> target in ``ns``."""
    return [sys.executable, str(Path(__file__).resolve()), "bridge", ns.name,
            str(listen_port), target_host, str(target_port)]


# --- the forwarder process ------------------------------------------------------

def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


def _serve_bridge(ns_name: str, listen_port: int, target_host: str, target_port: int) -> None:
    import ctypes

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))  # created in the root namespace
    listener.listen(64)
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{ns_name}") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns_name}: {os.strerror(err)}")
    # From here on, new sockets (the upstream connections) live in ns_name.
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection((target_host, target_port), timeout=5)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "bridge":
        _serve_bridge(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit("usage: netns.py bridge NAMESPACE LISTEN_PORT TARGET_HOST TARGET_PORT")
