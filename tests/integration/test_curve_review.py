"""Adversarial review of CURVE: malformed key files, a key speaking in another
agent's name, revocation mid-job, a name revoked and issued again.

Real brokers and agents on loopback ports; keys made with ``queuectl keys``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import zmq
from harness import Agent, Broker, run_cli, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def keys_cli(home: Path, *args: str):
    return run_cli(None, "keys", *args, env={**os.environ, "QUEUECTL_HOME": str(home)})


@pytest.fixture
def secure(procs, tmp_path):
    """A CURVE broker: keys init, agent keys ``hostb`` and ``intruder``, a reader ``viewer``."""
    home = tmp_path / "home"
    home.mkdir()
    for args in (("init",), ("add-agent", "hostb"), ("add-agent", "intruder"),
                 ("add-client", "viewer", "--read-only")):
        result = keys_cli(home, *args)
        assert result.returncode == 0, result.stderr
    return Broker(procs, home).start()


def issued(broker: Broker, name: str) -> dict[str, str]:
    keys = broker.home / "keys"
    return {"QUEUECTL_KEY": str(keys / "issued" / f"{name}.key_secret"),
            "QUEUECTL_BROKER_KEY": str(keys / "broker.key")}


def keep_copy(broker: Broker, name: str, where: Path) -> dict[str, str]:
    copy = where / f"{name}.key_secret"
    copy.write_bytes((broker.home / "keys" / "issued" / f"{name}.key_secret").read_bytes())
    return {**issued(broker, name), "QUEUECTL_KEY": str(copy)}


def agent_ids(broker: Broker) -> list[str]:
    with broker.client() as qc:
        return [a["id"] for a in qc.agents()]


def one_line_error(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- malformed key files -------------------------------------------------------


def bad_key_files(tmp_path: Path, good_secret: Path) -> dict[str, Path]:
    """Secret-key files a user could end up with: truncated mid-line, a typo in a
    key (a character z85 does not have), a colon instead of '='."""
    text = good_secret.read_text()
    at = text.index('secret-key = "') + len('secret-key = "')
    files = {
        "truncated": "#   ZeroMQ CURVE **Secret** Certificate\nmetadata\ncurve\n    public-key",
        "bad-z85": text[:at] + "~" + text[at + 1:],
        "colon": text.replace("public-key =", "public-key:").replace("secret-key =",
                                                                      "secret-key:"),
    }
    paths = {}
    for name, body in files.items():
        path = tmp_path / f"{name}.key_secret"
        path.write_text(body)
        path.chmod(0o600)
        paths[name] = path
    return paths


def test_malformed_key_files_give_a_one_line_error(secure, procs, tmp_path):
    broker_key = str(secure.home / "keys" / "broker.key")
    good = secure.home / "keys" / "issued" / "viewer.key_secret"
    for name, path in bad_key_files(tmp_path, good).items():
        env = {**secure.env(), "QUEUECTL_KEY": str(path), "QUEUECTL_BROKER_KEY": broker_key}
        result = run_cli(secure, "status", env=env, timeout=30)
        assert result.returncode == 2, (name, result.returncode, result.stderr[-600:])
        one_line_error(result)
        assert str(path) in result.stderr, (name, result.stderr)
        agent = Agent(procs, secure, 1, {}, None, f"agent-{name}", env={
            "QUEUECTL_KEY": str(path), "QUEUECTL_BROKER_KEY": broker_key})
        assert agent.proc.wait(20) == 2, (name, agent.log()[-600:])
        assert "Traceback" not in agent.log(), (name, agent.log()[-600:])
        assert str(path) in agent.log(), (name, agent.log()[-600:])  # names the bad file


def test_a_malformed_file_on_the_allow_list_allows_nobody_and_stops_nothing(secure, procs,
                                                                           tmp_path):
    with secure.client() as qc:
        qc.enqueue({"id": "before", "command": "true"})
    allowed = secure.home / "keys" / "allowed"
    # A hand-written entry with a colon, and a copy cut short mid-line.
    (allowed / "agent" / "typo.key").write_text('public-key: "abc"\n')
    (allowed / "admin" / "cut.key").write_text("metadata\ncurve\n    public-key")
    # The broker re-reads the allow-list within a tick, and must keep serving.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert secure.proc.poll() is None, secure.log()[-1500:]
        time.sleep(0.1)  # pacing: look at the process for a few ticks
    assert secure.answers(), secure.log()[-1500:]
    Agent(procs, secure, 1, {}, None, "hostb", env=issued(secure, "hostb"))
    with secure.client(timeout=10) as qc:
        assert qc.wait("before", timeout=20)["state"] == "completed"
    assert "Traceback" not in secure.log(), secure.log()[-1500:]


# --- one key speaking in another agent's name ------------------------------------


@pytest.mark.parametrize("intruder", ["intruder", "viewer"], ids=["agent-key", "reader-key"])
def test_another_key_cannot_take_over_an_agents_identity(secure, procs, intruder):
    """An allowed key (an agent key of another host, or a read-only key) connects with the socket
    identity of a connected agent. It must receive none of that agent's
    dispatches, and must not get the agent stopped."""
    from queuectl.proto import decode_batch, encode_batch
    from queuectl.proto import messages as m

    from queuectl.keys import client_keys, secure_client

    victim = Agent(procs, secure, 2, {}, None, "hostb", env=issued(secure, "hostb"))
    wait_until(lambda: len(agent_ids(secure)) == 1, 15, message="the agent")
    victim_id = agent_ids(secure)[0]

    creds = issued(secure, intruder)
    keys = client_keys(creds["QUEUECTL_KEY"], creds["QUEUECTL_BROKER_KEY"])
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, victim_id.encode())
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    secure_client(sock, keys)
    sock.connect(secure.endpoint)
    got: list = []
    try:
        with secure.client() as qc:
            ids = [qc.enqueue({"command": "sleep 0.05", "env": {"TOKEN": "s3cret"}})["id"]
                   for _ in range(20)]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                sock.send(encode_batch([m.Heartbeat()]), zmq.NOBLOCK)
                while sock.poll(100):
                    got.extend(decode_batch(sock.recv()))
    finally:
        sock.close(0)
    assert victim.proc.poll() is None, "the victim agent stopped:\n" + victim.log()[-1500:]
    with secure.client() as qc:  # nothing is lost either way
        for job_id in ids:
            assert qc.wait(job_id, timeout=30)["state"] == "completed"
    dispatches = [msg for msg in got if isinstance(msg, m.Dispatch)]
    assert dispatches == [], (
        f"the {intruder!r} key received {len(dispatches)} dispatches meant for agent "
        f"{victim_id}, e.g. {dispatches[0]}")


# --- revocation --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_revoking_an_agent_mid_job_never_runs_the_job_twice_at_once(secure, procs, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
    from ledger import Ledger

    ledger = Ledger(tmp_path / "ledger")
    assert keys_cli(secure.home, "add-agent", "spare").returncode == 0
    doomed = Agent(procs, secure, 4, {}, None, "hostb", env=keep_copy(secure, "hostb", tmp_path))
    wait_until(lambda: len(agent_ids(secure)) == 1, 15, message="the first agent")
    with secure.client() as qc:
        ids = [qc.enqueue({"id": f"j{i}", "command": ledger.command(3), "max_retries": 5})["id"]
               for i in range(4)]
        wait_until(lambda: sum(f"start j{i} " in ledger.path.read_text() for i in range(4)) == 4,
                   15, message="the four jobs to start")
        Agent(procs, secure, 4, {}, None, "spare", env=issued(secure, "spare"))
        wait_until(lambda: len(agent_ids(secure)) == 2, 15, message="the spare agent")
        assert keys_cli(secure.home, "revoke", "hostb").returncode == 0
        assert doomed.proc.wait(20) == 1
        for job_id in ids:
            assert qc.wait(job_id, timeout=30)["state"] == "completed"
    lines = ledger.path.read_text().splitlines()
    overlaps = [line for line in lines if line.startswith("overlap")]
    assert overlaps == [], f"jobs ran twice at once after the revocation: {overlaps}"


def test_a_name_revoked_then_issued_again_connects_with_its_new_key(secure, procs, tmp_path):
    old = keep_copy(secure, "hostb", tmp_path)
    first = Agent(procs, secure, 1, {}, None, "hostb-1", env=old)
    wait_until(lambda: len(agent_ids(secure)) == 1, 15, message="the first agent")
    assert keys_cli(secure.home, "revoke", "hostb").returncode == 0
    assert first.proc.wait(20) == 1
    again = keys_cli(secure.home, "add-agent", "hostb")
    assert again.returncode == 0, again.stderr
    Agent(procs, secure, 1, {}, None, "hostb-2", env=issued(secure, "hostb"))
    wait_until(lambda: len(agent_ids(secure)) == 1, 15, message="the agent with the new key")
    with secure.client() as qc:
        job = qc.enqueue({"command": "true"})
        assert qc.wait(job["id"], timeout=20)["state"] == "completed"
    # The old key stays refused.
    stale = Agent(procs, secure, 1, {}, None, "hostb-old", env=old)
    wait_until(lambda: "refused this agent's key" in stale.log(), 20,
               message="the old key to be refused")
    assert len(agent_ids(secure)) == 1


def test_a_revoked_admin_clients_open_connection_is_refused(secure, procs, tmp_path):
    assert keys_cli(secure.home, "add-client", "ops").returncode == 0
    creds = keep_copy(secure, "ops", tmp_path)
    from queuectl.client import Client, Refused

    with Client(secure.endpoint, timeout=5, key=creds["QUEUECTL_KEY"],
                broker_key=creds["QUEUECTL_BROKER_KEY"]) as qc:
        qc.enqueue({"id": "ok", "command": "true", "delay": "1h"})
        assert keys_cli(secure.home, "revoke", "ops").returncode == 0

        def refused() -> bool:
            try:
                qc.enqueue({"command": "true", "delay": "1h"})
            except Refused:
                return True
            return False

        wait_until(refused, 10, interval=0.1, message="the revoked key to be refused")
        for call in (lambda: qc.cancel("ok"), lambda: qc.config_set("max_retries", 7),
                     lambda: qc.queue_pause("default"), lambda: qc.status()):
            with pytest.raises(Refused):
                call()
    with secure.client() as qc:
        assert qc.get("ok")["state"] == "pending"
        assert qc.config_get("max_retries") == 3
        assert not any(q["paused"] for q in qc.queues())
        assert qc.status()["counts"]["pending"] <= 2
