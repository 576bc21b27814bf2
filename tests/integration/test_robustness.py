"""Faults found in review: a busy broker, a cancel across a restart, hostile hellos.

Each test runs real brokers and agents and checks what a user would see.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import zmq

from harness import cli_json, pid_alive, run_cli, wait_until
from queuectl.proto import decode, encode
from queuectl.proto import messages as m

pytestmark = pytest.mark.integration


def fast_leases(broker) -> None:
    with broker.client() as qc:
        qc.config_set("heartbeat_sec", 0.5)
        qc.config_set("lease_sec", 2)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_broker_busy_with_a_huge_batch_kills_no_running_job(broker, start_agent):
    """A 200,000-job batch keeps the broker busy for seconds (in chunks: it once
    stalled the loop for all of them); the agent's connection stays up, so its
    running job must not be killed as 'agent lost', and the agent must stay one
    agent (no phantom registrations)."""
    fast_leases(broker)
    agent = start_agent(count=1)
    with broker.client(timeout=60) as qc:
        qc.enqueue({"id": "long", "command": "sleep 3"})
        wait_until(lambda: qc.get("long")["state"] == "processing", 10, message="long to start")
        started = time.monotonic()
        result = qc.enqueue_many([{"command": "true", "delay": "1h"} for _ in range(200_000)])
        stall = time.monotonic() - started
        assert result["enqueued"] == 200_000
        job = qc.wait("long", timeout=30)
        agents = qc.agents()
    assert stall > 1.0, f"the batch took {stall:.2f}s; too fast to stall a 2 s lease"
    assert job["state"] == "completed", job
    assert job["attempts"] == 1
    assert [a["pid"] for a in agents] == [agent.pid]
    assert "killing it" not in agent.log()


def test_lease_shorter_than_four_heartbeats_is_refused(broker):
    result = run_cli(broker, "config", "set", "lease_sec", "3")
    assert result.returncode == 2
    assert "lease_sec must be at least 4 x heartbeat_sec" in result.stderr
    assert cli_json(broker, "config", "show")["lease_sec"] == 6.0


def test_cancel_requested_while_the_agent_is_away_reaches_it_when_it_returns(
        broker, start_agent, tmp_path):
    agent = start_agent(count=1)
    pid_file = tmp_path / "job.pid"
    with broker.client() as qc:
        qc.enqueue({"id": "cx", "command": f"echo $$ > {pid_file}; exec sleep 60"})
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 10)
    job_pid = int(pid_file.read_text())
    try:
        os.kill(agent.pid, signal.SIGSTOP)  # the agent cannot say hello to the new broker yet
        broker.kill()
        broker.start()
        with broker.client() as qc:
            assert qc.get("cx")["state"] == "processing"
            qc.call("cancel", hold=0, id="cx")  # recorded; no agent to tell right now
        os.kill(agent.pid, signal.SIGCONT)
        with broker.client() as qc:
            job = qc.wait("cx", timeout=20)
        assert job["state"] == "canceled"
        wait_until(lambda: not pid_alive(job_pid), 10, message="the canceled command to die")
    finally:
        os.kill(agent.pid, signal.SIGCONT)
        if pid_alive(job_pid):
            os.kill(job_pid, signal.SIGKILL)


def test_agent_does_not_spin_while_a_timed_out_job_ignores_sigterm(broker, start_agent):
    with broker.client() as qc:
        qc.config_set("kill_grace_sec", 3)
        agent = start_agent(count=1)
        qc.enqueue({"id": "stubborn", "command": "trap '' TERM; sleep 30", "timeout_sec": 0.5,
                    "max_retries": 1})
        wait_until(lambda: qc.get("stubborn")["state"] == "processing", 10)
        before = cpu_seconds(agent.pid)
        job = qc.wait("stubborn", timeout=20)
        used = cpu_seconds(agent.pid) - before
    assert job["state"] == "dead" and job["last_error"] == "timeout"
    # Waiting 3 s for the SIGKILL time is idle time, not a busy loop.
    assert used < 1.0, f"the agent used {used:.2f} CPU seconds during a 3 s kill grace"


def test_dlq_retry_of_the_same_id_twice_retries_it_once(broker, start_agent):
    start_agent(count=1)
    with broker.client() as qc:
        qc.enqueue({"id": "twice", "command": "exit 1", "max_retries": 1})
        assert qc.wait("twice", timeout=10)["state"] == "dead"
    result = run_cli(broker, "dlq", "retry", "twice", "twice", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '{"retried": ["twice"]}'


def test_worker_stop_returns_after_the_agent_process_exited(broker, start_agent):
    agent = start_agent(count=1)
    result = run_cli(broker, "worker", "stop", "--json")
    assert result.returncode == 0, result.stderr
    # The broker answered once the agent's connection closed, which is the
    # agent's last act; the process is gone or about to be.
    assert agent.proc.wait(2) == 0


def test_hostile_hellos_are_refused_and_register_nothing(broker, start_agent):
    agent = start_agent(count=1)
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"intruder")
    sock.connect(broker.endpoint)
    try:
        bad = [m.Hello(agent_id="intruder", host="x", pid=1, slots=1, labels={},
                       tokens=[2**64 - 1]),
               m.Hello(agent_id="intruder", host="x", pid=-5, slots=1, labels={}),
               m.Hello(agent_id="intruder", host="x", pid=1, slots=0, labels={}),
               m.Hello(agent_id="someone-else", host="x", pid=1, slots=1, labels={})]
        for hello in bad[:3]:
            sock.send(encode(hello))
            assert sock.poll(5000), "no answer to a bad hello"
            reply = decode(sock.recv())
            assert isinstance(reply, m.Error) and "hello refused" in reply.message
        sock.send(encode(bad[3]))  # an identity that is not its agent id: ignored
        with broker.client() as qc:
            assert [a["pid"] for a in qc.agents()] == [agent.pid]
            assert qc.status()["agents"] == 1
    finally:
        sock.close(linger=0)


def test_a_bad_broker_endpoint_is_a_one_line_error(procs, tmp_path):
    result = run_cli(None, "worker", "start", "--broker", "garbage")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("queuectl-agent: bad broker endpoint")
    assert "Traceback" not in result.stderr


def test_a_client_that_never_reads_its_replies_costs_the_broker_little(broker):
    """2,000 requests for a job with a 120 KB command, no reply read: the broker
    held them all (280 MiB, found by review). It now queues at most a hundred
    for one peer, drops the rest, and gives the memory back."""
    def rss_mib() -> float:
        with open(f"/proc/{broker.proc.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    def cpu_seconds() -> float:
        with open(f"/proc/{broker.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    with broker.client() as qc:
        qc.enqueue({"id": "fat", "command": "x" * 120_000, "delay": 3600})
    before = rss_mib()
    deaf: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    deaf.setsockopt(zmq.LINGER, 0)
    deaf.setsockopt(zmq.RCVHWM, 1)
    deaf.setsockopt(zmq.RCVBUF, 4096)
    deaf.connect(broker.endpoint)
    try:
        for n in range(2000):
            deaf.send(encode(m.Request(req_id=n + 1, op="get", args={"id": "fat"})))
        peak, last = [before], [cpu_seconds()]

        def worked_through() -> bool:  # the broker is idle again
            peak[0] = max(peak[0], rss_mib())
            now = cpu_seconds()
            idle, last[0] = now - last[0] < 0.02, now
            return idle

        wait_until(worked_through, 60, interval=0.3, message="the broker to work through them")
        assert peak[0] < before + 60, f"the broker grew from {before:.0f} to {peak[0]:.0f} MiB"
        received = 0
        while deaf.poll(200):
            deaf.recv()
            received += 1
        assert received < 1000  # the rest were dropped, not held
        with broker.client() as qc:
            assert qc.get("fat")["state"] == "pending"  # and the broker serves on
    finally:
        deaf.close(linger=0)
