"""Reliability: retries and the DLQ, many jobs at once, crashes of agents and the broker,
timeouts that kill a whole process tree, and a graceful agent stop.

Every test drives a real broker and real agents. Jobs write their shell PIDs to
files so the tests can check, as a user would with ``ps``, that no command is
left running; any such process still alive at the end is killed by PID.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest

from harness import cli_json, kill_if_alive, pid_alive, read_pid, run_cli, wait_until, watchdog_pid

pytestmark = pytest.mark.integration


# --- helpers ------------------------------------------------------------------

def when(text: str) -> float:
    """An ISO-8601 UTC timestamp of the contract -> epoch seconds."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def fast_liveness(qc, heartbeat: float = 0.5, lease: float = 2.0, kill_grace: float = 1.0) -> None:
    """Short heartbeats and leases so crashes are noticed within a couple of seconds."""
    qc.config_set("heartbeat_sec", heartbeat)  # first: lease_sec must stay >= 2 x heartbeat
    qc.config_set("lease_sec", lease)
    qc.config_set("kill_grace_sec", kill_grace)


def agent_id(qc, agent) -> str:
    return next(a["id"] for a in qc.agents() if a["pid"] == agent.pid)


def q(path: Path) -> str:
    return shlex.quote(str(path))


# --- retries and the DLQ ---------------------------------------------------------

def test_failing_job_backs_off_2s_then_4s_lands_in_dlq_and_dlq_retry_runs_it_again(
        broker, start_agent, tmp_path):
    for key, value in (("max-retries", "3"), ("backoff-base", "2")):
        assert run_cli(broker, "config", "set", key, value).returncode == 0
    fixed = tmp_path / "fixed"
    job = {"id": "flaky", "command": f"test -e {q(fixed)} || exit 1"}
    start_agent(count=1)
    assert run_cli(broker, "enqueue", json.dumps(job)).returncode == 0

    with broker.client() as qc:
        dead = qc.wait("flaky", timeout=20)
    assert dead["state"] == "dead"
    assert dead["attempts"] == 3

    shown = cli_json(broker, "show", "flaky")
    log = shown["attempts_log"]
    assert len(log) == 3, log
    assert [a["exit_code"] for a in log] == [1, 1, 1]
    # Retry n waits base_backoff ** n seconds after failed attempt n.
    gaps = [when(log[n + 1]["started_at"]) - when(log[n]["finished_at"]) for n in range(2)]
    for gap, expected in zip(gaps, (2.0, 4.0), strict=True):
        assert expected - 0.3 <= gap <= expected + 0.8, f"retry gaps {gaps}, expected ~2s then ~4s"

    dlq = cli_json(broker, "dlq", "list")
    assert [entry["id"] for entry in dlq] == ["flaky"]
    assert dlq[0]["attempts"] == 3
    assert dlq[0]["reason"] and "1" in dlq[0]["reason"], dlq[0]
    assert dlq[0]["dead_at"] is not None

    # The user fixes the cause, then retries from the DLQ: a fresh run with attempts reset.
    fixed.touch()
    assert cli_json(broker, "dlq", "retry", "flaky") == {"retried": ["flaky"]}
    with broker.client() as qc:
        done = qc.wait("flaky", timeout=15)
    assert done["state"] == "completed"
    assert done["attempts"] == 1
    shown = cli_json(broker, "show", "flaky")
    assert len(shown["attempts_log"]) == 4
    assert shown["attempts_log"][-1]["exit_code"] == 0
    assert cli_json(broker, "dlq", "list") == []


# --- many jobs, several agents -------------------------------------------------------

