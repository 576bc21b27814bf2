"""A property-based fake agent: whatever an agent says, it changes only its own jobs.

Issue 13: any sequence of well-typed agent messages with arbitrary values, from
one or several connections, never makes a read command fail, never changes a
job that the connection does not lease, and never crashes the broker.

One real broker per test holds a world built before the first example:

- a **victim**, a well-behaved fake agent leased 4 jobs (two started, with
  output on stdout and stderr; one started and silent; one not started),
  which it never reports, so they stay ``processing``;
- jobs nobody may lease: delayed an hour, one with labels, one in a paused queue;
- finished jobs: completed, dead by exit code, dead by "agent lost", failed
  and waiting an hour for its retry, canceled;
- **bait**: three pending jobs at the start of each example, which an attacker
  that says Hello with free slots is given (the victim has no free slot).

Nothing changes by itself: leases last an hour and so does every retry's
backoff, so each change the test sees was caused by a message.

Each example opens 1-3 **attacker** connections (fake agents with agent ids
of their own, the victim's, the finished jobs' agent, or each other's) and
sends drawn sequences of well-typed Hello, Started, Output, Result, Heartbeat,
Drain, Reject and Bye, several per frame, with hostile values: tokens of the
victim, of finished jobs, of its own and the other attackers' dispatches, of
the next dispatch, or any 64-bit integer; times that are NaN, infinite, huge,
zero, negative or near the broker's clock; any text (control characters
included); label maps; routing identities missing, equal to the id, the
victim's, random. Then every check of ``World.check`` holds.
"""

from __future__ import annotations

import itertools
from collections import Counter
import json
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from fakeagent import FakeAgent
from harness import configure, program, wait_until
from hostile import FLOATS, INTS, TEXT, assert_alive, broker_bugs, strict_json
from queuectl.dashboard.app import create_app
from queuectl.proto import codec, encode
from queuectl.proto import messages as m
from queuectl.proto.states import Outcome

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# The CI budget; QUEUECTL_PROPERTY_EXAMPLES=400 HYPOTHESIS_PROFILE=explore explores further.
EXAMPLES = int(os.environ.get("QUEUECTL_PROPERTY_EXAMPLES", "50"))
CLI_EVERY = 5      # examples between two runs of the real CLI (it takes ~0.3 s to start)
CLI_FINAL_JOBS = 16  # bait jobs `show` and `logs` at the end, besides every other job
VICTIM, FINISHER = "victim", "finisher"
BAIT = 3           # pending bait jobs at the start of each example
SETTLE_WAIT = 15.0

# --- values a hostile agent sends --------------------------------------------------------

WIRE_INTS = INTS.filter(lambda v: v in codec.INT64)  # bigger ones only get the frame refused
TEXTS = st.one_of(TEXT, st.sampled_from(["", "[/bold]", "\u202eevil", "a\nb", "\x00", "x" * 300,
                                         VICTIM, FINISHER, "%s %d {}"]))
# Times: absurd ones, and ones near the broker's clock, inside and outside the skew it allows.
TIMES = st.one_of(FLOATS, st.sampled_from([1e300, -1e300, 0.0, -1.0, 1e11]),
                  st.floats(-400, 400).map(lambda offset: time.time() + offset))
LABELS = st.one_of(st.just({}), st.just({"team": "x"}), st.dictionaries(TEXTS, TEXTS, max_size=3),
                   st.just({f"k{n}": "v" for n in range(65)}))
OUTCOMES = st.one_of(st.sampled_from([o.value for o in Outcome]), TEXTS)
OFFSETS = st.one_of(st.just(0), st.integers(0, 64), WIRE_INTS)


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

    def settle(self, broker, timeout: float = SETTLE_WAIT) -> None:
        """Until the broker has handled everything this connection sent so far."""
        req_id = next(REQ_IDS)
        self.pings[req_id] = len(self.sent)
        self.fake.socket.send(encode(m.Request(req_id=req_id, op="ping", args={})))
        deadline = time.monotonic() + timeout
        while req_id in self.pings:
            self.fake.receive(0.1)
            self.take_inbox()
            assert broker.proc.poll() is None, \
                f"the broker exited with {broker.proc.returncode}:\n{broker.log()[-1500:]}"
            assert time.monotonic() < deadline, f"no answer to a ping within {timeout}s"

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


def socket_identity(agent_id: str) -> str:
    """What a real agent uses: its id, a slash and a secret; ZeroMQ allows 1-255 bytes, not
    starting with a zero byte."""
    routing = f"{agent_id}/{secrets.token_hex(16)}"
    if len(routing.encode()) > 255 or routing.startswith("\0"):
        routing = f"odd/{secrets.token_hex(16)}"
    return routing


