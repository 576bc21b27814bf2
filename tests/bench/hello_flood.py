"""What a flood of fake agents costs the broker, and what it keeps afterwards.

    python tests/bench/hello_flood.py [--agents 3000] [--slots 10000] [--rounds 2] [--big-labels]

Starts a broker on a free loopback port. Each round, ``--agents`` raw DEALER
sockets each say Hello as an agent of ``--slots`` slots (with a secret routing
identity, as real agents do) and wait for the Welcome; then they all close,
and the round waits until the broker has forgotten every one of them (after
its lease). Prints per round: the broker's RSS when they are all connected
and once they are gone (and a few seconds later), the broker's CPU seconds
for the Hellos, and how long another client's ``status`` and an ``enqueue``
took meanwhile. ``--big-labels`` gives each agent labels of its own as large
as the broker allows (56 of 72 characters).
Only ``queuectl.proto`` and the harness are used, so an older checkout can run
it too (``BASE/.venv/bin/python tests/bench/hello_flood.py`` from this tree).
"""

from __future__ import annotations

import argparse
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Broker, Processes, configure, wait_until
from queuectl.proto import encode
from queuectl.proto import messages as m


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def labels(n: int, big: bool) -> dict[str, str]:
    if not big:
        return {"team": f"t{n % 50}"}
    return {f"{n:06d}{'k' * 40}{i:02d}": f"{n}{'v' * 20}" for i in range(56)}


def flood(ctx: zmq.Context, endpoint: str, agents: int, slots: int, label: str,
          big: bool) -> list:
    sockets = []
    for n in range(agents):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        agent_id = f"flood-{label}-{n}"
        routing = f"{agent_id}/{secrets.token_hex(16)}"
        sock.setsockopt(zmq.IDENTITY, routing.encode())
        sock.connect(endpoint)
        sock.send(encode(m.Hello(agent_id=agent_id, host="flood", pid=1, slots=slots,
                                 labels=labels(n, big), routing=routing)))
        sockets.append(sock)
    for sock in sockets:  # a Welcome (or a refusal) for each
        if not sock.poll(120_000):
            raise SystemExit("the broker did not answer a Hello within 120 s")
        sock.recv()
    return sockets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=3000)
    parser.add_argument("--slots", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--big-labels", action="store_true")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4 * args.agents + 1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    with tempfile.TemporaryDirectory() as tmp:
        procs = Processes(Path(tmp))
        try:
            home = Path(tmp) / "home"
            home.mkdir()
            broker = Broker(procs, home).start()
            assert broker.proc is not None  # started
            resource.prlimit(broker.proc.pid, resource.RLIMIT_NOFILE, (want, hard))
            configure(broker, heartbeat_sec=0.5, lease_sec=2)
            pid = broker.proc.pid
            print(f"broker idle: {rss_mib(pid):.0f} MiB")
            ctx = zmq.Context()
            ctx.set(zmq.MAX_SOCKETS, args.agents + 100)
            for n in range(args.rounds):
                cpu, start = cpu_seconds(pid), time.monotonic()
                sockets = flood(ctx, broker.endpoint, args.agents, args.slots, str(n),
                                args.big_labels)
                seconds, used = time.monotonic() - start, cpu_seconds(pid) - cpu
                with broker.client(timeout=30) as qc:
                    asked = time.monotonic()
                    connected = qc.status()["agents"]
                    status_ms = (time.monotonic() - asked) * 1000
                    asked = time.monotonic()
                    qc.enqueue({"command": "true", "requires": {"team": "nobody"}})
                    enqueue_ms = (time.monotonic() - asked) * 1000
                peak = rss_mib(pid)
                for sock in sockets:
                    sock.close(linger=0)
                with broker.client(timeout=30) as qc:
                    wait_until(lambda: qc.status()["agents"] == 0, 120,
                               message="the fake agents to be forgotten")
                gone = rss_mib(pid)
                time.sleep(3)  # what it keeps, not what it is still freeing
                print(f"round {n + 1}: {connected} agents said Hello in {seconds:.1f} s "
                      f"(broker CPU {used:.1f} s; then status {status_ms:.0f} ms, enqueue "
                      f"{enqueue_ms:.0f} ms); RSS "
                      f"{peak:.0f} MiB connected, {gone:.0f} MiB once forgotten, "
                      f"{rss_mib(pid):.0f} MiB 3 s later")
            ctx.term()
        finally:
            procs.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
