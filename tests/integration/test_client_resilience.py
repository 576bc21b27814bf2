"""The client and CLI against real brokers that are slow, restarted or configured
by environment: waits that outlive a broker restart, big batches that take the
broker a while, `queuectl up` on the user's endpoint, and batch errors that
name the line.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from harness import (
    Broker,
    cli_json,
    free_port,
    kill_if_alive,
    program,
    run_cli,
    wait_state,
    wait_until,
)
from queuectl.client import Client

pytestmark = pytest.mark.integration


def restart(broker: Broker, how: str) -> None:
    """A graceful stop (parked requests are told "the broker is stopping"),
    or SIGKILL (they are never answered), then the same broker again."""
    if how == "stop":
        assert broker.stop() == 0, broker.log()
    else:
        broker.kill()
    broker.start()


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- waits that outlive a broker restart --------------------------------------------

@pytest.mark.parametrize("how", ["stop", "kill"])
def test_wait_and_logs_follow_outlive_a_broker_restart(broker, start_agent, procs, how):
    start_agent(count=1)
    with broker.client() as qc:
        qc.enqueue({"id": "slow", "command": "echo begin; sleep 3; echo end"})
    wait_state(broker, "slow", "processing")

    waited: dict[str, Any] = {}

    def waiter() -> None:
        try:
            with broker.client() as qc:
                waited["job"] = qc.wait("slow", timeout=60)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            waited["error"] = exc

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    follower = procs.start(program("queuectl") + ["logs", "slow", "--follow"], "follow.log",
                           env=broker.env())
    output = Path(follower.log_path)
    wait_until(lambda: output.read_text().startswith("begin\n"), 10,
               message="the follower to print the first line")

    restart(broker, how)

    thread.join(60)
    assert "error" not in waited, f"wait failed across the restart: {waited.get('error')!r}"
    assert waited["job"]["state"] == "completed" and waited["job"]["exit_code"] == 0
    assert follower.wait(60) == 0, output.read_text()
    assert output.read_text() == "begin\nend\n"


def test_worker_stop_outlives_a_broker_restart(broker, procs):
    worker = procs.start(program("queuectl") + ["worker", "start", "--count", "1"], "worker.log",
                         env=broker.env())

    def connected():
        return next((a for a in cli_json(broker, "agents") if a["pid"] == worker.pid), None)

    agent = wait_until(connected, 15, message="the worker to connect")
    with broker.client() as qc:
        qc.enqueue({"id": "finishing", "command": "sleep 3"})
    wait_state(broker, "finishing", "processing")
    stopper = procs.start(program("queuectl") + ["worker", "stop", "--json"], "stop.log",
                          env=broker.env())
    wait_until(lambda: f"agent {agent['id']} stopping" in Path(worker.log_path).read_text(), 10,
               message="the agent to get the stop request")
    restart(broker, "stop")
    assert stopper.wait(60) == 0, Path(stopper.log_path).read_text()
    assert json.loads(Path(stopper.log_path).read_text().splitlines()[-1]) == \
        {"stopped": [agent["id"]]}
    assert worker.wait(30) == 0, Path(worker.log_path).read_text()
    assert wait_state(broker, "finishing", "completed")["exit_code"] == 0


# --- a big batch takes the broker a while; the CLI waits for it ----------------------

def test_a_big_file_is_not_reported_as_no_broker_while_the_broker_stores_it(broker, tmp_path):
    """With a short QUEUECTL_TIMEOUT the broker needs longer than it to store the
    batch; the CLI must wait (the batch is stored) rather than exit 3 and invite
    a retry that would enqueue every job twice."""
    count = 50_000
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"command": "true", "delay": "1h"}) + "\n"
                            for _ in range(count)))
    env = {**broker.env(), "QUEUECTL_TIMEOUT": "0.3"}
    result = run_cli(broker, "enqueue", "--file", str(path), "--json", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["enqueued"] == count
    assert cli_json(broker, "status")["counts"]["pending"] == count


# --- enqueue --file: an id already in the store names its line ------------------------

def test_a_file_line_whose_id_exists_is_named_and_nothing_is_enqueued(broker, tmp_path):
    with broker.client() as qc:
        qc.enqueue({"id": "taken", "command": "true", "delay": "1h"})
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"id": "first", "command": "true"}) + "\n"
                    + json.dumps({"command": "true"}) + "\n"
                    + json.dumps({"id": "taken", "command": "echo other"}) + "\n"
                    + json.dumps({"id": "last", "command": "true"}) + "\n")
    for argv, stdin in ((["--file", str(path)], None), (["--file", "-"], path.read_text())):
        result = run_cli(broker, "enqueue", *argv, input=stdin)
        assert result.returncode == 1 and result.stdout == ""
        line = one_error_line(result)
        assert "line 3" in line and "'taken'" in line and "already exists" in line, line
    assert [job["id"] for job in cli_json(broker, "list")] == ["taken"]


# --- queuectl up on the endpoint the user configured ------------------------------------

def start_up(procs, argv: list[str], env: dict[str, str], endpoint: str):
    """Start `queuectl ARGV` (an `up`) and wait until `queuectl status` finds it, with its
    agent, at ``endpoint``; returns the process and the pids of its broker and agent."""
    up = procs.start(program("queuectl") + argv, "up.log", env=env)
    log = Path(up.log_path)
    status_env = {**env, "QUEUECTL_BROKER": endpoint, "QUEUECTL_TIMEOUT": "0.5"}

    def status():
        assert up.poll() is None, log.read_text()
        result = run_cli(None, "status", "--json", env=status_env)
        return json.loads(result.stdout) if result.returncode == 0 else None

    wait_until(lambda: (status() or {}).get("agents") == 1, 20,
               message=f"`queuectl up` to answer on {endpoint} with its agent")
    with Client(endpoint) as qc:
        return up, [qc.ping()["pid"]] + [a["pid"] for a in qc.agents()]


def stop_up(up) -> str:
    up.send_signal(signal.SIGINT)
    log = Path(up.log_path)
    assert up.wait(30) == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    return log.read_text()


def up_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "up-home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "QUEUECTL_BROKER"}
    return {**env, "QUEUECTL_HOME": str(home), **extra}


def test_up_binds_the_endpoint_of_queuectl_broker(procs, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = up_env(tmp_path, QUEUECTL_BROKER=endpoint)
    pids: list[int] = []
    try:
        up, pids = start_up(procs, ["up", "--agents", "1", "--no-http"], env, endpoint)
        assert (tmp_path / "up-home" / "queue.db").exists()
        # a plain `queuectl status` (QUEUECTL_BROKER from the same environment) finds it
        result = run_cli(None, "status", env=env)
        assert result.returncode == 0, result.stderr
        stop_up(up)
    finally:
        kill_if_alive(*pids, group=True)


def test_up_binds_the_global_broker_option_and_serves_the_stats_page_at_http(procs, tmp_path):
    import urllib.request

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    http = f"127.0.0.1:{free_port()}"
    pids: list[int] = []
    try:
        up, pids = start_up(procs, ["--broker", endpoint, "up", "--agents", "1", "--http", http],
                            up_env(tmp_path), endpoint)

        def page_stats():
            try:
                with urllib.request.urlopen(f"http://{http}/api/stats", timeout=2) as reply:
                    return json.loads(reply.read())
            except OSError:
                return None

        stats = wait_until(page_stats, 20, message=f"the stats page on {http}")
        assert stats["agents"] == 1  # the page is a client of this very broker
        # `up` names the page once it has seen it listen (a moment after it does)
        wait_until(lambda: f"stats page http://{http}" in Path(up.log_path).read_text(), 10,
                   message="`queuectl up` to name the stats page")
        assert "warning" not in stop_up(up)
    finally:
        kill_if_alive(*pids, group=True)


# --- a broker that stops, or goes away for good -------------------------------------

def test_a_parked_request_is_told_the_broker_is_stopping(broker):
    import zmq

    from queuectl.proto import decode, encode
    from queuectl.proto import messages as m
    from queuectl.transport import ERRORS, Unavailable

    with broker.client() as qc:
        qc.enqueue({"id": "never", "command": "true"})  # no agent: it stays pending
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(broker.endpoint)
    try:
        sock.send(encode(m.Request(req_id=1, op="wait", args={"id": "never", "hold": 20})))
        sock.send(encode(m.Request(req_id=2, op="ping", args={})))
        assert sock.poll(5000) and decode(sock.recv()).req_id == 2  # so the wait is parked
        assert broker.stop() == 0
        assert sock.poll(5000), "the parked wait was not answered when the broker stopped"
        reply = decode(sock.recv())
    finally:
        sock.close(linger=0)
    assert (reply.req_id, reply.ok, reply.error_code) == (1, False, "unavailable")
    assert "stopping" in reply.error
    assert ERRORS[reply.error_code] is Unavailable and Unavailable.exit_code == 1


def test_a_wait_gives_up_at_its_deadline_when_the_broker_never_returns(broker):
    import time

    with broker.client(timeout=0.5) as qc:
        qc.enqueue({"id": "orphan", "command": "true"})  # no agent: it stays pending
        broker.kill()
        started = time.monotonic()
        with pytest.raises(Exception) as info:
            qc.wait("orphan", timeout=2)
        elapsed = time.monotonic() - started
    assert type(info.value).__name__ == "BrokerUnreachable" and \
        getattr(info.value, "exit_code", None) == 3
    assert 1.5 < elapsed < 6, elapsed


def test_a_wait_right_after_an_answer_skips_the_ping_and_a_later_one_sends_it(broker,
                                                                              monkeypatch):
    """A long request (wait) is preceded by a ping, so a missing broker fails fast,
    unless the broker answered on this connection within the last second."""
    from queuectl import transport
    from queuectl.proto import decode

    with Client(broker.endpoint) as qc:
        sent: list[str] = []
        exchange = qc._conn._exchange

        def spy(frame: bytes, req_id: int, wait: float) -> Any:
            sent.append(decode(frame).op)
            return exchange(frame, req_id, wait)

        monkeypatch.setattr(qc._conn, "_exchange", spy)
        qc.enqueue({"id": "quick", "command": "true"})
        with pytest.raises(TimeoutError):
            qc.wait("quick", timeout=1.5)  # no agent: it stays pending
        assert sent == ["enqueue", "wait"]
        monkeypatch.setattr(transport, "PING_FRESH", 0.0)  # as if the answer were old
        sent.clear()
        with pytest.raises(TimeoutError):
            qc.wait("quick", timeout=1.5)
        assert sent == ["ping", "wait"]