def test_500_jobs_on_two_agents_each_run_exactly_once(broker, start_agent, tmp_path):
    out = tmp_path / "ran.txt"
    ids = [f"bulk-{n:03d}" for n in range(500)]
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text("".join(
        json.dumps({"id": job_id, "command": f"echo $QUEUECTL_JOB_ID >> {q(out)}"}) + "\n"
        for job_id in ids))
    agents = [start_agent(count=2), start_agent(count=2)]

    assert cli_json(broker, "enqueue", "--file", str(jobs_file)) == {"enqueued": 500, "ids": ids}

    with broker.client() as qc:
        wait_until(lambda: qc.status()["counts"]["completed"] == 500, 60,
                   message="500 jobs to complete")
        status = qc.status()
        jobs = qc.list(limit=1000)
        used = {job["agent"] for job in jobs}
        expected_agents = {agent_id(qc, agent) for agent in agents}
    assert status["counts"] == {"pending": 0, "processing": 0, "completed": 500, "failed": 0,
                                "dead": 0, "canceled": 0}
    assert all(job["state"] == "completed" and job["attempts"] == 1 for job in jobs)
    assert used == expected_agents, "both agents should have taken work"

    seen = Counter(out.read_text().split())
    assert set(seen) == set(ids)
    assert [job_id for job_id, n in seen.items() if n != 1] == []


# --- an agent killed with SIGKILL ---------------------------------------------------

def test_sigkilled_agent_job_is_killed_and_runs_again_on_another_agent(
        broker, start_agent, tmp_path):
    with broker.client() as qc:
        fast_liveness(qc)
        qc.config_set("base_backoff", 1)
    first = start_agent(count=1)
    # Attempt 1 hangs; a later attempt succeeds. Each attempt records its shell PID.
    command = (f"echo $$ > {q(tmp_path)}/pid.$QUEUECTL_ATTEMPT; "
               "if [ $QUEUECTL_ATTEMPT = 1 ]; then exec sleep 30; fi")
    job_pid = None
    try:
        with broker.client() as qc:
            qc.enqueue({"id": "orphan", "command": command, "max_retries": 3})
            job_pid = read_pid(tmp_path / "pid.1")
            first_id = agent_id(qc, first)
            assert qc.get("orphan")["agent"] == first_id
            second = start_agent(count=1)
            second_id = agent_id(qc, second)

            os.kill(first.pid, signal.SIGKILL)  # only the agent process, not its group

            # Its watchdog kills the command rather than leaving it unsupervised.
            wait_until(lambda: not pid_alive(job_pid), 5, message=f"job pid {job_pid} to die")
            done = qc.wait("orphan", timeout=15)
            shown = qc.get("orphan")
            status = qc.status()
            remaining = [a["id"] for a in qc.agents()]
    finally:
        kill_if_alive(job_pid)

    assert done["state"] == "completed"
    assert done["attempts"] == 2
    log = shown["attempts_log"]
    assert [a["agent"] for a in log] == [first_id, second_id]
    assert log[0]["reason"] == "agent lost"
    assert log[1]["exit_code"] == 0
    assert (tmp_path / "pid.2").exists()
    assert status["counts"]["processing"] == 0
    assert remaining == [second_id]


# --- the broker killed with SIGKILL -----------------------------------------------------

def test_jobs_whose_enqueue_succeeded_survive_a_broker_sigkill(broker, start_agent):
    from queuectl.client import BrokerUnreachable, Client

    accepted: list[str] = []
    failed: list[BaseException] = []

    def enqueue_until_the_broker_dies() -> None:
        with Client(broker.endpoint, timeout=2) as qc:
            for n in range(100_000):
                try:
                    qc.enqueue({"id": f"durable-{n}", "command": "true"})
                except BrokerUnreachable:
                    return
                except BaseException as exc:  # noqa: BLE001 - reported by the test below
                    failed.append(exc)
                    return
                accepted.append(f"durable-{n}")

    writer = threading.Thread(target=enqueue_until_the_broker_dies, daemon=True)
    writer.start()
    wait_until(lambda: len(accepted) >= 200, 20, message="200 accepted enqueues")
    broker.kill()
    writer.join(10)
    assert not writer.is_alive()
    assert failed == []

    broker.start()
    with broker.client() as qc:
        stored = {job["id"]: job for job in qc.list(limit=1_000_000)}
        missing = [job_id for job_id in accepted if job_id not in stored]
        assert missing == [], f"{len(missing)} acknowledged jobs lost, e.g. {missing[:5]}"
        assert all(job["state"] == "pending" for job in stored.values())

        start_agent(count=2)
        total = len(stored)
        wait_until(lambda: qc.status()["counts"]["completed"] == total, 60,
                   message=f"{total} jobs to complete after the restart")
        assert qc.status()["counts"]["processing"] == 0


