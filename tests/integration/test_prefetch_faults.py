"""Faults around the performance work (found by review): a job that kills its
agent, output bigger than one frame after a broker restart, dispatches bigger
than one frame, Rejects lost in a failed store batch, and a stale result.

Each test asserts a guarantee of the contract against real broker and agent
processes on loopback.
"""

from __future__ import annotations

import os
import shlex
import signal
import time

import apsw
import pytest

from harness import configure, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def agent_gone(agent) -> bool:
    return agent.proc.poll() is not None


def warm_up(qc, jobs: int = 6) -> None:
    """Short jobs first: the agent's jobs run in milliseconds, so it gets prefetch."""
    ids = qc.enqueue_many([{"command": "true"} for _ in range(jobs)])["ids"]
    for job_id in ids:
        assert qc.wait(job_id, timeout=15)["state"] == "completed"


def hold_behind_a_long_job(qc, seconds: int = 40) -> None:
    """One slot runs ``long``; ``h1`` and ``h2`` are leased to the same agent, held."""
    qc.enqueue_many([{"id": "long", "command": f"sleep {seconds}"},
                     {"id": "h1", "command": "true"}, {"id": "h2", "command": "true"}])
    wait_until(lambda: [a["queued"] for a in qc.agents()] == [["h1", "h2"]], 10,
               message="h1 and h2 to be held by the busy agent")


@pytest.mark.timeout(60)
def test_a_job_that_kills_its_agent_counts_an_attempt(broker, start_agent, tmp_path):
    """Contract: an agent that stops heartbeating costs its running jobs an attempt
    ("agent lost"); so a job that kills its own agent reaches the DLQ instead of
    killing every agent forever. Eight such jobs reach the agent in one frame."""
    configure(broker, heartbeat_sec=0.25, lease_sec=1.0)
    ran = tmp_path / "ran"
    command = f"echo $QUEUECTL_JOB_ID >> {shlex.quote(str(ran))}; kill -9 $PPID"
    agent = start_agent(count=8)
    with broker.client() as qc:
        ids = qc.enqueue_many([{"command": command, "max_retries": 1} for _ in range(8)])["ids"]
        wait_until(lambda: agent_gone(agent), 15, message="the job to kill its agent")
        wait_until(lambda: qc.status()["counts"]["processing"] == 0, 15,
                   message="the dead agent's leases to end")
        wait_until(lambda: ran.exists() and ran.read_text().split(), 5, message="a job to run")
        started = set(ran.read_text().split())
        jobs = {job_id: qc.get(job_id) for job_id in ids}
    uncounted = {job_id: (job["state"], job["attempts"]) for job_id, job in jobs.items()
                 if job_id in started and job["attempts"] != 1}
    assert not uncounted, f"jobs that ran and killed their agent, counted no attempt: {uncounted}"


@pytest.mark.timeout(90)
def test_results_with_large_output_are_delivered_after_a_broker_restart(broker, start_agent,
                                                                         tmp_path):
    """A broker restart loses nothing: jobs that finished while it was down are
    reported when it is back. Forty jobs finish with 2 MiB of output each (1 MiB
    per stream, the default output_limit) while the broker is down."""
    marks = tmp_path / "marks"
    marks.mkdir()
    mark = shlex.quote(str(marks))
    command = ("sleep 2; head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2; "
               f"touch {mark}/$QUEUECTL_JOB_ID")
    start_agent(count=40)
    with broker.client() as qc:
        ids = qc.enqueue_many([{"command": command} for _ in range(40)])["ids"]
        wait_until(lambda: sum(len(a["running"]) for a in qc.agents()) == 40, 15,
                   message="40 jobs to run")
    broker.kill()
    wait_until(lambda: len(os.listdir(marks)) == 40, 20, message="the jobs to finish")
    broker.start()
    with broker.client() as qc:
        def all_completed():
            return all(qc.get(job_id)["state"] == "completed" for job_id in ids)
        try:
            wait_until(all_completed, 30, interval=0.5, message="every result to be stored")
        finally:
            states: dict[tuple[str, int], int] = {}
            for job_id in ids:
                job = qc.get(job_id)
                key = (job["state"], job["attempts"])
                states[key] = states.get(key, 0) + 1
            print("states after restart:", states)
        assert all(qc.get(job_id)["attempts"] == 1 for job_id in ids)


