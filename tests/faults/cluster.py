"""Real brokers and agents inside network namespaces (see ``netns.py``).

The test process stays in the root namespace and reaches the broker through a
forwarder on 127.0.0.1 (``netns.bridge_argv``); agents reach it only over
their veth links. With CURVE (``queuectl keys init`` in the broker's home) the
test's clients use the home's admin key, and each agent the key it is given.
"""

from __future__ import annotations

import os
from pathlib import Path

from faults import netns
from harness import LoggedProcess, free_port, program, wait_until

BROKER_PORT = 5555  # inside namespace B, which is new and empty, so it is free


class NsBroker:
    """A real broker inside namespace ``ns``, bound to every address there.

    Duck-types ``harness.Broker`` where tests need it (``client``, ``env``,
    ``endpoint``, ``log``), so ``ledger.audit`` and ``harness.run_cli`` work
    through the bridge. ``insecure``: bind without CURVE (needs --insecure).
    """

    def __init__(self, procs, ns: netns.Namespace, home: Path, insecure: bool = True):
        self.procs, self.ns, self.home, self.insecure = procs, ns, home, insecure
        self.inside = f"tcp://127.0.0.1:{BROKER_PORT}"  # as seen from inside B
        self.bridge_port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.bridge_port}"  # from the root namespace
        self.proc: LoggedProcess | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "QUEUECTL_HOME": str(self.home), "QUEUECTL_BROKER": self.endpoint}

    def start(self) -> NsBroker:
        argv = program("queuectl-broker") + ["--bind", f"tcp://*:{BROKER_PORT}",
                                             "--db", str(self.home / "queue.db")]
        if self.insecure:
            argv.append("--insecure")
        self.proc = self.procs.start(self.ns.exec_argv(argv), "broker.log", env=self.env())
        self.procs.start(netns.bridge_argv(self.ns, self.bridge_port, "127.0.0.1", BROKER_PORT),
                         "bridge.log")
        wait_until(self.answers, 20, message=f"the broker in {self.ns.name}")
        return self

    def answers(self) -> bool:
        from queuectl.client import BrokerUnreachable

        assert self.proc is not None  # start() started it
        if self.proc.poll() is not None:
            raise RuntimeError(f"broker exited with {self.proc.returncode}: {self.log()}")
        try:
            with self.client(timeout=0.5) as qc:
                qc.ping()
            return True
        except BrokerUnreachable:
            return False

    def key_files(self) -> dict[str, str]:
        keys = self.home / "keys"
        if (keys / "broker.key").exists():
            return {"key": str(keys / "client.key_secret"), "broker_key": str(keys / "broker.key")}
        return {}

    def client(self, timeout: float = 5.0):
        from queuectl.client import Client

        return Client(self.endpoint, timeout=timeout, **self.key_files())

    def cli_inside(self, *args: str) -> str:
        """``queuectl ARGS`` run inside B against the broker's own loopback address."""
        result = self.ns.run(program("queuectl") + ["--broker", self.inside, *args], timeout=60)
        assert result.returncode == 0, f"queuectl {' '.join(args)} in B failed: {result.stderr}"
        return result.stdout

    def log(self) -> str:
        assert self.proc is not None  # start() started it
        return Path(self.proc.log_path).read_text(errors="replace")[-4000:]


class NsAgent:
    """A real ``queuectl-agent`` inside namespace ``ns``, reaching the broker over ``link``."""

    def __init__(self, procs, broker: NsBroker, ns: netns.Namespace, link: netns.Link,
                 count: int, name: str, labels: dict[str, str] | None = None,
                 env: dict[str, str] | None = None):
        argv = program("queuectl-agent") + ["--count", str(count),
                                            "--broker", f"tcp://{link.left_addr}:{BROKER_PORT}"]
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        self.proc = procs.start(ns.exec_argv(argv), f"{name}.log",
                                env={**broker.env(), **(env or {})})
        self.pid = self.proc.pid  # `ip netns exec` execs the agent: same PID
        self.name = name
        self.id = wait_until(lambda: self._registered(broker), 20,
                             message=f"{name} (pid {self.pid}) to connect")

    def _registered(self, broker: NsBroker) -> str | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log()}")
        with broker.client() as qc:
            return next((a["id"] for a in qc.agents() if a["pid"] == self.pid), None)

    def log(self) -> str:
        return Path(self.proc.log_path).read_text(errors="replace")[-4000:]
