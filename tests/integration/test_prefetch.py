"""Jobs an agent holds ahead of a free slot (prefetch), and the fast spawn path.

An agent whose jobs are short gets jobs beyond its slots and starts each the
moment a slot frees (broker/agents.py). These tests pin what a user must not
notice: a held job never waits while another agent idles, costs no attempt
when its agent dies or stops, can be canceled, and every job still starts
with only stdin, stdout and stderr open and default signal handling.
Real broker and agents on loopback.
"""

from __future__ import annotations

import os
import signal

import pytest

from harness import configure, wait_until

pytestmark = pytest.mark.integration


def warm_up(qc, jobs: int = 6) -> None:
    """Short jobs first: the agent's jobs run in milliseconds, so it gets prefetch."""
    ids = qc.enqueue_many([{"command": "true"} for _ in range(jobs)])["ids"]
    for job_id in ids:
        assert qc.wait(job_id, timeout=15)["state"] == "completed"


def hold_behind_a_long_job(qc) -> None:
    """One slot runs ``long``; ``h1`` and ``h2`` are leased to the same agent, held."""
    qc.enqueue_many([{"id": "long", "command": "sleep 30"},
                     {"id": "h1", "command": "true"}, {"id": "h2", "command": "true"}])
    wait_until(lambda: [a["queued"] for a in qc.agents()] == [["h1", "h2"]], 10,
               message="h1 and h2 to be held by the busy agent")
    wait_until(lambda: qc.get("long")["started_at"] is not None, 10,
               message="the broker to hear that long started")
    assert [a["running"] for a in qc.agents()] == [["long"]]
    # a 1-slot agent never shows more than one busy slot
    assert qc.status()["slots"] == {"busy": 1, "total": 1}
    assert qc.status()["counts"]["processing"] == 3


def test_a_job_held_by_a_busy_agent_goes_to_an_agent_that_idles(broker, start_agent):
    start_agent(count=1)
    with broker.client() as qc:
        warm_up(qc)
        hold_behind_a_long_job(qc)
        idle = start_agent(count=1)
        idle_id = next(a["id"] for a in qc.agents() if a["pid"] == idle.pid)
        for job_id in ("h1", "h2"):
            done = qc.wait(job_id, timeout=10)  # not after the 30 s of "long"
            assert done["state"] == "completed"
            log = qc.get(job_id)["attempts_log"]
            assert [a["agent"] for a in log] == [idle_id], log
        assert qc.get("long")["state"] == "processing"
        qc.cancel("long")


def test_jobs_held_beyond_the_slots_cost_no_attempt_when_their_agent_dies(broker, start_agent):
    """A dead agent's oldest leases, up to its slot count, may have started just
    before it died (unheard): they count as attempts, as before prefetch. Held jobs
    beyond that cannot have started: they go back uncounted."""
    configure(broker, heartbeat_sec=0.25, lease_sec=1.0)
    agent = start_agent(count=1)
    with broker.client() as qc:
        warm_up(qc)
        hold_behind_a_long_job(qc)
        os.kill(agent.pid, signal.SIGKILL)
        wait_until(lambda: qc.get("long")["state"] == "failed", 10,
                   message="the running job's lease to be judged lost")
        assert qc.get("long")["attempts"] == 1
        first = qc.get("h1")  # the oldest lease it was not heard to start: counted
        assert (first["state"], first["attempts"]) == ("failed", 1), first
        assert first["attempts_log"][0]["reason"] == first["last_error"]
        beyond = qc.get("h2")  # held behind it: never started
        assert (beyond["state"], beyond["attempts"], beyond["attempts_log"]) == \
            ("pending", 0, []), beyond
        start_agent(count=1)
        assert qc.wait("h2", timeout=15)["state"] == "completed"


def test_a_stopping_agent_gives_back_the_jobs_it_held(broker, start_agent):
    agent = start_agent(count=1)
    with broker.client() as qc:
        warm_up(qc)
        qc.enqueue_many([{"id": "long", "command": "sleep 1"},
                         {"id": "h1", "command": "true"}, {"id": "h2", "command": "true"}])
        wait_until(lambda: [a["queued"] for a in qc.agents()] == [["h1", "h2"]], 10,
                   message="h1 and h2 to be held")
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(15) == 0
        assert qc.get("long")["state"] == "completed"  # the running job finished
        for job_id in ("h1", "h2"):
            job = qc.get(job_id)
            assert (job["state"], job["attempts"], job["attempts_log"]) == ("pending", 0, []), job


def test_a_held_job_can_be_canceled_before_it_starts(broker, start_agent):
    start_agent(count=1)
    with broker.client() as qc:
        warm_up(qc)
        hold_behind_a_long_job(qc)
        assert qc.cancel("h1")["state"] in ("processing", "canceled")
        done = qc.wait("h1", timeout=10)
        assert done["state"] == "canceled"
        assert [a["started_at"] for a in qc.get("h1")["attempts_log"]] == [None]
        qc.cancel("long")
        assert qc.wait("h2", timeout=15)["state"] == "completed"


@pytest.mark.parametrize("cwd", [None, "/"], ids=["posix_spawn", "popen-with-cwd"])
def test_a_job_sees_only_stdin_stdout_and_stderr(broker, start_agent, cwd):
    start_agent(count=1)
    with broker.client() as qc:
        spec = {"id": "fds", "command": "ls /proc/$$/fd"}
        if cwd:
            spec["cwd"] = cwd
        qc.enqueue(spec)
        assert qc.wait("fds", timeout=15)["state"] == "completed"
        out = b"".join(c.data for c in qc.logs("fds") if c.stream == 1).decode()
    assert sorted(out.split()) == ["0", "1", "2"]


def test_a_job_gets_default_sigpipe_handling(broker, start_agent):
    """Python ignores SIGPIPE; a command expects the default, so `yes | head` ends quietly."""
    start_agent(count=1)
    with broker.client() as qc:
        qc.enqueue({"id": "pipe", "command": "yes | head -n 1"})
        assert qc.wait("pipe", timeout=15)["state"] == "completed"
        chunks = list(qc.logs("pipe"))
    assert b"".join(c.data for c in chunks if c.stream == 1) == b"y\n"
    assert b"".join(c.data for c in chunks if c.stream == 2) == b""
