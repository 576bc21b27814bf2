"""CURVE: only allowed keys connect, each role does only its part, revocation
needs no restart, and nothing crosses the wire in plaintext.

Real brokers and agents on loopback ports; keys made with ``queuectl keys``.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import zmq

from harness import Agent, Broker, free_port, run_cli, start_agent, wait_until

pytestmark = pytest.mark.integration


def keys_cli(home: Path, *args: str):
    return run_cli(None, "keys", *args, env={**os.environ, "QUEUECTL_HOME": str(home)})


@pytest.fixture
def secure(procs, tmp_path):
    """A broker with CURVE on: keys init, agent keys ``hostb`` and ``intruder``,
    a reader ``viewer``."""
    home = tmp_path / "home"
    home.mkdir()
    for args in (("init",), ("add-agent", "hostb"), ("add-agent", "intruder"),
                 ("add-client", "viewer", "--read-only")):
        result = keys_cli(home, *args)
        assert result.returncode == 0, result.stderr
    return Broker(procs, home).start()


def issued(broker: Broker, name: str) -> dict[str, str]:
    """Environment for a process that uses the issued key ``name``."""
    keys = broker.home / "keys"
    return {"QUEUECTL_KEY": str(keys / "issued" / f"{name}.key_secret"),
            "QUEUECTL_BROKER_KEY": str(keys / "broker.key")}


def agent_ids(broker: Broker) -> list[str]:
    with broker.client() as qc:
        return [a["id"] for a in qc.agents()]


def test_key_files_are_private_and_roles_are_listed(tmp_path):
    home = tmp_path / "home"
    assert keys_cli(home, "add-agent", "early").returncode == 1  # before init
    assert keys_cli(home, "init").returncode == 0
    assert keys_cli(home, "init").returncode == 1  # never overwrites the broker's keys
    assert keys_cli(home, "add-agent", "gpu-1").returncode == 0
    assert keys_cli(home, "add-client", "ops").returncode == 0
    assert keys_cli(home, "add-client", "page", "--read-only").returncode == 0
    again = keys_cli(home, "add-agent", "gpu-1")
    assert again.returncode == 1 and "exists" in again.stderr
    bad = keys_cli(home, "add-agent", "../etc")
    assert bad.returncode == 2 and "bad key name" in bad.stderr
    for path in (home / "keys").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    listed = json.loads(keys_cli(home, "list", "--json").stdout)
    assert {(k["name"], k["role"]) for k in listed} == {
        ("local", "admin"), ("gpu-1", "agent"), ("ops", "admin"), ("page", "reader")}
    assert keys_cli(home, "revoke", "gpu-1").returncode == 0
    assert not (home / "keys" / "issued" / "gpu-1.key_secret").exists()
    assert keys_cli(home, "revoke", "gpu-1").returncode == 1
    listed = json.loads(keys_cli(home, "list", "--json").stdout)
    assert "gpu-1" not in {k["name"] for k in listed}


def test_each_role_does_only_its_part(secure, procs):
    start_agent(procs, secure, 1, name="hostb", env=issued(secure, "hostb"), wait=False)
    wait_until(lambda: len(agent_ids(secure)) == 1, 15, message="the agent to connect")
    # The local admin key (the default of this home) enqueues; the agent runs it.
    added = run_cli(secure, "enqueue", '{"id": "a1", "command": "echo ran"}')
    assert added.returncode == 0, added.stderr
    with secure.client() as qc:
        assert qc.wait("a1", timeout=20)["state"] == "completed"

    as_agent = {**secure.env(), **issued(secure, "hostb")}
    refused = run_cli(secure, "enqueue", '{"command": "echo no"}', env=as_agent)
    assert refused.returncode == 1
    assert "may not make 'enqueue' requests" in refused.stderr
    assert "Traceback" not in refused.stderr

    as_reader = {**secure.env(), **issued(secure, "viewer")}
    status = run_cli(secure, "status", "--json", env=as_reader)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["completed"] == 1
    for args in (("enqueue", '{"command": "echo no"}'), ("cancel", "a1"),
                 ("config", "set", "max_retries", "5")):
        result = run_cli(secure, *args, env=as_reader)
        assert result.returncode == 1, args
        assert "(reader) may not" in result.stderr
    with secure.client() as qc:
        assert qc.status()["counts"]["pending"] == 0  # nothing the reader tried happened
        assert qc.config_get("max_retries") == 3


def keep_copy(broker: Broker, name: str, where: Path) -> dict[str, str]:
    """The issued key ``name`` copied to ``where`` (revoking deletes the issued file)."""
    copy = where / f"{name}.key_secret"
    copy.write_bytes((broker.home / "keys" / "issued" / f"{name}.key_secret").read_bytes())
    return {**issued(broker, name), "QUEUECTL_KEY": str(copy)}


def test_agents_without_an_allowed_key_get_nothing(secure, procs, tmp_path):
    # A key pair this broker never allowed (made in another home)...
    other = tmp_path / "other"
    assert keys_cli(other, "init").returncode == 0
    assert keys_cli(other, "add-agent", "stranger").returncode == 0
    wrong_key = {"QUEUECTL_KEY": str(other / "keys" / "issued" / "stranger.key_secret"),
                 "QUEUECTL_BROKER_KEY": str(secure.home / "keys" / "broker.key")}
    # ...one revoked before it was used, no key at all, and an allowed key with
    # another broker's public key.
    assert keys_cli(secure.home, "add-agent", "gone").returncode == 0
    revoked = keep_copy(secure, "gone", tmp_path)
    assert keys_cli(secure.home, "revoke", "gone").returncode == 0
    (tmp_path / "empty").mkdir()
    other_broker = {**issued(secure, "hostb"),
                    "QUEUECTL_BROKER_KEY": str(other / "keys" / "broker.key")}
    agents = [start_agent(procs, secure, 1, name="wrong", env=wrong_key, wait=False),
              start_agent(procs, secure, 1, name="revoked", env=revoked, wait=False),
              start_agent(procs, secure, 1, name="nokey",
                          env={"QUEUECTL_HOME": str(tmp_path / "empty")}, wait=False),
              start_agent(procs, secure, 1, name="otherbroker", env=other_broker, wait=False)]
    added = run_cli(secure, "enqueue", '{"id": "p1", "command": "true"}')
    assert added.returncode == 0, added.stderr
    for agent in agents:  # each one tried, and was refused at the handshake
        def refused(agent: Agent = agent) -> bool:
            return "handshake with broker" in agent.log()

        wait_until(refused, 20, message=f"a refused handshake in {agent.proc.args!r}")
    assert agent_ids(secure) == []
    with secure.client() as qc:
        assert qc.get("p1")["state"] == "pending"
    assert "refused this agent's key" in agents[0].log()
    assert "refused this agent's key" in agents[1].log()
    assert "needs CURVE keys" in agents[2].log()
    assert "check that --broker-key is this broker's broker.key" in agents[3].log()
    # The CLI says the same, at once or within its timeout, with exit code 1.
    for env, says in ((wrong_key, "refused this client's key"),
                      ({"QUEUECTL_HOME": str(tmp_path / "empty")}, "requires CURVE keys"),
                      (other_broker, "QUEUECTL_BROKER_KEY is this broker's broker.key")):
        result = run_cli(secure, "status", env={**secure.env(), **env, "QUEUECTL_TIMEOUT": "3"})
        assert result.returncode == 1 and says in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    # The same job runs at once on an agent with an allowed key.
    start_agent(procs, secure, 1, name="hostb", env=issued(secure, "hostb"), wait=False)
    with secure.client() as qc:
        assert qc.wait("p1", timeout=20)["state"] == "completed"


def test_a_revoked_key_is_refused_without_restarting_the_broker(secure, procs, tmp_path):
    assert keys_cli(secure.home, "add-agent", "spare").returncode == 0
    hostb = keep_copy(secure, "hostb", tmp_path)
    doomed = start_agent(procs, secure, 1, name="hostb", env=hostb, wait=False)
    wait_until(lambda: len(agent_ids(secure)) == 1, 15, message="the first agent")
    with secure.client() as qc:
        qc.enqueue({"id": "long", "command": "sleep 60", "max_retries": 3})
        wait_until(lambda: qc.get("long")["state"] == "processing", 15)
    broker_pid = secure.proc.pid

    assert keys_cli(secure.home, "revoke", "hostb").returncode == 0
    with secure.client() as qc:  # a new connection: the ZAP thread sees the change first
        qc.ping()
    assert doomed.proc.wait(20) == 1  # the agent hears it and stops, killing its job
    wait_until(lambda: "its key 'hostb' was revoked" in secure.log(), 10,
               message="the broker to drop the agent for its revoked key")
    assert "was revoked" in doomed.log()
    assert agent_ids(secure) == []
    assert secure.proc.pid == broker_pid and secure.proc.poll() is None
    with secure.client() as qc:
        job = qc.get("long")
        assert job["state"] in ("failed", "pending") and job["attempts"] == 1
        assert job["last_error"] and "agent lost" in job["last_error"]
        # Started again with the revoked key, the agent cannot get back in...
        again = start_agent(procs, secure, 1, name="again", env=hostb, wait=False)
        wait_until(lambda: "refused this agent's key" in again.log(), 20,
                   message="the revoked key to be refused")
        assert agent_ids(secure) == []
        # ...and the job runs again on an agent whose key is still allowed.
        start_agent(procs, secure, 1, name="spare", env=issued(secure, "spare"), wait=False)
        wait_until(lambda: qc.get("long")["state"] == "processing", 20,
                   message="the job on the spare agent")
        assert qc.get("long")["attempts"] == 1


class Relay:
    """A TCP relay on a loopback port that keeps every byte it forwards."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.captured = bytearray()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            for key, _ in self.selector.select(0.1):
                if key.data is None:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(self.target)
                    self.selector.register(client, selectors.EVENT_READ, upstream)
                    self.selector.register(upstream, selectors.EVENT_READ, client)
                    continue
                conn = key.fileobj
                assert isinstance(conn, socket.socket)  # only sockets are registered
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for sock in (conn, key.data):
                        try:
                            self.selector.unregister(sock)
                        except (KeyError, ValueError):
                            pass
                        sock.close()
                    continue
                self.captured += data
                key.data.sendall(data)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        for key in list(self.selector.get_map().values()):
            assert isinstance(key.fileobj, socket.socket)  # only sockets are registered
            key.fileobj.close()