# --- the world -----------------------------------------------------------------------------

REQ_IDS = itertools.count(1)


def settle(broker, fake: FakeAgent, timeout: float = SETTLE_WAIT) -> None:
    """A ping round trip on ``fake``'s own connection: once it is answered, the broker
    has handled everything sent on it before, and what it sent back is in the inbox."""
    req_id = next(REQ_IDS)
    fake.socket.send(encode(m.Request(req_id=req_id, op="ping", args={})))
    deadline = time.monotonic() + timeout
    while True:
        got = fake.receive(0.1)
        for msg in got:
            if isinstance(msg, m.Reply) and msg.req_id == req_id:
                fake.inbox.remove(msg)
                return
        assert broker.proc.poll() is None, \
            f"the broker exited with {broker.proc.returncode}:\n{broker.log()[-1500:]}"
        assert time.monotonic() < deadline, f"no answer to a ping within {timeout}s"


def dispatched(broker, fake: FakeAgent) -> m.Dispatch:
    settle(broker, fake)
    return fake.expect(m.Dispatch, timeout=5)


def read_job(qc, job_id: str) -> tuple[dict[str, Any], list[tuple[int, bytes, int]]]:
    """``show`` and ``logs`` of a job through the Python client; the document must be JSON
    (the CLI prints it). ``waiting`` is left out: it describes the agents, not the job."""
    view = qc.get(job_id)
    json.dumps(view, allow_nan=False)
    view.pop("waiting")
    return view, [(chunk.stream, chunk.data, chunk.skipped) for chunk in qc.logs(job_id)]


