"""The world the agent property test attacks (tests/integration/test_agent_properties.py).

One real broker holds, before any attack:

- a **victim**: a well-behaved fake agent leased 4 jobs (two started, with
  output on stdout and stderr; one started and silent; one not started),
  which it never reports, so they stay ``processing``;
- jobs nobody may lease: delayed an hour, one with labels, one in a paused queue;
- finished jobs: completed, dead by exit code, dead by "agent lost", failed
  and waiting an hour for its retry, canceled;
- **bait**: three pending jobs at the start of each example, which an attacker
  that says Hello with free slots is given (the victim has no free slot).

Nothing changes by itself: leases last an hour and so does every retry's
backoff, so each change a check sees was caused by a message. ``Attacker``
records what one hostile connection sent and was dispatched, and when.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fakeagent import FakeAgent
from harness import configure, program, wait_until
from hostile import broker_bugs, strict_json
from queuectl.dashboard.app import create_app
from queuectl.proto import encode
from queuectl.proto import messages as m

VICTIM, FINISHER = "victim", "finisher"
BAIT = 3  # pending bait jobs at the start of each example
SETTLE_WAIT = 15.0  # seconds for the broker to answer a ping behind everything sent before it

REQ_IDS = itertools.count(1)


def settle(broker, fake: FakeAgent, timeout: float = SETTLE_WAIT) -> int:
    """A ping round trip on ``fake``'s own connection: once it is answered, the broker
    has handled everything sent on it before, and what it sent back, the reply
    included, is in the inbox in order. Returns the ping's request id."""
    req_id = next(REQ_IDS)
    fake.socket.send(encode(m.Request(req_id=req_id, op="ping", args={})))
    deadline = time.monotonic() + timeout
    while not any(isinstance(msg, m.Reply) and msg.req_id == req_id for msg in fake.inbox):
        assert broker.proc.poll() is None, \
            f"the broker exited with {broker.proc.returncode}:\n{broker.log()[-1500:]}"
        assert time.monotonic() < deadline, f"no answer to a ping within {timeout}s"
        fake.receive(0.1)
    return req_id


@dataclass
class Attacker:
    """One hostile connection: what it sent, and what it was dispatched when.

    A ping on its own connection tells how many of its messages the broker has
    handled: the reply comes after everything sent before the ping. A Dispatch
    that arrives after that reply was made after those messages were handled,
    so none of them can have touched that lease (``may_have_touched``)."""

    fake: FakeAgent
    ids: list[str]  # agent ids it said or may say Hello with
    sent: list[Any] = field(default_factory=list)
    dispatched: dict[int, str] = field(default_factory=dict)  # token -> job id
    handled_before: dict[int, int] = field(default_factory=dict)  # token -> messages handled
    pings: dict[int, int] = field(default_factory=dict)  # req_id -> messages sent before it
    handled: int = 0  # of its messages, how many the broker is known to have handled
    told: Counter = field(default_factory=Counter)  # what the broker sent it, by type

    def send(self, msgs: list[Any]) -> None:
        self.fake.send(*msgs)
        self.sent.extend(msgs)

    def settle(self, broker) -> None:
        """Until the broker has handled everything this connection sent so far."""
        self.pings[settle(broker, self.fake)] = len(self.sent)
        self.take_inbox()

    def take_inbox(self) -> None:
        for msg in self.fake.inbox:  # in the order the broker sent them
            self.told[f"told {type(msg).__name__}"] += 1
            if isinstance(msg, m.Reply) and msg.req_id in self.pings:
                self.handled = self.pings.pop(msg.req_id)
            elif isinstance(msg, m.Dispatch):
                self.dispatched[msg.token] = msg.job_id
                self.handled_before[msg.token] = self.handled
        self.fake.inbox.clear()

    def may_have_touched(self, token: int) -> bool:
        """Could this connection's own messages have changed its lease ``token``? Only
        those the broker may have handled after dispatching it: one naming it, a Bye
        (it ends every lease) or a Hello that is not its first (a Hello again ends
        the leases it does not name; the first one only makes it an agent)."""
        hellos = [at for at, msg in enumerate(self.sent) if isinstance(msg, m.Hello)]
        return any(isinstance(msg, m.Bye) or getattr(msg, "token", None) == token
                   or (isinstance(msg, m.Hello) and at != hellos[0])
                   for at, msg in enumerate(self.sent) if at >= self.handled_before[token])


