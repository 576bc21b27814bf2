"""Many hosts, safely: a broker host and two agent hosts in their own network
namespaces, joined by veth links, with CURVE on.

The broker binds every address of its namespace, which it refuses to do
without keys. Host 1's agent has ``gpu=a100, zone=eu``, host 2's ``zone=us``,
each with its own agent key. Jobs that need each label run on the right host,
a job no agent can take stays pending and ``show`` says why, and a queue limit
of 1 holds across both hosts (checked from the jobs' own start and end times).
Needs root and ``ip netns``; skips with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil

import pytest

from faults.cluster import BROKER_PORT, NsAgent, NsBroker
from faults.netns import Unavailable
from harness import program, run_cli, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def keys(home, *args: str) -> None:
    result = run_cli(None, "keys", *args, env={**os.environ, "QUEUECTL_HOME": str(home)})
    assert result.returncode == 0, result.stderr


def agent_home(tmp_path, broker_home, name: str):
    """An agent host's own QUEUECTL_HOME, holding the two files an admin copies
    there: its issued key as client.key_secret, and the broker's public key."""
    home = tmp_path / f"home-{name}"
    (home / "keys").mkdir(parents=True)
    shutil.copy(broker_home / "keys" / "issued" / f"{name}.key_secret",
                home / "keys" / "client.key_secret")
    shutil.copy(broker_home / "keys" / "broker.key", home / "keys" / "broker.key")
    return home


@pytest.fixture
def fleet(topology, procs, tmp_path):
    try:
        b, h1, h2 = topology.namespace(), topology.namespace(), topology.namespace()
    except Unavailable as exc:
        pytest.skip(f"network namespaces are unavailable here: {exc}")
    link1, link2 = topology.link(b, h1), topology.link(b, h2)
    home = tmp_path / "home"
    home.mkdir()
    # Without keys the broker refuses a non-loopback address (no --insecure).
    refused = b.run(program("queuectl-broker") + ["--bind", f"tcp://*:{BROKER_PORT}",
                                                  "--db", str(home / "queue.db")],
                    timeout=30)
    assert refused.returncode == 2 and "queuectl keys init" in refused.stderr
    keys(home, "init")
    keys(home, "add-agent", "host1")
    keys(home, "add-agent", "host2")
    broker = NsBroker(procs, b, home, insecure=False).start()
    assert "CURVE on" in broker.log()
    gpu = NsAgent(procs, broker, h1, link1, count=2, name="agent-host1",
                  labels={"gpu": "a100", "zone": "eu"},
                  env={"QUEUECTL_HOME": str(agent_home(tmp_path, home, "host1"))})
    us = NsAgent(procs, broker, h2, link2, count=2, name="agent-host2", labels={"zone": "us"},
                 env={"QUEUECTL_HOME": str(agent_home(tmp_path, home, "host2"))})
    return {"broker": broker, "gpu": gpu, "us": us, "h2": h2, "link2": link2, "tmp": tmp_path}


def ran_on(qc, job_id: str) -> str:
    return qc.get(job_id)["attempts_log"][-1]["agent"]


def test_placement_and_a_queue_limit_across_two_hosts_with_curve(fleet, procs):
    broker, gpu, us = fleet["broker"], fleet["gpu"], fleet["us"]
    log = fleet["tmp"] / "overlap.log"
    record = (f"echo start $(date +%s.%N) >> {log}; sleep 0.3; "
              f"echo end $(date +%s.%N) >> {log}")
    with broker.client() as qc:
        on_gpu = [qc.enqueue({"command": "true", "requires": {"gpu": "a100"}})["id"]
                  for _ in range(3)]
        on_us = [qc.enqueue({"command": "true", "requires": {"zone": "us"}})["id"]
                 for _ in range(3)]
        nowhere = qc.enqueue({"command": "true", "requires": {"gpu": "h100"}})["id"]
        qc.queue_limit("serial", 1)
        # Half of them can run only on host 1, half only on host 2.
        serial = [qc.enqueue({"command": record, "queue": "serial",
                              "requires": {"zone": zone}})["id"]
                  for zone in ("eu", "us", "eu", "us", "eu", "us")]
        for job_id in on_gpu + on_us + serial:
            assert qc.wait(job_id, timeout=60)["state"] == "completed", qc.get(job_id)
        assert {ran_on(qc, j) for j in on_gpu} == {gpu.id}
        assert {ran_on(qc, j) for j in on_us} == {us.id}
        assert [ran_on(qc, j) for j in serial] == [gpu.id, us.id] * 3
        job = qc.get(nowhere)
        assert job["state"] == "pending"
        assert "no connected agent has the labels it requires (gpu=h100)" in job["waiting"]
    starts = sorted(float(line.split()[1]) for line in log.read_text().splitlines()
                    if line.startswith("start"))
    ends = sorted(float(line.split()[1]) for line in log.read_text().splitlines()
                  if line.startswith("end"))
    assert len(starts) == len(ends) == 6
    # A limit of 1: each job started after the previous one ended, across hosts.
    assert all(start >= end for start, end in zip(starts[1:], ends[:-1], strict=True))


def test_a_host_without_a_key_gets_nothing(fleet, procs):
    broker, h2, link2 = fleet["broker"], fleet["h2"], fleet["link2"]
    bare = fleet["tmp"] / "home-bare"
    bare.mkdir()
    argv = program("queuectl-agent") + ["--count", "1",
                                        "--broker", f"tcp://{link2.left_addr}:{BROKER_PORT}"]
    intruder = procs.start(h2.exec_argv(argv), "intruder.log",
                           env={**broker.env(), "QUEUECTL_HOME": str(bare)})
    wait_until(lambda: "needs CURVE keys" in intruder.log_path.read_text(), 20,
               message="the keyless agent to be refused")
    with broker.client() as qc:
        assert intruder.pid not in {a["pid"] for a in qc.agents()}
        assert len(qc.agents()) == 2