class World:
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
                self.protected[job_id] = read_job(qc, job_id)
                self.finished_tokens += [a["token"] for a in self.protected[job_id][0]["attempts_log"]
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
                token = dispatched(self.broker, finisher).token
                now = time.time()
                finisher.send(m.Started(token=token, pid=4321, started_at=now),
                              m.Output(token=token, stream=m.STDOUT, offset=0, data=b"out\n"),
                              m.Output(token=token, stream=m.STDERR, offset=0, data=b"err\n"),
                              m.Result(token=token, outcome=outcome, exit_code=exit_code,
                                       detail="", started_at=now, finished_at=time.time(),
                                       stdout_end=4, stderr_end=4, pid=4321))
                settle(self.broker, finisher)
            qc.enqueue({"id": "done-lost", "command": "true", "max_retries": 1})
            token = dispatched(self.broker, finisher).token
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
        assert not bugs and "Traceback" not in log, "broker bugs:\n" + "\n".join(bugs or [log[-3000:]])

    def check_cli(self, job_ids: list[str], everything: bool = False) -> None:
        """The real ``queuectl``: listings with and without --json, ``show`` and ``logs``."""
        commands = [["status", "--json"], ["list", "--json"], ["list"], ["agents"],
                    ["agents", "--json"], ["dlq", "list"]]
        if everything:
            commands += [["status"], ["dlq", "list", "--json"], ["list", "--limit", "1000"]]
        for job_id in job_ids:
            commands += [["show", job_id], ["show", job_id, "--json"], ["logs", job_id]]
        for args, done in zip(commands, run_clis(self.broker, commands)):
            assert done.returncode == 0, f"queuectl {' '.join(args)} failed: {done.stderr!r}"
            if "--json" in args:
                strict_json(done.stdout)
            elif args[0] != "logs":
                assert done.stdout.strip(), f"queuectl {' '.join(args)} printed nothing"


def run_clis(broker, commands: list[list[str]], parallel: int = 3) -> list[subprocess.CompletedProcess]:
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


# --- one example ----------------------------------------------------------------------------

TOKEN_KINDS = ["victim", "finished", "own", "own", "others", "earlier", "next", "any"]


@st.composite
def tokens(draw, world: World, me: Attacker, attackers: list[Attacker]) -> int:
    """A token: the victim's, a finished job's, its own, another attacker's, one of an
    earlier example, the next ones to be dispatched, or any. The draw is a kind and an
    index, not a value, since what there is to pick from depends on what the broker
    did (hypothesis requires the same choices for the same draws)."""
    kind = draw(st.sampled_from(TOKEN_KINDS))
    if kind == "any":
        return draw(WIRE_INTS)
    pick = draw(st.integers(0, 2**16))
    own = sorted(me.dispatched)
    pool = {"victim": world.victim_tokens, "finished": world.finished_tokens, "own": own,
            "others": sorted(t for a in attackers if a is not me for t in a.dispatched),
            "earlier": world.attacker_tokens, "next": []}[kind]
    if pool:
        return pool[pick % len(pool)]
    known = world.victim_tokens + world.finished_tokens + world.attacker_tokens + own
    return max(known) + 1 + pick % 3


@st.composite
def hello(draw, world: World, me: Attacker, greeting: bool = False) -> m.Hello:
    """A Hello; a ``greeting`` is mostly a plausible one, so that attackers get jobs."""
    if greeting and draw(st.integers(0, 3)) < 3:
        return m.Hello(agent_id=me.ids[0], host="attacker", pid=1, slots=draw(st.integers(1, 3)),
                       labels=draw(st.sampled_from([{}, {"team": "x"}])), seq=1,
                       routing=me.fake.routing)
    agent_id = draw(st.one_of(st.sampled_from(me.ids[:1] * 3 + me.ids), TEXTS))
    if agent_id not in me.ids:
        me.ids.append(agent_id)
    routing = draw(st.sampled_from(["own", "own", "own", "none", "id", "victim", "text"]))
    routing = {"own": me.fake.routing, "none": "", "id": agent_id,
               "victim": world.victim.routing}.get(routing) or draw(TEXTS)
    return m.Hello(agent_id=agent_id, host=draw(TEXTS), pid=draw(WIRE_INTS),
                   slots=draw(st.one_of(st.integers(1, 4), st.sampled_from(
                       [0, -1, 10_000, 10_001, 2**40]))),
                   labels=draw(LABELS), tokens=draw(st.lists(tokens(world, me, []), max_size=6)),
                   seq=draw(WIRE_INTS), routing=routing)


@st.composite
def plausible(draw, kind: str, token: int) -> Any:
    """What a real agent says about its lease ``token``: the jobs it was given start,
    print, and end (completed, or failed towards the DLQ)."""
    if kind == "started":
        return m.Started(token=token, pid=draw(st.integers(2, 99_999)), started_at=time.time())
    if kind == "output":
        return m.Output(token=token, stream=draw(st.sampled_from([m.STDOUT, m.STDERR])), offset=0,
                        data=b"attacker output\n")
    return m.Result(token=token, outcome=draw(st.sampled_from(["ok", "ok", "exit"])),
                    exit_code=draw(st.sampled_from([0, 1])), detail="", started_at=None,
                    finished_at=time.time())


@st.composite
def agent_message(draw, world: World, me: Attacker, attackers: list[Attacker]) -> Any:
    kind = draw(st.sampled_from(["hello", "started", "output", "output", "result", "result",
                                 "reject", "heartbeat", "drain", "bye"]))
    token = tokens(world, me, attackers)
    if kind == "hello":
        return draw(hello(world, me))
    if kind in ("started", "output", "result") and draw(st.integers(0, 2)) == 0:
        return draw(plausible(kind, draw(token)))
    if kind == "started":
        return m.Started(token=draw(token), pid=draw(WIRE_INTS), started_at=draw(TIMES))
    if kind == "output":
        return m.Output(token=draw(token), stream=draw(st.one_of(st.sampled_from([1, 2]), WIRE_INTS)),
                        offset=draw(OFFSETS), data=draw(st.binary(max_size=64)),
                        gap=draw(st.booleans()))
    if kind == "result":
        return m.Result(token=draw(token), outcome=draw(OUTCOMES),
                        exit_code=draw(st.one_of(st.none(), st.integers(-300, 300), WIRE_INTS)),
                        detail=draw(TEXTS), started_at=draw(st.one_of(st.none(), TIMES)),
                        finished_at=draw(TIMES), stdout_end=draw(OFFSETS),
                        stderr_end=draw(OFFSETS), pid=draw(st.one_of(st.none(), WIRE_INTS)))
    if kind == "reject":
        return m.Reject(token=draw(token))
    return {"heartbeat": m.Heartbeat, "drain": m.Drain, "bye": m.Bye}[kind]()


def open_attackers(data, world: World) -> list[Attacker]:
    attackers: list[Attacker] = []
    for number in range(data.draw(st.integers(1, 3), label="attackers")):
        own, taken = f"attacker-{number}", [VICTIM, FINISHER] + [a.ids[0] for a in attackers]
        agent_id = data.draw(st.one_of(st.just(own), st.just(own), st.sampled_from(taken), TEXTS),
                             label="agent id")
        # The simplest draw (0) is the common case: hypothesis draws it more often.
        routing = socket_identity(agent_id) if data.draw(st.integers(0, 9)) < 9 else ""
        fake = FakeAgent(world.broker.endpoint, agent_id, routing=routing)
        attackers.append(Attacker(fake, [agent_id]))
    return attackers


def attack(data, world: World, attackers: list[Attacker]) -> None:
    for attacker in attackers:
        if data.draw(st.integers(0, 4), label="greets first") < 4:
            attacker.send([data.draw(hello(world, attacker, greeting=True), label="greeting")])
    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        attacker = attackers[data.draw(st.integers(0, len(attackers) - 1), label="who")]
        if data.draw(st.integers(0, 2), label="settle first") == 0:
            attacker.settle(world.broker)  # learns its dispatches: it may name them
        batch = data.draw(st.lists(agent_message(world, attacker, attackers), min_size=1,
                                   max_size=4), label="frame")
        attacker.send(batch)
        for each in attackers:
            each.fake.receive()
            each.take_inbox()
    for _ in range(2):  # the second round hears dispatches caused by the others' messages
        for attacker in attackers:
            attacker.settle(world.broker)


def leave(world: World, attackers: list[Attacker], qc) -> None:
    """Every attacker says Bye and closes; only the victim stays connected."""
    for attacker in attackers:
        attacker.fake.send(m.Bye())
    for attacker in attackers:
        attacker.settle(world.broker)
        attacker.fake.close()
    wait_until(lambda: [a["id"] for a in qc.agents()] == [VICTIM], 15,
               message="the attackers to be gone")
    leased = [job["id"] for job in qc.list(state="processing", limit=1000)]
    assert sorted(leased) == world.victim_jobs, f"jobs still leased after the attackers left: {leased}"


def one_example(data, world: World) -> None:
    world.examples += 1
    with world.broker.client() as qc:
        world.top_up_bait(qc)
        before = world.read_all(qc)
        world.check_protected(before)
        attackers = open_attackers(data, world)
        try:
            attack(data, world, attackers)
            assert_alive(world.broker)
            world.check_reads(qc, before, attackers)
            world.check_victim(qc)
            given_jobs = sorted({j for a in attackers for j in a.dispatched.values()})
            world.check_pages(given_jobs)
            if world.examples % CLI_EVERY == 0:
                world.check_cli(given_jobs[:2] or [world.victim_jobs[0]])
            world.check_log()
        finally:  # also after a failure: the next example starts with the victim alone
            for attacker in attackers:
                world.attacker_tokens += sorted(attacker.dispatched)
                world.stats.update(type(msg).__name__ for msg in attacker.sent)
                world.stats.update(attacker.told)
            leave(world, attackers, qc)
        world.check_reads(qc, before, attackers)  # their Byes too changed only their jobs


# --- the test -------------------------------------------------------------------------------

@pytest.mark.timeout(max(300, EXAMPLES * 6))
def test_any_agent_messages_change_only_the_senders_own_jobs(broker):
    world = World(broker)
    world.build()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        one_example(data, world)

    started = time.monotonic()
    run()
    with broker.client() as qc:
        jobs = world.read_all(qc)
        world.stats.update(f"bait {view['state']}" for job_id, (view, _) in jobs.items()
                           if job_id not in world.protected)
        print(f"{world.examples} examples in {time.monotonic() - started:.1f}s; "
              f"{len(world.attacker_tokens)} jobs dispatched to attackers; {dict(world.stats)}")
        world.check_protected(jobs)
        world.check_victim(qc)
        bait = sorted((job_id for job_id in jobs if job_id not in world.protected),
                      key=lambda job_id: int(re.sub(r"\D", "", job_id)))
        sample = bait[::max(1, len(bait) // CLI_FINAL_JOBS)][:CLI_FINAL_JOBS]
        world.check_cli(sorted(world.protected) + sample, everything=True)
        world.check_pages(list(jobs))
        world.check_log()
        victim_finishes(world, qc)


def victim_finishes(world: World, qc) -> None:
    """After all that, the victim reports its jobs: they complete, with its own output."""
    now = time.time()
    for job_id, token in zip(world.victim_jobs, world.victim_tokens):
        stdout, stderr = world.victim_output.get(token, (b"", b""))
        world.victim.send(m.Result(token=token, outcome="ok", exit_code=0, detail="",
                                   started_at=None, finished_at=now, stdout_end=len(stdout),
                                   stderr_end=len(stderr)))
    settle(world.broker, world.victim)
    for job_id, token in zip(world.victim_jobs, world.victim_tokens):
        view, output = read_job(qc, job_id)
        assert (view["state"], view["agent"], len(view["attempts_log"])) == \
            ("completed", VICTIM, 1), view
        stdout, stderr = world.victim_output.get(token, (b"", b""))
        assert output == [(stream, data, 0) for stream, data in ((1, stdout), (2, stderr)) if data]
    world.victim.close()