@pytest.mark.parametrize("job_ends", ["while the broker is down", "after the broker is back"])
def test_a_job_running_across_a_broker_crash_completes_once(broker, start_agent, tmp_path,
                                                           job_ends):
    runs, gate = tmp_path / "runs", tmp_path / "go"
    command = (f"echo run >> {q(runs)}; echo $$ > {q(tmp_path)}/pid; "
               f"while [ ! -e {q(gate)} ]; do sleep 0.05; done; echo finished")
    agent = start_agent(count=1)
    job_pid = None
    try:
        with broker.client() as qc:
            qc.enqueue({"id": "survivor", "command": command})
            job_pid = read_pid(tmp_path / "pid")
            wait_until(lambda: qc.get("survivor")["state"] == "processing", 5)

        broker.kill()
        if job_ends == "while the broker is down":
            gate.touch()  # the agent must hold the result until a broker hears it
            wait_until(lambda: not pid_alive(job_pid), 5, message="the job to finish")
        broker.start()
        assert agent.proc.poll() is None, "the agent must outlive the broker"
        gate.touch()
        with broker.client() as qc:
            done = qc.wait("survivor", timeout=20)
            shown = qc.get("survivor")
            status = qc.status()
    finally:
        kill_if_alive(job_pid)

    assert done["state"] == "completed"
    assert done["attempts"] == 1
    assert done["exit_code"] == 0
    assert len(shown["attempts_log"]) == 1
    assert runs.read_text() == "run\n", "the job must not run twice"
    assert status["counts"]["processing"] == 0
    assert run_cli(broker, "logs", "survivor").stdout == "finished\n"


def test_a_killed_watchdog_is_replaced_and_still_kills_the_jobs_of_a_sigkilled_agent(
        broker, start_agent, tmp_path):
    agent = start_agent(count=1)
    with broker.client() as qc:
        qc.enqueue({"id": "guarded", "command": f"echo $$ > {q(tmp_path)}/pid; sleep 60"})
        job_pid = read_pid(tmp_path / "pid")
    try:
        first = wait_until(lambda: watchdog_pid(agent.pid), 5, message="the agent's watchdog")
        os.kill(first, signal.SIGKILL)
        with broker.client() as qc:  # the next job start or sign of life finds it gone
            qc.enqueue({"id": "later", "command": "true"})
        second = wait_until(lambda: (pid := watchdog_pid(agent.pid)) != first and pid, 10,
                            message="a new watchdog")
        assert "watchdog process died" in agent.log()
        os.kill(agent.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(job_pid), 5, message="the new watchdog to kill the job")
        wait_until(lambda: not pid_alive(second), 5, message="the watchdog to exit")
    finally:
        kill_if_alive(job_pid)


