"""A property-based fake agent: whatever an agent says, it changes only its own jobs.

Issue 13: any sequence of well-typed agent messages with arbitrary values, from
one or several connections, never makes a read command fail, never changes a
job that the connection does not lease, and never crashes the broker.

The world under attack (one real broker, a victim agent, jobs nobody may
lease, finished jobs, bait) is in ``tests/agentworld.py``. Each example opens
1-3 **attacker** connections, fake agents whose ids are their own, the
victim's, the finished jobs' agent's, each other's, or any text, and sends
drawn sequences of well-typed Hello, Started, Output, Result, Heartbeat, Drain,
Reject and Bye, up to 4 per frame, with hostile values: tokens of the victim,
of finished jobs, of its own and the other attackers' dispatches, of earlier
examples, of the next dispatch, or any 64-bit integer; times that are NaN,
infinite, huge, zero, negative or near the broker's clock; any text (control
characters included); label maps; routing identities missing, equal to the id,
the victim's, or any text. Some steps run its jobs as an agent does, with any
text in the results, so hostile values also reach the stored jobs.

After each example, and again after every attacker said Bye and left:

1. the broker runs and answers a ping, and its log records no handler bug;
2. every read answers through the Python client (status, list, show and logs
   of every job, dlq list, agents, metrics, queues, config) with strict JSON and
   no control character in any text; status agrees with list; the stats page
   answers ``/``, ``/api/stats``, ``/metrics`` and the given jobs' pages; every
   5 examples the real CLI answers ``status --json``, ``list``, ``agents``,
   ``dlq list`` and ``show`` (with and without --json), and at the end every
   listing in both forms and ``show``/``logs`` of most jobs;
3. the victim's, the unleasable and the finished jobs equal their snapshot
   (state, attempts, times, exit code, error, agent, attempts log, output);
   the victim is still connected with its 4 jobs and was told nothing but
   heartbeats; a job no attacker was given is unchanged; a job an attacker was
   given keeps its earlier attempts, its new attempts are those of attackers,
   and while leased to an attacker that said nothing the broker could have
   handled after the dispatch (no message naming it, no Bye, no second
   Hello) it is exactly as dispatched. At the end the victim reports its jobs
   and they complete with its own output.

Hypothesis draws the same examples in CI (tests/conftest.py); set
QUEUECTL_PROPERTY_EXAMPLES (default 100) and HYPOTHESIS_PROFILE=explore to explore.
"""

from __future__ import annotations

import os
import re
import reprlib
import secrets
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agentworld import FINISHER, VICTIM, Attacker, World
from fakeagent import FakeAgent
from harness import wait_until
from hostile import FLOATS, INTS, TEXT, assert_alive
from queuectl.proto import codec
from queuectl.proto import messages as m
from queuectl.proto.states import Outcome

pytestmark = [pytest.mark.integration, pytest.mark.faults]

EXAMPLES = int(os.environ.get("QUEUECTL_PROPERTY_EXAMPLES", "100"))  # the CI budget: ~50 s
CLI_EVERY = 5  # examples between two runs of the real CLI (each takes ~0.3 s to start)
CLI_FINAL_JOBS = 8  # bait jobs the CLI shows at the end, besides every other job

# --- values a hostile agent sends --------------------------------------------------------

WIRE_INTS = INTS.filter(lambda v: v in codec.INT64)  # bigger ones only get the frame refused
TEXTS = st.one_of(TEXT, st.sampled_from(["", "[/bold]", "\u202eevil", "a\nb", "\x00", "x" * 300,
                                         "\x1b]0;title\x07\x1b[2J", VICTIM, FINISHER, "%s %d {}"]))
# Times: absurd ones, and ones near the broker's clock, inside and outside the skew it allows.
TIMES = st.one_of(FLOATS, st.sampled_from([1e300, -1e300, 0.0, -1.0, 1e11]),
                  st.floats(-400, 400).map(lambda offset: time.time() + offset))
LABELS: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.just({}), st.just({"team": "x"}), st.dictionaries(TEXTS, TEXTS, max_size=3),
    st.just({f"k{n}": "v" for n in range(65)}))
KNOWN_OUTCOMES = st.sampled_from([o.value for o in Outcome])
OUTCOMES = st.one_of(KNOWN_OUTCOMES, KNOWN_OUTCOMES, TEXTS)
STREAMS = st.one_of(st.sampled_from([m.STDOUT, m.STDERR]), WIRE_INTS)
OFFSETS = st.one_of(st.just(0), st.integers(0, 64), WIRE_INTS)
# Where a result says its output ended: mostly where the broker has it (0), or it is
# not applied until the output is resent, which a fake agent never does.
ENDS = st.one_of(st.just(0), st.just(0), OFFSETS)


def socket_identity(agent_id: str) -> str:
    """What a real agent uses: its id, a slash and a secret; ZeroMQ allows 1-255 bytes, not
    starting with a zero byte."""
    routing = f"{agent_id}/{secrets.token_hex(16)}"
    if len(routing.encode()) > 255 or routing.startswith("\0"):
        routing = f"odd/{secrets.token_hex(16)}"
    return routing


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
    assert world.victim is not None  # the world has one
    routing = {"own": me.fake.routing, "none": "", "id": agent_id,
               "victim": world.victim.routing}.get(routing) or draw(TEXTS)
    return m.Hello(agent_id=agent_id, host=draw(TEXTS), pid=draw(WIRE_INTS),
                   slots=draw(st.one_of(st.integers(1, 4), st.sampled_from(
                       [0, -1, 10_000, 10_001, 2**40]))),
                   labels=draw(LABELS), tokens=draw(st.lists(tokens(world, me, []), max_size=6)),
                   seq=draw(WIRE_INTS), routing=routing)


