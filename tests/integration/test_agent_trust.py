"""No peer speaks for another agent, and no number an agent sends poisons the store.

A fake agent (``tests/fakeagent.py``, a raw DEALER on ``queuectl.proto``) plays
the attacker: it knows what anyone may read (``queuectl agents``, ``show``),
so a victim's agent id and its attempt tokens, but not the victim's secret
socket identity (nor, with CURVE, its key).
"""

from __future__ import annotations

import math
import os
import signal
import time

import pytest

from fakeagent import FakeAgent
from harness import cli_json, configure, run_cli, wait_until
from hostile import strict_json
from queuectl.proto import messages as m

pytestmark = pytest.mark.integration


def running_job(broker, command: str) -> tuple[str, str, int]:
    """Enqueue ``command`` and wait until an agent runs it: (job id, agent id, token)."""
    with broker.client() as qc:
        job_id = qc.enqueue({"command": command})["id"]

        def started():
            job = qc.get(job_id)
            return job["state"] == "processing" and job["started_at"] and job

        job = wait_until(started, 15, message=f"job {job_id} to start")
    return job_id, job["agent"], job["attempts_log"][-1]["token"]


def output_of(broker, job_id: str) -> str:
    with broker.client() as qc:
        return "".join(chunk.data.decode() for chunk in qc.logs(job_id))


def test_an_impostor_with_a_victims_agent_id_cannot_report_its_job(broker, start_agent):
    start_agent(count=1)
    job_id, victim, token = running_job(broker, "sleep 1.5; echo real-output")
    impostor = FakeAgent(broker.endpoint, victim)
    try:
        impostor.hello()
        now = time.time()
        impostor.send(m.Started(token=token, pid=1, started_at=now),
                      m.Output(token=token, stream=m.STDOUT, offset=0, data=b"forged\n"),
                      m.Result(token=token, outcome="ok", exit_code=0, detail="", started_at=now,
                               finished_at=now, stdout_end=7))
        with broker.client() as qc:
            done = wait_until(lambda: qc.get(job_id)["state"] == "completed" and qc.get(job_id),
                              15, message="the real job to finish")
        assert output_of(broker, job_id) == "real-output\n"
        assert done["attempts_log"][-1]["late_result"] is None  # the real result counted
        error = impostor.refused()
        assert "agent id" in error.message and victim in error.message
    finally:
        impostor.close()


@pytest.mark.parametrize("names_tokens", [True, False], ids=["with-tokens", "without-tokens"])
def test_after_a_restart_only_the_real_agent_adopts_its_jobs(broker, start_agent, procs,
                                                             names_tokens):
    """The impostor says Hello first, while the real agent is frozen; the job
    must not be canceled nor run again: it finishes once, on the real agent."""
    configure(broker, heartbeat_sec=1, lease_sec=10)
    agent = start_agent(count=1)
    job_id, victim, token = running_job(broker, "sleep 4; echo finished")
    os.kill(agent.pid, signal.SIGSTOP)  # its job (own process group) runs on
    impostor = None
    try:
        broker.kill()
        broker.start()
        impostor = FakeAgent(broker.endpoint, victim)
        impostor.hello(tokens=[token] if names_tokens else [])
        impostor.receive(0.5)  # whatever it gets, it got it first
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    try:
        with broker.client() as qc:
            done = wait_until(lambda: qc.get(job_id)["state"] in ("completed", "dead", "canceled")
                              and qc.get(job_id), 30, message="the job to end")
        assert done["state"] == "completed", done
        assert [a["token"] for a in done["attempts_log"]] == [token]  # never run again
        assert output_of(broker, job_id) == "finished\n"
    finally:
        impostor.close()


def test_a_second_hello_cannot_rename_a_connection(broker):
    first = FakeAgent(broker.endpoint, "first-name")
    try:
        first.hello()
        first.welcomed()
        first.agent_id = "second-name"
        first.hello()
        assert "cannot change" in first.refused().message
        ids = [a["id"] for a in cli_json(broker, "agents")]
        assert ids == ["first-name"]
    finally:
        first.close()


def test_a_hello_without_a_secret_routing_identity_is_refused(broker):
    """An identity anyone can read (the agent id) could be claimed by anyone
    (ROUTER_HANDOVER), who would then receive that agent's jobs."""
    plain = FakeAgent(broker.endpoint, "guessable", routing="")
    try:
        plain.hello()
        assert "routing" in plain.refused().message
        assert cli_json(broker, "agents") == []
    finally:
        plain.close()


ABSURD = [1e300, -1e300, math.inf, -math.inf, math.nan, 0.0, 1e11]