@pytest.mark.timeout(60)
def test_held_jobs_given_back_while_the_store_fails_run_elsewhere(broker, start_agent):
    """A stopping agent gives back the jobs it held (Reject). If the broker's batch
    with those Rejects cannot be committed (a locked store, for 2 s), the jobs must
    still come back: another agent runs them, not after the stopping agent's long job."""
    holder_agent = start_agent(count=1, grace=60)
    with broker.client() as qc:
        warm_up(qc)
        hold_behind_a_long_job(qc)
        failures = broker.log().count("store commit failed")
        lock = apsw.Connection(str(broker.db))
        lock.set_busy_timeout(5000)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            holder_agent.proc.send_signal(signal.SIGTERM)  # drain: Reject h1 and h2
            wait_until(lambda: broker.log().count("store commit failed") > failures, 10,
                       message="the broker's batch to fail on the locked store")
            time.sleep(2.0)  # paces the fault: the lock's duration
        finally:
            lock.execute("COMMIT")
            lock.close()
        start_agent(count=1)
        for job_id in ("h1", "h2"):
            assert qc.wait(job_id, timeout=15)["state"] == "completed", qc.get(job_id)
        qc.cancel("long")


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.timeout(60)
def test_a_stale_result_never_completes_a_job_that_did_not_run(broker, start_agent, tmp_path):
    """Contract: a result from an expired lease never changes a job's state. An agent
    is stopped (by one of its own jobs) past its lease, so the broker takes its
    jobs back; then a new job is enqueued and the agent resumes. The new job must
    run before it can be completed: the agent's late results belong to the old
    leases, whatever attempt ids the broker hands out since."""
    configure(broker, heartbeat_sec=0.25, lease_sec=1.0)
    flag = shlex.quote(str(tmp_path / "stopped-once"))
    marker = tmp_path / "victim-ran"
    stopper = f"if mkdir {flag} 2>/dev/null; then kill -STOP $PPID; fi"
    agent = start_agent(count=4)
    try:
        with broker.client() as qc:
            qc.enqueue_many([{"command": stopper} for _ in range(4)])
            wait_until(lambda: stopped(agent.pid), 10, message="a job to stop its agent")
            wait_until(lambda: not qc.agents() and qc.status()["counts"]["processing"] == 0,
                       10, message="the broker to judge the stopped agent lost")
            qc.enqueue({"id": "victim", "command": f"touch {shlex.quote(str(marker))}",
                        "priority": 0})
            os.kill(agent.pid, signal.SIGCONT)
            done = qc.wait("victim", timeout=20)
            log = qc.get("victim")["attempts_log"]
        assert done["state"] == "completed", done
        assert marker.exists(), f"victim completed without running: {done}, attempts {log}"
    finally:
        if agent.proc.poll() is None:
            os.kill(agent.pid, signal.SIGCONT)


@pytest.mark.timeout(120)
def test_an_agent_gets_jobs_whose_dispatches_exceed_one_frame(broker, start_agent):
    """Jobs with long commands (the 128 KiB the job format allows) for an agent
    with many slots: what one loop iteration dispatches to it is more than one
    64 MiB frame may carry. Every job must still run."""
    command = "exit 0 #" + "x" * (131071 - len("exit 0 #"))
    with broker.client(timeout=30) as qc:
        ids = []
        for _ in range(3):
            ids += qc.enqueue_many([{"command": command} for _ in range(180)])["ids"]
    start_agent(count=540, wait=False)
    with broker.client() as qc:
        wait_until(lambda: qc.status()["counts"]["completed"] == len(ids), 40, interval=0.5,
                   message="every job to complete")