def test_a_frozen_agent_s_job_is_killed_before_it_runs_elsewhere_and_its_late_result_is_kept(
        broker, start_agent, tmp_path):
    """SIGSTOP the agent past its lease: its watchdog kills the job, the job runs on
    another agent, and what the frozen agent reports on SIGCONT is recorded, not applied."""
    with broker.client() as qc:
        fast_liveness(qc, heartbeat=0.25, lease=1.0)
    runs = tmp_path / "runs"
    # Each run appends "start TOKEN" and, if it lives 2 s, "end TOKEN".
    command = (f"echo start $QUEUECTL_ATTEMPT_ID >> {q(runs)}; sleep 2; "
               f"echo end $QUEUECTL_ATTEMPT_ID >> {q(runs)}")
    frozen = start_agent(count=1)
    with broker.client() as qc:
        qc.enqueue({"id": "icy", "command": command, "max_retries": 5})
        wait_until(lambda: runs.exists() and runs.read_text(), 10, message="the first run")
        first_pid = qc.get("icy")["attempts_log"][0]["pid"]
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: not pid_alive(first_pid), 5, message="the watchdog to kill the job")
            lost_at = wait_until(lambda: qc.get("icy")["attempts_log"][0]["reason"], 10,
                                 message="the broker to judge the lease lost")
            start_agent(count=1)
            done = qc.wait("icy", timeout=30)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        wait_until(lambda: qc.get("icy")["attempts_log"][0]["late_result"], 15,
                   message="the frozen agent's late result to be recorded")
        shown = qc.get("icy")
    assert lost_at == "agent lost"
    assert done["state"] == "completed"
    first, second = shown["attempts_log"]
    assert first["reason"] == "agent lost" and first["late_result"] == "agent lost"
    assert second["exit_code"] == 0 and second["agent"] != first["agent"]
    lines = runs.read_text().split("\n")
    assert lines == [f"start {first['token']}", f"start {second['token']}",
                     f"end {second['token']}", ""], "the frozen run must die before the next starts"
    assert "stopped or stalled" in frozen.log() and "killed the process groups" in frozen.log()


def test_output_sent_to_a_broker_that_crashed_before_storing_it_is_sent_again(
        broker, start_agent, tmp_path):
    """The broker is frozen while the job prints (the chunks reach its socket but are
    never stored), then SIGKILLed: the agent must resend them to the next broker."""
    progress, gate = tmp_path / "progress", tmp_path / "go"
    command = (f"i=0; while [ ! -e {q(gate)} ]; do i=$((i+1)); echo line $i; "
               f"echo $i > {q(progress)}; sleep 0.02; done; echo last")
    agent = start_agent(count=1)
    with broker.client() as qc:
        qc.enqueue({"id": "chatty", "command": command})
        wait_until(lambda: progress.exists() and int(progress.read_text() or 0) > 5, 10)
    printed = lambda: int(progress.read_text() or 0)  # noqa: E731
    os.kill(broker.proc.pid, signal.SIGSTOP)
    frozen_at = printed()
    # at least one output flush (every 0.2 s) while the broker cannot store it
    wait_until(lambda: printed() > frozen_at + 20, 10, message="output while the broker is frozen")
    broker.kill()
    broker.start()
    assert agent.proc.poll() is None
    gate.touch()
    with broker.client() as qc:
        done = qc.wait("chatty", timeout=20)
    assert done["state"] == "completed" and done["attempts"] == 1
    lines = run_cli(broker, "logs", "chatty").stdout.splitlines()
    total = printed()
    assert lines == [f"line {i}" for i in range(1, total + 1)] + ["last"], \
        f"lost lines: {sorted(set(range(1, total + 1)) - {int(x.split()[1]) for x in lines[:-1]})}"


def test_sigterm_stops_the_broker_with_exit_0_naming_the_running_jobs_which_complete_later(
        broker, start_agent, tmp_path):
    gate = tmp_path / "go"
    start_agent(count=1)
    with broker.client() as qc:
        qc.enqueue({"id": "long-runner", "command": f"until [ -e {q(gate)} ]; do sleep 0.05; done"})
        wait_until(lambda: qc.get("long-runner")["state"] == "processing", 10)
    assert broker.stop(signal.SIGTERM) == 0
    assert "still processing" in broker.log() and "long-runner" in broker.log()
    broker.start()
    gate.touch()
    with broker.client() as qc:
        done = qc.wait("long-runner", timeout=20)
    assert done["state"] == "completed" and done["attempts"] == 1


# --- timeouts -------------------------------------------------------------------