@pytest.mark.parametrize("absurd", ABSURD, ids=[repr(v) for v in ABSURD])
def test_absurd_times_from_an_agent_never_break_a_read(broker, absurd):
    configure(broker, base_backoff=1, max_backoff=0)
    agent = FakeAgent(broker.endpoint)
    try:
        agent.hello()
        agent.welcomed()
        with broker.client() as qc:
            ok = qc.enqueue({"id": "ok-job", "command": "true"})["id"]
            dispatch = agent.expect(m.Dispatch)
            agent.send(m.Started(token=dispatch.token, pid=2**31 + 5, started_at=absurd),
                       m.Result(token=dispatch.token, outcome="ok", exit_code=0, detail="",
                                started_at=absurd, finished_at=absurd, pid=-7))
            wait_until(lambda: qc.get(ok)["state"] == "completed", 10, message="ok-job done")
            qc.enqueue({"id": "dead-job", "command": "false", "max_retries": 1})
            dispatch = agent.expect(m.Dispatch)
            agent.send(m.Result(token=dispatch.token, outcome="exit", exit_code=2**40, detail="",
                                started_at=absurd, finished_at=-absurd))
            wait_until(lambda: qc.get("dead-job")["state"] == "dead", 10, message="dead-job dead")
        before, after = time.time() - 60, time.time() + 60
        for args in (("status",), ("list",), ("show", "ok-job"), ("show", "dead-job"),
                     ("dlq", "list")):
            human = run_cli(broker, *args)
            assert human.returncode == 0, f"{args}: {human.stderr}"
            strict_json(run_cli(broker, *args, "--json").stdout)
        shown = cli_json(broker, "show", "ok-job")
        for stamp in (shown["started_at"], shown["finished_at"],
                      shown["attempts_log"][0]["started_at"]):
            from queuectl.proto.timefmt import parse_iso
            assert before <= parse_iso(stamp) <= after, shown  # the broker's own time instead
        assert shown["attempts_log"][0]["pid"] is None  # not a process id
        assert cli_json(broker, "show", "dead-job")["exit_code"] is None  # not an exit status
        from queuectl.dashboard.app import create_app

        page = create_app(broker.endpoint, timeout=2.0).test_client()
        for path in ("/api/stats", "/", "/metrics"):
            assert page.get(path).status_code == 200, path
    finally:
        agent.close()


ESCAPES = "\x1b]0;pwned\x07\x1b[2J\u202e"  # retitle the terminal, clear it, reverse the text


def test_an_agents_words_reach_users_terminals_as_text(broker):
    """A result's detail (a signal's name, a spawn error) becomes the job's last_error,
    which `show`, `dlq list` and the stats page print: its control characters are
    shown escaped, never sent raw to a user's terminal (found by test_agent_properties)."""
    agent = FakeAgent(broker.endpoint)
    try:
        agent.hello()
        agent.welcomed()
        with broker.client() as qc:
            qc.enqueue({"id": "escapes", "command": "true", "max_retries": 1})
            token = agent.expect(m.Dispatch).token
            now = time.time()
            agent.send(m.Result(token=token, outcome="signal", exit_code=None, detail=ESCAPES,
                                started_at=now, finished_at=now))
            wait_until(lambda: qc.get("escapes")["state"] == "dead", 10, message="the job dead")
            # The same attempt reported again, differently: kept as its late result.
            agent.send(m.Result(token=token, outcome="spawn_error", exit_code=None,
                                detail=ESCAPES, started_at=None, finished_at=now + 1))
            wait_until(lambda: qc.get("escapes")["attempts_log"][0]["late_result"], 10,
                       message="the late result")
    finally:
        agent.close()
    for args in (("show", "escapes"), ("dlq", "list")):
        shown = run_cli(broker, *args)
        assert shown.returncode == 0, shown.stderr
        assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout, repr(shown.stdout)
    job = cli_json(broker, "show", "escapes")
    assert job["last_error"] == "killed by signal \\x1b]0;pwned\\x07\\x1b[2J\\u202e", job
    assert job["attempts_log"][0]["late_result"] == \
        "could not start: \\x1b]0;pwned\\x07\\x1b[2J\\u202e", job


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_a_flood_of_fake_agents_leaves_nothing_held_behind(broker):
    """3,000 fake agents of 10,000 slots each say Hello and vanish: the broker
    forgets them and gives the memory they cost back (it kept ~90 MiB before)."""
    import resource

    import zmq

    flood = 3000
    configure(broker, heartbeat_sec=0.5, lease_sec=2)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4 * flood + 1000)
    if want < 2 * flood + 200:
        pytest.skip(f"needs {2 * flood + 200} file descriptors; the hard limit is {hard}")
    for pid in (0, broker.proc.pid):  # this process's sockets, and the broker's connections
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (want, hard))
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, flood + 100)
    idle = rss_mib(broker.proc.pid)
    fakes = []
    try:
        for n in range(flood):
            fake = FakeAgent(broker.endpoint, f"flood-{n}", slots=10_000,
                             labels={"team": f"t{n % 50}"}, context=ctx)
            fake.hello()
            fakes.append(fake)
        for fake in fakes:
            fake.welcomed(timeout=60)
        with broker.client() as qc:
            assert qc.status()["slots"]["total"] == flood * 10_000
            assert qc.enqueue({"command": "true", "requires": {"team": "nobody"}})
        peak = rss_mib(broker.proc.pid)
    finally:
        for fake in fakes:
            fake.close()
        ctx.term()
    with broker.client() as qc:
        wait_until(lambda: qc.status()["agents"] == 0, 30, message="the fake agents to expire")
    wait_until(lambda: rss_mib(broker.proc.pid) < idle + 25, 10,
               message=f"the broker's memory to return near {idle:.0f} MiB "
                       f"(peak {peak:.0f} MiB, now {rss_mib(broker.proc.pid):.0f} MiB)")


