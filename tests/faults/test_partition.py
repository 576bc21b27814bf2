"""Fault scenario 4: a real network partition between an agent and the broker.

The broker runs in network namespace B and two agents in namespaces A1 and
A2, each joined to B by its own veth pair (see ``netns.py``). The test cuts
A1's cable for real: its packets go nowhere, as when a switch dies. Jobs run
``ledger.sh``, which holds a per-job ``flock`` for the whole run, so any two
executions of one job at the same time leave an ``overlap`` line.

* Cut longer than the lease: A1 must kill its own runs once it has been cut
  off for most of the lease, the broker must rerun those jobs on A2, A1 must
  come back after the heal, and its stale results must change nothing.
* Cut shorter than the lease: the job on A1 simply finishes there, once.

The test process stays in the root namespace and reaches the broker through
a forwarder on 127.0.0.1 (``netns.bridge_argv``); the agents reach it only over
their veth links. Needs root and ``ip netns``; skips with the reason otherwise.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

import pytest

from faults import netns
from faults.cluster import BROKER_PORT, NsAgent, NsBroker
from faults.ledger import Ledger, audit, report
from harness import kill_if_alive, pid_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

HEARTBEAT = 0.5
LONG_RUN = 5.0      # seconds a job that is running on A1 during the cut takes


# --- the partitioned cluster ------------------------------------------------------------

@pytest.fixture
def cluster(topology, procs, tmp_path):
    """Namespaces B, A1, A2; links B-A1 and B-A2; the broker running in B."""
    try:
        b, a1, a2 = topology.namespace(), topology.namespace(), topology.namespace()
    except netns.Unavailable as exc:
        pytest.skip(f"network namespaces are unavailable here: {exc}")
    link1, link2 = topology.link(b, a1), topology.link(b, a2)
    home = tmp_path / "home"
    home.mkdir()
    broker = NsBroker(procs, b, home).start()
    assert "WARNING: INSECURE" in broker.log()  # every address, no keys: said out loud
    # Each agent namespace reaches the broker over its own link, and only there.
    assert a1.can_connect(link1.left_addr, BROKER_PORT)
    assert a2.can_connect(link2.left_addr, BROKER_PORT)
    assert not a1.can_connect(link2.left_addr, BROKER_PORT, timeout=0.5)
    return {"broker": broker, "b": b, "a1": a1, "a2": a2, "link1": link1, "link2": link2}


def liveness(qc, lease: float) -> None:
    qc.config_set("heartbeat_sec", HEARTBEAT)  # first: lease_sec must stay >= 4 x heartbeat
    qc.config_set("lease_sec", lease)
    qc.config_set("kill_grace_sec", 1.0)
    qc.config_set("base_backoff", 1)  # a lost attempt is retried 1 s later


def ledger_tokens(ledger: Ledger, kind: str, job_id: str) -> set[int]:
    return {token for k, j, token in ledger.lines() if k == kind and j == job_id}


def started_attempt(qc, job_id: str) -> dict | None:
    """The job's first attempt once its agent reported the command's PID."""
    log = qc.get(job_id)["attempts_log"]
    return log[0] if log and log[0]["pid"] else None


def settled(qc) -> int:
    counts = qc.status()["counts"]
    return counts["completed"] + counts["dead"] + counts["canceled"]


class ShortJobs:
    """A stream of short jobs enqueued from a thread until ``stop``; ``acknowledged``
    holds the ids whose enqueue returned success."""

    def __init__(self, broker: NsBroker, ledger: Ledger, prefix: str, every: float = 0.05):
        self.broker, self.ledger, self.prefix, self.every = broker, ledger, prefix, every
        self.acknowledged: list[str] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ShortJobs:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with self.broker.client(timeout=10) as qc:
                for n in itertools.count():
                    if self._stop.is_set():
                        return
                    job_id = f"{self.prefix}-{n:04d}"
                    qc.enqueue(self.ledger.job(job_id, 0.1))
                    self.acknowledged.append(job_id)
                    self._stop.wait(self.every)  # pacing the load, not waiting for anything
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "the enqueue thread hung"
        assert self.errors == [], f"enqueue failed during the partition: {self.errors!r}"
        return list(self.acknowledged)


# --- a cut longer than the lease ------------------------------------------------------------

@pytest.mark.timeout(150)
def test_partitioned_agent_kills_its_jobs_they_rerun_elsewhere_and_its_stale_results_change_nothing(
        cluster, procs, tmp_path):
    lease = 2.0
    broker, link1 = cluster["broker"], cluster["link1"]
    ledger = Ledger(tmp_path / "ledger")
    long_ids = ["long-1", "long-2"]
    job_pids: list[int] = []
    stream = None
    try:
        with broker.client() as qc:
            liveness(qc, lease)
        a1 = NsAgent(procs, broker, cluster["a1"], link1, count=2, name="agent-a1")

        # Both of A1's slots run a long job when the cable is cut.
        with broker.client() as qc:
            for job_id in long_ids:
                qc.enqueue(ledger.job(job_id, LONG_RUN))
            wait_until(lambda: all(ledger_tokens(ledger, "start", j) for j in long_ids), 15,
                       message="both long jobs to start on A1")
            first = {}
            for job_id in long_ids:
                def pid_reported(j: str = job_id) -> Any:
                    return started_attempt(qc, j)

                attempt = wait_until(pid_reported, 10, message=f"{job_id}'s pid to be reported")
                assert attempt["agent"] == a1.id
                first[job_id] = attempt
                job_pids.append(attempt["pid"])
        a1_tokens = {j: first[j]["token"] for j in long_ids}
        assert {j: ledger_tokens(ledger, "start", j) for j in long_ids} == \
            {j: {t} for j, t in a1_tokens.items()}

        a2 = NsAgent(procs, broker, cluster["a2"], cluster["link2"], count=3, name="agent-a2")
        stream = short = ShortJobs(broker, ledger, "short").start()
        wait_until(lambda: len(short.acknowledged) >= 10, 15, message="the short-job stream")

        # Cut A1 off. It is a real partition: A1 cannot even open a TCP connection.
        cut_at = time.monotonic()
        link1.cut()
        assert not cluster["a1"].can_connect(link1.left_addr, BROKER_PORT, timeout=0.5)
        assert cluster["a2"].can_connect(cluster["link2"].left_addr, BROKER_PORT)

        # The broker gives up on A1 after the lease and reruns its jobs on A2. A rerun
        # that found A1's run still going writes `overlap` instead of `start`.
        def rerun_began() -> bool:
            return all((ledger_tokens(ledger, "start", j) | ledger_tokens(ledger, "overlap", j))
                       - {a1_tokens[j]} for j in long_ids)

        wait_until(rerun_began, 30, interval=0.01, message="A1's jobs to start again on A2")
        recovery = time.monotonic() - cut_at
        # The flock in ledger.sh would have refused A2's run while any process of A1's
        # run lived; the PIDs say the same thing from outside.
        alive_at_rerun = [pid for pid in job_pids if pid_alive(pid)]
        with broker.client() as qc:
            gone = wait_until(lambda: all(a["pid"] != a1.pid for a in qc.agents()), 10,
                              message="the broker to drop A1")
        assert gone

        # Keep the cable out well past the lease (pacing the fault), then heal it.
        remaining = cut_at + lease + 1.5 - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        cut_sec = time.monotonic() - cut_at
        link1.heal()
        healed_at = time.monotonic()
        assert cluster["a1"].can_connect(link1.left_addr, BROKER_PORT, timeout=2)

        with broker.client() as qc:
            wait_until(lambda: any(a["pid"] == a1.pid for a in qc.agents()), 20,
                       message="A1 to reconnect after the heal")
            reconnect = time.monotonic() - healed_at
            # A1 is useful again: it completes new work. Its held (stale) results were
            # sent before this job's result on the same connection, so they have
            # reached the broker by the time it completes.
            after = [qc.enqueue(ledger.job(f"after-heal-{n}", 0.1))["id"] for n in range(4)]

            def a1_completed_new_work() -> bool:
                return any(qc.get(j)["state"] == "completed" and qc.get(j)["agent"] == a1.id
                           for j in after)

            wait_until(a1_completed_new_work, 20, message="A1 to complete a job after the heal")
        acknowledged = stream.stop() + long_ids + after
        stream = None

        with broker.client() as qc:
            wait_until(lambda: settled(qc) == len(acknowledged), 60,
                       message=f"all {len(acknowledged)} jobs to reach a final state")
            shown = {j: qc.get(j) for j in long_ids}
        agents_in_b = broker.cli_inside("agents", "--json")
        result = audit(broker, acknowledged, ledger)
    finally:
        if stream is not None:
            stream._stop.set()
        kill_if_alive(*job_pids)

    report("network partition (agent cut off past its lease)", result,
           f"veth link of 1 of 2 agents cut for {cut_sec:.1f}s (lease {lease}s, heartbeat "
           f"{HEARTBEAT}s) while it ran 2 jobs, short jobs enqueued throughout",
           recovery, reconnect_sec=round(reconnect, 2), cut_sec=round(cut_sec, 2))

    assert alive_at_rerun == [], f"A1's job processes {alive_at_rerun} still ran at the rerun"
    assert result.overlaps == []
    assert result.problems() == [], result.summary()
    assert set(result.states) == {"completed"}, result.summary()
    assert a1.id in {a["id"] for a in json.loads(agents_in_b)}, \
        "A1 must show in `queuectl agents` (run inside B) after the heal"
    for job_id, job in shown.items():
        log = job["attempts_log"]
        assert job["state"] == "completed" and job["exit_code"] == 0
        # A1's attempt was lost; its late result did not change it.
        assert log[0]["token"] == a1_tokens[job_id]
        assert log[0]["agent"] == a1.id
        assert log[0]["reason"] == "agent lost" or log[0]["stale"], log[0]
        assert log[0]["exit_code"] is None, log[0]
        # The winning attempt is A2's, witnessed start to end by the ledger.
        assert log[-1]["agent"] == a2.id and log[-1]["exit_code"] == 0, log
        assert job["agent"] == a2.id
        winner = log[-1]["token"]
        assert ledger_tokens(ledger, "start", job_id) == {a1_tokens[job_id], winner}
        assert ledger_tokens(ledger, "end", job_id) == {winner}, \
            f"A1's run of {job_id} must have been killed (start, no end)"
    # Recovery: lease + one 1 s retry backoff + dispatch, with room for a busy machine.
    assert recovery <= lease + 1.0 + 4.0, f"recovery took {recovery:.1f}s"


# --- a cut shorter than the lease -------------------------------------------------------------

@pytest.mark.timeout(120)
def test_a_cut_shorter_than_the_lease_lets_the_job_finish_on_its_agent_exactly_once(
        cluster, procs, tmp_path):
    # The agent gives up after lease - 2 x heartbeat = 4 s of silence; a 1.5 s cut heals in time.
    lease, cut_for = 5.0, 1.5
    broker, link1 = cluster["broker"], cluster["link1"]
    ledger = Ledger(tmp_path / "ledger")
    job_pid = None
    try:
        with broker.client() as qc:
            liveness(qc, lease)
        a1 = NsAgent(procs, broker, cluster["a1"], link1, count=1, name="agent-a1")
        a2 = NsAgent(procs, broker, cluster["a2"], cluster["link2"], count=1, name="agent-a2")
        with broker.client() as qc:
            qc.enqueue(ledger.job("steady", 4.0))
            attempt = wait_until(lambda: started_attempt(qc, "steady"), 15,
                                 message="the job to start")
            job_pid = attempt["pid"]
        runner = a1 if attempt["agent"] == a1.id else a2
        cut = link1 if runner is a1 else cluster["link2"]
        runner_ns = cluster["a1"] if runner is a1 else cluster["a2"]

        cut_at = time.monotonic()
        cut.cut()
        assert not runner_ns.can_connect(cut.left_addr, BROKER_PORT, timeout=0.5)
        remaining = cut_at + cut_for - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)  # pacing the fault: the cable stays out this long
        cut.heal()
        cut_sec = time.monotonic() - cut_at

        with broker.client() as qc:
            done = qc.wait("steady", timeout=30)
            shown = qc.get("steady")
            agents = qc.agents()
        result = audit(broker, ["steady"], ledger)
    finally:
        kill_if_alive(job_pid)

    report("network partition (agent cut off shorter than its lease)", result,
           f"veth link of the running agent cut for {cut_sec:.1f}s (lease {lease}s, heartbeat "
           f"{HEARTBEAT}s) during a 4 s job", None, cut_sec=round(cut_sec, 2))

    assert done["state"] == "completed" and done["exit_code"] == 0, shown
    assert done["attempts"] == 1
    assert [a["agent"] for a in shown["attempts_log"]] == [runner.id]
    assert shown["attempts_log"][0]["reason"] is None
    assert [(kind, token) for kind, _, token in ledger.lines()] == \
        [("start", attempt["token"]), ("end", attempt["token"])], "exactly one execution"
    assert result.problems() == [], result.summary()
    assert {a["id"] for a in agents} == {a1.id, a2.id}, "both agents stay connected"