@pytest.mark.parametrize("curve", [True, False], ids=["curve", "plaintext-control"])
def test_nothing_crosses_the_wire_in_plaintext(curve, procs, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    if curve:
        assert keys_cli(home, "init").returncode == 0
        assert keys_cli(home, "add-agent", "hostb").returncode == 0
    broker = Broker(procs, home).start()
    relay = Relay(broker.port)
    try:
        via_relay = Broker(procs, home, port=relay.port)  # the same broker, through the relay
        env = issued(broker, "hostb") if curve else {}
        start_agent(procs, via_relay, 1, name="agent", env=env, wait=False)
        marker = "secret-marker-" + os.urandom(6).hex()
        with via_relay.client() as qc:
            wait_until(lambda: qc.status()["slots"]["total"] == 1, 15, message="the agent")
            job = qc.enqueue({"command": f"echo {marker}", "env": {"TOKEN": marker}})
            assert qc.wait(job["id"], timeout=20)["state"] == "completed"
            assert b"".join(c.data for c in qc.logs(job["id"])).strip() == marker.encode()
        wait_until(lambda: len(relay.captured) > 0, 5)
        # Command, environment and output crossed the relay: in plaintext only
        # without CURVE (the control shows the relay sees the traffic).
        assert (marker.encode() in relay.captured) is not curve
    finally:
        relay.close()


def test_the_stats_page_with_a_reader_key_shows_but_changes_nothing(secure, monkeypatch):
    import re

    from queuectl.dashboard.app import create_app

    with secure.client() as qc:
        qc.enqueue({"id": "stays", "command": "true"})
    for name, value in issued(secure, "viewer").items():
        monkeypatch.setenv(name, value)
    client = create_app(secure.endpoint, timeout=2.0).test_client()
    stats = client.get("/api/stats")
    assert stats.status_code == 200 and stats.get_json()["counts"]["pending"] == 1
    assert b"queuectl_queue_depth 1.0" in client.get("/metrics").data
    meta = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").get_data(as_text=True))
    assert meta is not None
    token = meta.group(1)
    refused = client.post("/jobs/stays/cancel",
                          headers={"X-CSRFToken": token, "Accept": "application/json"})
    assert refused.status_code == 403
    assert "(reader) may not make 'cancel' requests" in refused.get_json()["message"]
    with secure.client() as qc:
        assert qc.get("stays")["state"] == "pending"


# --- from the adversarial review ---------------------------------------------

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
        agent = start_agent(procs, secure, 1, name=f"agent-{name}", wait=False, env={
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
    start_agent(procs, secure, 1, name="hostb", env=issued(secure, "hostb"), wait=False)
    with secure.client(timeout=10) as qc:
        assert qc.wait("before", timeout=20)["state"] == "completed"
    assert "Traceback" not in secure.log(), secure.log()[-1500:]


# --- one key speaking in another agent's name ------------------------------------


@pytest.mark.parametrize("intruder", ["intruder", "viewer"], ids=["agent-key", "reader-key"])
def test_another_key_cannot_take_over_an_agents_identity(secure, procs, intruder):
    """An allowed key (an agent key of another host, or a read-only key) connects with the socket
    identity of a connected agent. It must receive none of that agent's
    dispatches, and must not get the agent stopped."""
    from queuectl.keys import client_keys, secure_client
    from queuectl.proto import decode_batch, encode_batch
    from queuectl.proto import messages as m

    victim = start_agent(procs, secure, 2, name="hostb", env=issued(secure, "hostb"), wait=False)
    wait_until(lambda: len(agent_ids(secure)) == 1, 15, message="the agent")
    victim_id = agent_ids(secure)[0]

    creds = issued(secure, intruder)
    keys = client_keys(creds["QUEUECTL_KEY"], creds["QUEUECTL_BROKER_KEY"])
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
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
    from faults.ledger import Ledger  # tests/ is on sys.path (pyproject: pythonpath)

    ledger = Ledger(tmp_path / "ledger")
    assert keys_cli(secure.home, "add-agent", "spare").returncode == 0
    doomed = start_agent(procs, secure, 4, name="hostb", env=keep_copy(secure, "hostb", tmp_path),
                         wait=False)
    wait_until(lambda: len(agent_ids(secure)) == 1, 15, message="the first agent")
    with secure.client() as qc:
        ids = [qc.enqueue({"id": f"j{i}", "command": ledger.command(3), "max_retries": 5})["id"]
               for i in range(4)]
        wait_until(lambda: sum(f"start j{i} " in ledger.path.read_text() for i in range(4)) == 4,
                   15, message="the four jobs to start")
        start_agent(procs, secure, 4, name="spare", env=issued(secure, "spare"), wait=False)
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
    first = start_agent(procs, secure, 1, name="hostb-1", env=old, wait=False)
    wait_until(lambda: len(agent_ids(secure)) == 1, 15, message="the first agent")
    assert keys_cli(secure.home, "revoke", "hostb").returncode == 0
    assert first.proc.wait(20) == 1
    again = keys_cli(secure.home, "add-agent", "hostb")
    assert again.returncode == 0, again.stderr
    start_agent(procs, secure, 1, name="hostb-2", env=issued(secure, "hostb"), wait=False)
    wait_until(lambda: len(agent_ids(secure)) == 1, 15, message="the agent with the new key")
    with secure.client() as qc:
        job = qc.enqueue({"command": "true"})
        assert qc.wait(job["id"], timeout=20)["state"] == "completed"
    # The old key stays refused.
    stale = start_agent(procs, secure, 1, name="hostb-old", env=old, wait=False)
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

        accepted = []  # enqueues the broker took before it re-read its allow-list

        def refused() -> bool:
            try:
                accepted.append(qc.enqueue({"command": "true", "delay": "1h"}))
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
        assert qc.status()["counts"]["pending"] == 1 + len(accepted)


def test_another_agent_key_cannot_speak_for_a_connected_agent(secure, procs):
    """The intruder holds a valid agent key of its own and knows hostb's agent id
    and its attempt token (anyone may read them): it can neither take hostb's id
    nor report hostb's job."""
    from fakeagent import FakeAgent
    from queuectl.keys import load
    from queuectl.proto import messages as m

    start_agent(procs, secure, 1, name="hostb", env=issued(secure, "hostb"), wait=False)
    with secure.client() as qc:
        job_id = qc.enqueue({"command": "sleep 1.5; echo real"})["id"]
        job = wait_until(lambda: qc.get(job_id)["started_at"] and qc.get(job_id), 20,
                         message="the job to start on hostb")
    victim, token = job["agent"], job["attempts_log"][-1]["token"]
    keys = secure.home / "keys"
    public, secret = load(keys / "issued" / "intruder.key_secret", secret=True)
    server, _ = load(keys / "broker.key", secret=False)
    intruder = FakeAgent(secure.endpoint, victim, curve=(public, secret, server))
    try:
        intruder.hello(tokens=[token])
        assert "in use by another connection" in intruder.refused().message
        intruder.send(m.Result(token=token, outcome="ok", exit_code=0, detail="",
                               started_at=None, finished_at=time.time()))
        with secure.client() as qc:
            done = qc.wait(job_id, timeout=20)
            assert done["state"] == "completed"
            assert "".join(c.data.decode() for c in qc.logs(job_id)) == "real\n"
    finally:
        intruder.close()