@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["plain", "ignores-SIGTERM"])
def test_timeout_kills_the_shell_and_its_grandchild(broker, start_agent, tmp_path,
                                                    ignores_sigterm):
    with broker.client() as qc:
        qc.config_set("kill_grace_sec", 1)
    shell_pid_file, child_pid_file = tmp_path / "shell.pid", tmp_path / "child.pid"
    inner = (f"echo $$ > {q(shell_pid_file)}; sleep 60 & echo $! > {q(child_pid_file)}; sleep 60")
    if ignores_sigterm:  # then only the SIGKILL after kill_grace_sec can end it
        inner = "trap '' TERM; " + inner
    job = {"id": "slow", "command": f"sh -c {shlex.quote(inner)}", "timeout_sec": 1,
           "max_retries": 1}
    start_agent(count=1)
    shell_pid = child_pid = None
    try:
        with broker.client() as qc:
            qc.enqueue(job)
            shell_pid, child_pid = read_pid(shell_pid_file), read_pid(child_pid_file)
            done = qc.wait("slow", timeout=10)
            wait_until(lambda: not pid_alive(shell_pid) and not pid_alive(child_pid), 5,
                       message="the shell and its background child to be gone")
            shown = qc.get("slow")
    finally:
        kill_if_alive(shell_pid)
        kill_if_alive(child_pid)

    assert done["state"] == "dead"
    assert [a["reason"] for a in shown["attempts_log"]] == ["timeout"]
    assert shown["last_error"] == "timeout"
    assert shown["duration_sec"] < 10


# --- a graceful agent stop -------------------------------------------------------------

def test_sigterm_lets_the_running_job_finish_then_the_agent_exits_0(
        broker, start_agent, tmp_path):
    gate, late = tmp_path / "go", tmp_path / "late-ran"
    command = (f"echo $$ > {q(tmp_path)}/pid; "
               f"while [ ! -e {q(gate)} ]; do sleep 0.05; done; echo finished")
    agent = start_agent(count=2)
    job_pid = None
    try:
        with broker.client() as qc:
            qc.enqueue({"id": "running", "command": command})
            job_pid = read_pid(tmp_path / "pid")

            os.kill(agent.pid, signal.SIGTERM)
            wait_until(lambda: [a["state"] for a in qc.agents()] == ["draining"], 5,
                       message="the agent to report that it is draining")
            # A stopping agent takes no new work, although it has a free slot.
            qc.enqueue({"id": "late", "command": f"touch {q(late)}"})
            assert pid_alive(job_pid) and agent.proc.poll() is None

            gate.touch()
            done = qc.wait("running", timeout=10)
            wait_until(lambda: agent.proc.poll() is not None, 15, message="the agent to exit")
            late_job = qc.get("late")
            # the broker forgets it once its connection has closed, a moment later
            wait_until(lambda: qc.status()["agents"] == 0, 5, message="the agent to be gone")
    finally:
        kill_if_alive(job_pid)

    assert agent.proc.returncode == 0, agent.log()
    assert done["state"] == "completed"
    assert done["attempts"] == 1
    assert late_job["state"] == "pending" and late_job["attempts"] == 0
    assert not late.exists()


def test_sigterm_kills_a_job_that_outlasts_the_grace_period_and_reports_it_failed(
        broker, start_agent, tmp_path):
    with broker.client() as qc:
        qc.config_set("kill_grace_sec", 1)
        qc.config_set("base_backoff", 100)  # keep the failed job waiting, not rerunning
    agent = start_agent(count=1, grace=0.5)
    job_pid = None
    try:
        with broker.client() as qc:
            qc.enqueue({"id": "long", "command": f"echo $$ > {q(tmp_path)}/pid; exec sleep 30",
                        "max_retries": 2})
            job_pid = read_pid(tmp_path / "pid")
            os.kill(agent.pid, signal.SIGTERM)
            wait_until(lambda: not pid_alive(job_pid), 5, message="the job to be killed")
            wait_until(lambda: agent.proc.poll() is not None, 15, message="the agent to exit")
            job = qc.get("long")
    finally:
        kill_if_alive(job_pid)

    assert agent.proc.returncode == 0, agent.log()
    assert job["state"] == "failed"
    assert job["attempts"] == 1
    reason = job["attempts_log"][0]["reason"]
    assert reason and reason != "agent lost", "the agent itself must report the killed job"