def test_a_hello_cannot_make_the_broker_hold_megabytes(broker):
    big = FakeAgent(broker.endpoint, labels={f"k{n}": "v" * 200 for n in range(5000)})
    try:
        big.hello()
        assert "at most 64 labels" in big.refused().message
        big.labels = {}
        big.hello(tokens=list(range(1, 100_000)))
        assert "3 per slot" in big.refused().message
        assert cli_json(broker, "agents") == []
    finally:
        big.close()


def test_text_an_agent_sends_reaches_the_brokers_log_escaped(broker):
    """The broker logs a late result's reason, which the agent wrote; its log goes
    to a terminal under `queuectl up`."""
    agent = FakeAgent(broker.endpoint)
    try:
        agent.hello()
        agent.welcomed()
        with broker.client() as qc:
            qc.enqueue({"id": "late", "command": "true", "max_retries": 1})
            token = agent.expect(m.Dispatch).token
            now = time.time()
            agent.send(m.Result(token=token, outcome="ok", exit_code=0, detail="", started_at=now,
                                finished_at=now))
            wait_until(lambda: qc.get("late")["state"] == "completed", 10, message="late done")
            agent.send(m.Result(token=token, outcome="spawn_error", exit_code=None,
                                detail="\x1b]0;pwned\x07\nERROR forged line", started_at=None,
                                finished_at=now + 1))
            wait_until(lambda: qc.get("late")["attempts_log"][0]["late_result"], 10,
                       message="the late result recorded")
        log = broker.log()
        assert "pwned" in log  # it was logged...
        assert "\x1b" not in log and "\x07" not in log and "\nERROR forged" not in log  # ...as text
    finally:
        agent.close()


def test_an_agent_cannot_give_back_a_job_it_started(broker):
    """A Reject is for a job never started; one that ran keeps its attempt and output."""
    agent = FakeAgent(broker.endpoint)
    try:
        agent.hello()
        agent.welcomed()
        with broker.client() as qc:
            qc.enqueue({"id": "ran", "command": "true"})
            token = agent.expect(m.Dispatch).token
            now = time.time()
            agent.send(m.Started(token=token, pid=321, started_at=now),
                       m.Output(token=token, stream=m.STDOUT, offset=0, data=b"did it\n"),
                       m.Reject(token=token))
            agent.settled()
            job = qc.get("ran")
            assert job["state"] == "processing" and [a["token"] for a in job["attempts_log"]] \
                == [token] and job["attempts_log"][0]["pid"] == 321
            agent.send(m.Result(token=token, outcome="ok", exit_code=0, detail="", started_at=now,
                                finished_at=now + 0.1, stdout_end=7))
            wait_until(lambda: qc.get("ran")["state"] == "completed", 10, message="ran completed")
        assert output_of(broker, "ran") == "did it\n"
    finally:
        agent.close()


def test_a_peer_cannot_flood_the_brokers_log(broker):
    """Each refused Hello, refused frame and malformed frame used to log a line:
    20,000 from one connection in a second (found by review)."""
    noisy = FakeAgent(broker.endpoint, routing="")  # refused: no secret identity
    try:
        # In rounds of 20 frames: the broker answers each with an Error, and it
        # keeps at most 100 unread frames for one peer (SNDHWM) before it drops
        # the rest, the ping's reply among them.
        for _ in range(30):
            for _ in range(10):
                noisy.hello()
                noisy.socket.send(b"\x93garbage")
            noisy.settled()
            noisy.inbox.clear()
        log = broker.log()
        assert log.count("refused a hello") <= 1 and log.count("malformed frame") <= 1, log[-600:]
    finally:
        noisy.close()
