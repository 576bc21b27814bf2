"""Queue pause, resume and concurrency limits across agents, and ``show`` saying
why a waiting job is not running. Real broker and agents; the limit is checked
from the jobs' own start and end times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import cli_json, run_cli, wait_until

pytestmark = pytest.mark.integration


def waiting(broker, job_id: str) -> str | None:
    return cli_json(broker, "show", job_id)["waiting"]


def max_overlap(log: Path) -> int:
    """Most jobs running at once, from lines "start|end TIMESTAMP" they wrote."""
    events = []
    for line in log.read_text().split("\n"):
        if line:
            kind, stamp = line.split()
            events.append((float(stamp), 1 if kind == "start" else -1))
    running = peak = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):  # ends first on a tie
        running += change
        peak = max(peak, running)
    return peak


def test_a_limit_holds_across_agents(broker, start_agent, tmp_path):
    start_agent(count=3)
    start_agent(count=3)
    log = tmp_path / "overlap.log"
    limited = run_cli(broker, "queue", "limit", "batch", "2", "--json")
    assert limited.returncode == 0, limited.stderr
    assert json.loads(limited.stdout)["limit"] == 2
    record = (f"echo start $(date +%s.%N) >> {log}; sleep 0.4; "
              f"echo end $(date +%s.%N) >> {log}")
    with broker.client() as qc:
        ids = [qc.enqueue({"command": record, "queue": "batch"})["id"] for _ in range(6)]
        other = qc.enqueue({"command": "true"})["id"]  # another queue is not held up
        assert qc.wait(other, timeout=20)["state"] == "completed"
        wait_until(lambda: waiting(broker, ids[-1]) is not None
                   and "at its limit: 2 of 2" in (waiting(broker, ids[-1]) or ""), 10,
                   message="show to explain the limit")
        for job_id in ids:
            assert qc.wait(job_id, timeout=30)["state"] == "completed"
    assert max_overlap(log) == 2
    agents_used = {cli_json(broker, "show", job_id)["attempts_log"][0]["agent"] for job_id in ids}
    assert len(agents_used) == 2, "both agents ran jobs of the limited queue"
    assert [q["limit"] for q in cli_json(broker, "queue", "list") if q["name"] == "batch"] == [2]
    assert run_cli(broker, "queue", "limit", "batch", "none").returncode == 0
    # No rule and no unfinished job left: the queue is no longer listed.
    assert [q for q in cli_json(broker, "queue", "list") if q["name"] == "batch"] == []


def test_pause_holds_jobs_through_a_restart_and_resume_runs_them(broker, start_agent):
    assert run_cli(broker, "queue", "pause", "nightly").returncode == 0
    start_agent(count=2)
    with broker.client() as qc:
        held = qc.enqueue({"command": "true", "queue": "nightly"})["id"]
        free = qc.enqueue({"command": "true"})["id"]
        assert qc.wait(free, timeout=20)["state"] == "completed"
        assert qc.get(held)["state"] == "pending"
    assert waiting(broker, held) == "queue 'nightly' is paused (queuectl queue resume nightly)"
    assert broker.stop() == 0
    broker.start()
    with broker.client() as qc:
        wait_until(lambda: qc.status()["slots"]["total"] == 2, 20, message="the agent to return")
        assert [q for q in qc.queues() if q["name"] == "nightly"] == [
            {"name": "nightly", "paused": True, "limit": None, "pending": 1, "processing": 0}]
        assert qc.get(held)["state"] == "pending"
    resumed = run_cli(broker, "queue", "resume", "nightly")
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    with broker.client() as qc:
        assert qc.wait(held, timeout=20)["state"] == "completed"
    assert waiting(broker, held) is None


def test_show_explains_a_job_no_agent_can_take(broker, start_agent):
    start_agent(count=1, labels={"zone": "eu"})
    with broker.client() as qc:
        job = qc.enqueue({"command": "true", "requires": {"gpu": "a100"}})["id"]
        later = qc.enqueue({"command": "true", "delay": "1h"})["id"]
    reason = waiting(broker, job)
    assert reason == ("no connected agent has the labels it requires (gpu=a100); "
                      "connected agents' labels: zone=eu")
    assert (waiting(broker, later) or "").startswith("scheduled: it may start at ")
    start_agent(count=1, labels={"gpu": "a100"})
    with broker.client() as qc:
        assert qc.wait(job, timeout=20)["state"] == "completed"


@pytest.mark.parametrize("args, message", [
    (("queue", "limit", "q", "lots"), "whole number"),
    (("queue", "limit", "q", "0"), "from 1"),
    (("queue", "pause", ""), "1-128 characters"),
    (("queue", "pause", "a\nb"), "control characters"),
])
def test_bad_queue_commands_are_invalid_input(broker, args, message):
    result = run_cli(broker, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