# What a terminal or a page would obey instead of showing: C0 and C1 controls, DEL, line and
# paragraph separators, bidirectional-text controls. No job of the world holds any of its own.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e"
                      "\u2066-\u2069]")


def assert_shows_only_text(document: Any) -> None:
    """No text in ``document`` (a job, an agent, the DLQ) holds a control character: an
    agent's words reach users' terminals (``show``, ``dlq list``, ``agents``) as text."""
    if isinstance(document, dict):
        for key, value in document.items():
            assert_shows_only_text(key)
            assert_shows_only_text(value)
    elif isinstance(document, list):
        for value in document:
            assert_shows_only_text(value)
    elif isinstance(document, str):
        assert not CONTROLS.search(document), f"a control character in {document!r}"


def read_job(qc, job_id: str) -> tuple[dict[str, Any], list[tuple[int, bytes, int]]]:
    """``show`` and ``logs`` of a job through the Python client; the document must be JSON
    (the CLI prints it). ``waiting`` is left out: it describes the agents, not the job."""
    view = qc.get(job_id)
    json.dumps(view, allow_nan=False)
    assert_shows_only_text(view)
    view.pop("waiting")
    return view, [(chunk.stream, chunk.data, chunk.skipped) for chunk in qc.logs(job_id)]


class World:
    """The jobs an attack must leave alone, and the checks that it did."""

    def __init__(self, broker):
        self.broker = broker
        self.protected: dict[str, tuple] = {}  # job id -> (view, output) that must never change
        self.victim_jobs: list[str] = []
        self.victim_tokens: list[int] = []
        self.victim_output: dict[int, tuple[bytes, bytes]] = {}
        self.finished_tokens: list[int] = []
        self.attacker_tokens: list[int] = []  # dispatched to attackers, in any example
        self.bait = 0
        self.examples = 0
        self.stats: Counter[str] = Counter()
        self.first_failure: AssertionError | None = None
        self.page = create_app(broker.endpoint, timeout=5.0).test_client()
        self.victim: FakeAgent | None = None

    # -- building it ------------------------------------------------------------------------

    def build(self) -> None:
        configure(self.broker, lease_sec=3600)  # first: lease_sec >= 4 x heartbeat_sec
        configure(self.broker, heartbeat_sec=60, base_backoff=3600, max_backoff=3600)
        with self.broker.client() as qc:
            self._finished(qc)
            self._victim(qc)
            qc.queue_pause("held")
            for job in ({"id": "later", "command": "true", "delay": "1h"},
                        {"id": "later-team", "command": "true", "delay": "1h",
                         "requires": {"team": "x"}},
                        {"id": "held", "command": "true", "queue": "held"}):
                qc.enqueue(job)
            for job_id in [job["id"] for job in qc.list(limit=1000)]:
                view, _ = self.protected[job_id] = read_job(qc, job_id)
                self.finished_tokens += [a["token"] for a in view["attempts_log"]
                                         if a["token"] not in self.victim_tokens]

    def _finished(self, qc) -> None:
        """Jobs another agent ended properly before the attacks: it then leaves."""
        finisher = FakeAgent(self.broker.endpoint, FINISHER, slots=1)
        try:
            finisher.hello()
            finisher.welcomed()
            for job_id, outcome, exit_code, retries in (("done-ok", "ok", 0, 3),
                                                        ("done-dead", "exit", 3, 1),
                                                        ("done-failed", "exit", 2, 3)):
                qc.enqueue({"id": job_id, "command": "true", "max_retries": retries})
                settle(self.broker, finisher)
                token = finisher.expect(m.Dispatch).token
                now = time.time()
                finisher.send(m.Started(token=token, pid=4321, started_at=now),
                              m.Output(token=token, stream=m.STDOUT, offset=0, data=b"out\n"),
                              m.Output(token=token, stream=m.STDERR, offset=0, data=b"err\n"),
                              m.Result(token=token, outcome=outcome, exit_code=exit_code,
                                       detail="", started_at=now, finished_at=time.time(),
                                       stdout_end=4, stderr_end=4, pid=4321))
                settle(self.broker, finisher)
            qc.enqueue({"id": "done-lost", "command": "true", "max_retries": 1})
            settle(self.broker, finisher)
            token = finisher.expect(m.Dispatch).token
            finisher.send(m.Started(token=token, pid=4322, started_at=time.time()),
                          m.Output(token=token, stream=m.STDOUT, offset=0, data=b"partial\n"))
            settle(self.broker, finisher)
            finisher.send(m.Bye())  # with a started job: it ends "agent lost", dead
            settle(self.broker, finisher)
        finally:
            finisher.close()
        qc.enqueue({"id": "done-canceled", "command": "true", "delay": "1h"})
        qc.cancel("done-canceled")
        wait_until(lambda: qc.agents() == [], 10, message="the finisher to leave")
        states = {job_id: qc.get(job_id)["state"] for job_id in
                  ("done-ok", "done-dead", "done-failed", "done-lost", "done-canceled")}
        assert states == {"done-ok": "completed", "done-dead": "dead", "done-failed": "failed",
                          "done-lost": "dead", "done-canceled": "canceled"}, states

    def _victim(self, qc) -> None:
        """Four jobs leased to a well-behaved agent that never reports them."""
        self.victim_jobs = [f"victim-{n}" for n in range(4)]
        qc.enqueue_many([{"id": job_id, "command": "true"} for job_id in self.victim_jobs])
        victim = self.victim = FakeAgent(self.broker.endpoint, VICTIM, slots=4)
        victim.hello()
        victim.welcomed()
        settle(self.broker, victim)
        tokens = {msg.job_id: msg.token for msg in victim.inbox if isinstance(msg, m.Dispatch)}
        assert sorted(tokens) == self.victim_jobs, victim.inbox
        self.victim_tokens = [tokens[job_id] for job_id in self.victim_jobs]
        now = time.time()
        first, second, third, _ = self.victim_tokens
        victim.send(m.Started(token=first, pid=100, started_at=now),
                    m.Output(token=first, stream=m.STDOUT, offset=0, data=b"victim says hi\n"),
                    m.Started(token=second, pid=101, started_at=now),
                    m.Output(token=second, stream=m.STDERR, offset=0, data=b"victim warns\n"),
                    m.Started(token=third, pid=102, started_at=now))
        self.victim_output = {first: (b"victim says hi\n", b""), second: (b"", b"victim warns\n"),
                              third: (b"", b"")}
        settle(self.broker, victim)
        victim.inbox.clear()

    def top_up_bait(self, qc) -> None:
        pending = [job for job in qc.list(state="pending", limit=1000)
                   if job["id"].startswith("bait-")]
        for _ in range(BAIT - len(pending)):
            self.bait += 1
            job = {"id": f"bait-{self.bait}", "command": "true", "max_retries": 2}
            if self.bait % 3 == 0:
                job["requires"] = {"team": "x"}
            qc.enqueue(job)

    # -- the checks -------------------------------------------------------------------------

    def read_all(self, qc) -> dict[str, tuple]:
        """Every read a user makes, through the Python client: each answers, and each
        answer is a JSON document. Returns every job's (view, output)."""
        listed = qc.list(limit=1000)
        documents = [listed, qc.status(), qc.dlq_list(), qc.agents(), qc.metrics(), qc.queues(),
                     qc.config_show()]
        for document in documents:
            json.dumps(document, allow_nan=False)
            assert_shows_only_text(document)
        status = documents[1]
        assert sum(status["counts"].values()) == len(listed), (status, len(listed))
        for state, count in status["counts"].items():
            assert count == sum(job["state"] == state for job in listed), (state, status)
        assert status["dlq"] == len(documents[2]) == status["counts"]["dead"], status
        return {job["id"]: read_job(qc, job["id"]) for job in listed}

    def check_reads(self, qc, before: dict[str, tuple], attackers: list[Attacker]) -> None:
        jobs = self.read_all(qc)
        self.check_protected(jobs)
        self.check_bait(jobs, before, attackers)

    def check_pages(self, job_ids: list[str]) -> None:
        for path in ["/", "/api/stats", "/metrics"] + [f"/jobs/{job_id}" for job_id in job_ids]:
            page = self.page.get(path)
            assert page.status_code == 200, f"GET {path}: {page.status_code}"
        strict_json(self.page.get("/api/stats").get_data(as_text=True))

    def check_protected(self, jobs: dict[str, tuple]) -> None:
        for job_id, before in self.protected.items():
            assert jobs[job_id] == before, f"job {job_id} changed:\n{before}\n{jobs[job_id]}"

    def check_victim(self, qc) -> None:
        """It is still connected with its four jobs, and was told nothing but heartbeats."""
        agents = {agent["id"]: agent for agent in qc.agents()}
        victim = agents[VICTIM]
        assert (victim["state"], victim["slots"], sorted(victim["running"])) == \
            ("active", {"busy": 4, "total": 4}, self.victim_jobs), victim
        assert self.victim is not None  # setup() made it
        self.victim.receive()
        told = [msg for msg in self.victim.inbox if not isinstance(msg, m.Heartbeat)]
        assert not told, f"the victim was sent {told}"
        self.victim.inbox.clear()

    def check_bait(self, jobs: dict[str, tuple], before: dict[str, tuple],
                   attackers: list[Attacker]) -> None:
        """A job no attacker was given is as it was. A job an attacker was given keeps
        every earlier attempt as it was, and if it is still leased to an attacker that
        never spoke of that lease, it is exactly as dispatched: not started, no output."""
        holder = {token: attacker for attacker in attackers for token in attacker.dispatched}
        given_jobs = {job_id for attacker in attackers for job_id in attacker.dispatched.values()}
        for job_id, (view, output) in jobs.items():
            if job_id in self.protected:
                continue
            if job_id not in before:
                raise AssertionError(f"job {job_id} appeared from nowhere: {view}")
            if job_id not in given_jobs:
                assert (view, output) == before[job_id], \
                    f"job {job_id}, given to no attacker, changed:\n{before[job_id]}\n{view}"
                continue
            attempts = {a["token"]: a for a in view["attempts_log"]}
            for earlier in before[job_id][0]["attempts_log"]:
                assert attempts.get(earlier["token"]) == earlier, \
                    f"job {job_id}: an earlier attempt changed: {earlier} -> {view}"
            for token in attempts.keys() - {a["token"] for a in before[job_id][0]["attempts_log"]}:
                assert token in holder and attempts[token]["agent"] in holder[token].ids, \
                    f"job {job_id}: attempt {token} was not dispatched to an attacker: {view}"
            if view["state"] != "processing":
                continue
            lease = view["attempts_log"][-1]
            if holder[lease["token"]].may_have_touched(lease["token"]):
                continue
            self.stats["leases kept by silent attackers"] += 1
            assert (lease["started_at"], lease["finished_at"], lease["pid"], lease["exit_code"],
                    view["started_at"], output) == (None, None, None, None, None, []), \
                f"job {job_id} leased to a silent attacker changed: {view} {output}"

    def check_log(self) -> None:
        log = Path(self.broker.proc.log_path).read_text(errors="replace")
        bugs = broker_bugs(log)
        assert not bugs and "Traceback" not in log, \
            "broker bugs:\n" + "\n".join(bugs or [log[-3000:]])

    def check_cli(self, commands: list[list[str]]) -> None:
        """The real ``queuectl`` answers each command: JSON for --json, text otherwise."""
        for args, done in zip(commands, run_clis(self.broker, commands), strict=True):
            assert done.returncode == 0, f"queuectl {' '.join(args)} failed: {done.stderr!r}"
            if "--json" in args:
                strict_json(done.stdout)
            elif args[0] != "logs":
                assert done.stdout.strip(), f"queuectl {' '.join(args)} printed nothing"

    def victim_finishes(self, qc) -> None:
        """After all that, the victim reports its jobs: they complete, with its own output."""
        assert self.victim is not None  # setup() made it
        now = time.time()
        for token in self.victim_tokens:
            stdout, stderr = self.victim_output.get(token, (b"", b""))
            self.victim.send(m.Result(token=token, outcome="ok", exit_code=0, detail="",
                                       started_at=None, finished_at=now, stdout_end=len(stdout),
                                       stderr_end=len(stderr)))
        settle(self.broker, self.victim)
        for job_id, token in zip(self.victim_jobs, self.victim_tokens, strict=True):
            view, output = read_job(qc, job_id)
            assert (view["state"], view["agent"], len(view["attempts_log"])) == \
                ("completed", VICTIM, 1), view
            stdout, stderr = self.victim_output.get(token, (b"", b""))
            assert output == [(stream, data, 0)
                              for stream, data in ((m.STDOUT, stdout), (m.STDERR, stderr)) if data]
        self.victim.close()


def run_clis(broker, commands: list[list[str]],
             parallel: int = 3) -> list[subprocess.CompletedProcess]:
    """Run the real CLI for each command, a few at once (each spends most of its time
    starting Python)."""
    done: list[subprocess.CompletedProcess] = []
    for start in range(0, len(commands), parallel):
        running = [(args, subprocess.Popen(program("queuectl") + args, env=broker.env(),
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True, errors="replace"))
                   for args in commands[start:start + parallel]]
        for args, proc in running:
            out, err = proc.communicate(timeout=60)
            done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done
