"""Agent edge cases found by review: a frozen idle agent, a fast printer next to a
short job, output printed while the store is locked, a watchdog that keeps dying.

Real broker and agents; jobs write to the fault suite's ledger, whose flock
records any two executions of one job that overlap.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import apsw
import pytest

from faults.ledger import Ledger, audit
from harness import configure, pid_alive, run_cli, wait_until, watchdog_pid

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_a_job_dispatched_to_a_frozen_idle_agent_never_runs_there_once_given_to_another(
        broker, start_agent, tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    configure(broker, heartbeat_sec=0.25, lease_sec=1.0, base_backoff=1)
    frozen = start_agent(count=1)
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        with broker.client() as qc:
            wait_until(lambda: qc.status()["agents"] == 1, 10, message="the agent to connect")
            qc.enqueue(ledger.job("cold", 2.0, max_retries=5))
            # the broker dispatches it to the frozen agent, then judges that agent lost:
            # it may have started it (nothing was heard), so the attempt counts
            wait_until(lambda: (qc.get("cold")["attempts_log"] or [{}])[0].get("reason"), 10,
                       message="the frozen agent's lease to be judged lost")
            start_agent(count=1)
            wait_until(lambda: any(line[:2] == ("start", "cold") for line in ledger.lines())
                       or ledger.overlaps(), 15,
                       message="the job to start on the other agent")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    with broker.client() as qc:
        done = qc.wait("cold", timeout=20)
        winner = qc.get("cold")["attempts_log"][-1]["token"]
        # the resumed agent is welcomed again and takes new work
        wait_until(lambda: any(a["pid"] == frozen.pid for a in qc.agents()), 15,
                   message="the resumed agent to reconnect")
    assert done["state"] == "completed"
    starts = [token for kind, job_id, token in ledger.lines() if kind == "start"]
    assert starts == [winner], \
        f"the stale dispatch ran on the frozen agent: ledger {ledger.lines()}"
    assert ledger.overlaps() == []
    # If the resumed agent saw the stale dispatch at all (its connection may have
    # been dropped with the dispatch still queued), it refused to start it.
    seen = [line for line in frozen.log().splitlines() if "job cold" in line]
    assert all("not started" in line for line in seen), seen


def test_a_fast_printer_does_not_hold_back_another_job_s_result(broker, start_agent):
    start_agent(count=3)
    with broker.client() as qc:
        for n in range(2):
            qc.enqueue({"id": f"printer-{n}", "command": "yes 'flood the pipe'",
                        "timeout_sec": 60})
        wait_until(lambda: all(qc.get(f"printer-{n}")["state"] == "processing" for n in range(2)),
                   10)
        try:
            qc.enqueue({"id": "quiet", "command": "echo hello"})
            done = qc.wait("quiet", timeout=10)  # was held for as long as the printers ran
            assert done["state"] == "completed"
            assert run_cli(broker, "logs", "quiet").stdout == "hello\n"
        finally:
            for n in range(2):
                qc.cancel(f"printer-{n}")


def test_output_printed_while_the_store_is_locked_is_stored_once_it_is_free(
        broker, start_agent, tmp_path):
    start_agent(count=1)
    progress = tmp_path / "progress"
    command = (f"for i in $(seq 1 80); do echo line $i; echo $i > {progress}; sleep 0.05; done")
    with broker.client() as qc:
        qc.enqueue({"id": "scribe", "command": command})
        wait_until(lambda: progress.exists() and int(progress.read_text() or 0) >= 10, 10)
    holder = apsw.Connection(str(broker.db))
    holder.execute("BEGIN EXCLUSIVE")
    try:
        start = int(progress.read_text() or 0)
        # output flushes (every 0.2 s) reach the broker while it cannot store them
        wait_until(lambda: int(progress.read_text() or 0) >= start + 20, 10,
                   message="output while the store is locked")
    finally:
        holder.execute("COMMIT")
        holder.close()
    with broker.client(timeout=10) as qc:
        done = qc.wait("scribe", timeout=30)
    assert done["state"] == "completed"
    lines = run_cli(broker, "logs", "scribe").stdout.splitlines()
    assert lines == [f"line {i}" for i in range(1, 81)], \
        f"missing: {sorted(set(range(1, 81)) - {int(x.split()[1]) for x in lines})}"


def test_a_watchdog_that_dies_at_once_does_not_end_the_agent_and_comes_back(
        broker, start_agent, tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    agent = start_agent(count=1)
    first = wait_until(lambda: watchdog_pid(agent.pid), 5, message="the watchdog")
    os.kill(first, signal.SIGKILL)
    with broker.client() as qc:
        qc.enqueue(ledger.job("during", 0.2))
        assert qc.wait("during", timeout=15)["state"] == "completed"
        second = wait_until(lambda: (pid := watchdog_pid(agent.pid)) not in (0, first) and pid, 10,
                            message="a new watchdog")
        os.kill(second, signal.SIGKILL)  # dies again at once: the restart backs off
        third = wait_until(lambda: (pid := watchdog_pid(agent.pid)) not in (0, second) and pid,
                           15, message="another new watchdog")
        qc.enqueue({"id": "guarded", "command": f"echo $$ > {tmp_path}/pid; sleep 60"})
        job_pid = int(wait_until(lambda: (tmp_path / "pid").exists()
                                 and (tmp_path / "pid").read_text().strip(), 10))
    try:
        assert agent.proc.poll() is None, agent.log()
        assert "Traceback" not in agent.log()
        os.kill(agent.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(job_pid), 5, message="the new watchdog to kill the job")
        wait_until(lambda: not pid_alive(third), 5)
    finally:
        if pid_alive(job_pid):
            os.kill(job_pid, signal.SIGKILL)
    assert audit(broker, ["during"], ledger, settled=False).problems() == []


def test_an_agent_stopped_in_the_middle_of_a_burst_of_dispatches_starts_none_of_the_rest(
        broker, start_agent, tmp_path):
    """SIGSTOP lands while the agent works through 150 Dispatches; the broker gives
    them to another agent; on SIGCONT the frozen agent must start none of the rest."""
    ledger = Ledger(tmp_path / "ledger")
    jobs = 150
    configure(broker, heartbeat_sec=0.5, lease_sec=2.0, base_backoff=1)
    frozen = start_agent(count=jobs)
    starts = lambda: sum(1 for kind, _, _ in ledger.lines() if kind == "start")  # noqa: E731
    with broker.client(timeout=30) as qc:
        qc.enqueue_many([ledger.job(f"b{n}", 6, max_retries=5) for n in range(jobs)])
        wait_until(lambda: starts() >= 10, 20, interval=0.005, message="the burst to begin")
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            stopped_at = starts()
            start_agent(count=jobs)
            wait_until(lambda: starts() >= stopped_at + 50, 30,
                       message="the other agent to run the frozen agent's jobs")
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        wait_until(lambda: "saying hello again" in Path(frozen.proc.log_path).read_text(), 10,
                   message="the resumed agent to notice its stop")
        wait_until(lambda: all(j["state"] == "completed" for j in qc.list(limit=jobs + 10)), 60,
                   interval=0.2, message="every job to complete")
    assert ledger.overlaps() == [], f"{len(ledger.overlaps())} overlapping executions"
    assert audit(broker, [f"b{n}" for n in range(jobs)], ledger).problems() == []


def test_output_of_a_job_that_then_stays_quiet_is_resent_when_the_locked_store_frees(
        broker, start_agent, tmp_path):
    """The chunk lost with the failed batch is the job's last: no later chunk is
    refused, so the result itself must make the agent resend it."""
    start_agent(count=1)
    locked, printed, go = tmp_path / "locked", tmp_path / "printed", tmp_path / "go"
    command = (f"echo before; until [ -e {locked} ]; do sleep 0.02; done; "
               f"for i in $(seq 1 20); do echo line $i; done; touch {printed}; "
               f"until [ -e {go} ]; do sleep 0.02; done")
    with broker.client() as qc:
        qc.enqueue({"id": "quiet-tail", "command": command})
        wait_until(lambda: run_cli(broker, "logs", "quiet-tail").stdout == "before\n", 10)
    holder = apsw.Connection(str(broker.db))
    holder.execute("BEGIN EXCLUSIVE")
    try:
        locked.touch()
        wait_until(printed.exists, 10)
        wait_until(lambda: "store commit failed" in broker.log(), 10,
                   message="the chunk to fail to be stored")
    finally:
        holder.execute("COMMIT")
        holder.close()
    go.touch()
    with broker.client(timeout=10) as qc:
        assert qc.wait("quiet-tail", timeout=30)["state"] == "completed"
    assert run_cli(broker, "logs", "quiet-tail").stdout.splitlines() == \
        ["before"] + [f"line {i}" for i in range(1, 21)]