@st.composite
def plausible(draw, kind: str, me: Attacker, token: st.SearchStrategy) -> Any:
    """What a real agent says about a lease it holds (it starts, prints and ends the
    job), though with any text: the hostile values go the whole way through."""
    pick, other = draw(st.integers(0, 2**16)), draw(token)  # both always: see tokens()
    own = sorted(me.dispatched)
    lease = own[pick % len(own)] if own else other
    if kind == "started":
        return m.Started(token=lease, pid=draw(st.integers(2, 99_999)), started_at=time.time())
    if kind == "output":
        return m.Output(token=lease, stream=draw(st.sampled_from([m.STDOUT, m.STDERR])), offset=0,
                        data=b"attacker output\n")
    return m.Result(token=lease, outcome=draw(KNOWN_OUTCOMES),
                    exit_code=draw(st.sampled_from([0, 1, None])), detail=draw(TEXTS),
                    started_at=None, finished_at=time.time())


@st.composite
def agent_message(draw, world: World, me: Attacker, attackers: list[Attacker]) -> Any:
    kind = draw(st.sampled_from(["hello", "started", "output", "output", "result", "result",
                                 "reject", "heartbeat", "drain", "bye"]))
    token = tokens(world, me, attackers)
    if kind == "hello":
        return draw(hello(world, me))
    if kind in ("started", "output", "result") and draw(st.integers(0, 2)) == 0:
        return draw(plausible(kind, me, token))
    if kind == "started":
        return m.Started(token=draw(token), pid=draw(WIRE_INTS), started_at=draw(TIMES))
    if kind == "output":
        return m.Output(token=draw(token), stream=draw(STREAMS), offset=draw(OFFSETS),
                        data=draw(st.binary(max_size=64)), gap=draw(st.booleans()))
    if kind == "result":
        return m.Result(token=draw(token), outcome=draw(OUTCOMES),
                        exit_code=draw(st.one_of(st.none(), st.integers(-300, 300), WIRE_INTS)),
                        detail=draw(TEXTS), started_at=draw(st.one_of(st.none(), TIMES)),
                        finished_at=draw(TIMES), stdout_end=draw(ENDS), stderr_end=draw(ENDS),
                        pid=draw(st.one_of(st.none(), WIRE_INTS)))
    if kind == "reject":
        return m.Reject(token=draw(token))
    return {"heartbeat": m.Heartbeat, "drain": m.Drain, "bye": m.Bye}[kind]()


def open_attackers(data, world: World) -> list[Attacker]:
    attackers: list[Attacker] = []
    for number in range(data.draw(st.integers(1, 3), label="attackers")):
        # Mostly an id of its own (it gets jobs), else one in use or any text.
        kind = data.draw(st.integers(0, 9), label="agent id")
        taken = [VICTIM, FINISHER] + [a.ids[0] for a in attackers]
        agent_id = (f"attacker-{number}" if kind < 6 else data.draw(st.sampled_from(taken))
                    if kind < 8 else data.draw(TEXTS))
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
        step = data.draw(st.sampled_from(["send", "send", "settle, send", "settle, work"]),
                         label="step")
        if step.startswith("settle"):
            attacker.settle(world.broker)  # learns its dispatches: it may name them
        if step.endswith("work"):  # runs its jobs as an agent does, with any text
            kinds = st.sampled_from(["started", "output", "result", "result"])
            def work(kind: str, attacker: Attacker = attacker) -> st.SearchStrategy:
                return plausible(kind, attacker, tokens(world, attacker, attackers))

            message = kinds.flatmap(work)
        else:
            message = agent_message(world, attacker, attackers)
        attacker.send(data.draw(st.lists(message, min_size=1, max_size=4), label="frame"))
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
    assert sorted(leased) == world.victim_jobs, f"still leased after the attackers left: {leased}"


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
                job_id = (given_jobs or world.victim_jobs)[0]
                world.check_cli([["status", "--json"], ["list"], ["agents"], ["dlq", "list"],
                                 ["show", job_id], ["show", job_id, "--json"]])
            world.check_log()
        except Exception as exc:
            world.first_failure = world.first_failure or describe(exc, world, attackers)
            raise
        finally:  # also after a failure: the next example starts with the victim alone
            for attacker in attackers:
                world.attacker_tokens += sorted(attacker.dispatched)
                world.stats.update(type(msg).__name__ for msg in attacker.sent)
                world.stats.update(attacker.told)
            leave(world, attackers, qc)
        world.check_reads(qc, before, attackers)  # their Byes too changed only their jobs


def describe(exc: Exception, world: World, attackers: list[Attacker]) -> AssertionError:
    """The failure with what each attacker sent in its example. Hypothesis replays a
    failing example to report it, but the world has changed since (a job the broker
    spoiled stays so), so the replay may fail elsewhere or not at all: this is the
    report to read."""
    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlist = 80, 200, 50
    sent = "\n".join(f"  attacker {a.ids} was dispatched {a.dispatched} and sent "
                     f"{short.repr(a.sent)}" for a in attackers)
    failure = AssertionError(f"{exc}\nin example {world.examples}:\n{sent}")
    failure.__cause__ = exc
    return failure


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
    try:
        run()
    except Exception:
        if world.first_failure is not None:
            raise world.first_failure from None
        raise
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
        commands = [[*command, *form] for command in (["status"], ["list", "--limit", "1000"],
                                                     ["agents"], ["dlq", "list"])
                    for form in ([], ["--json"])]
        for job_id in sorted(world.protected) + sample:
            commands += [["show", job_id], ["show", job_id, "--json"]]
            if jobs[job_id][1]:
                commands.append(["logs", job_id])
        world.check_cli(commands)
        world.check_pages(list(jobs))
        world.check_log()
        world.victim_finishes(qc)
