"""The broker's trust boundary for agents (broker/intake.py): what a Hello may
carry, and which reported numbers the broker believes."""

from __future__ import annotations

import math
from typing import Any

import apsw
import pytest

from queuectl.broker.intake import (
    MAX_OFFSET,
    Intake,
    Lease,
    hello_problem,
    output_problem,
    owner_of,
    peer_name,
)
from queuectl.broker.store import MIGRATIONS, Store
from queuectl.broker.views import attempt_view, job_view
from queuectl.proto import messages as m

NOW = 1_700_000_000.0
LEASE = Lease(owner=b"o", dispatched_at=NOW - 10, started_at=NOW - 9, stdout_end=0, stderr_end=0)


def hello(**fields) -> m.Hello:
    body: dict[str, Any] = {"agent_id": "host-1-ab12", "host": "host", "pid": 123, "slots": 2,
            "labels": {"zone": "eu"}, "tokens": [], "seq": 1, "routing": "host-1-ab12/" + "f" * 32}
    body.update(fields)
    return m.Hello(**body)


def test_an_ordinary_hello_is_accepted():
    assert hello_problem(hello()) is None
    assert hello_problem(hello(labels={"gpu": "a100", "team": "données"}, host="")) is None


HOSTILE = ["x\x1b]0;TITLE\x1b\\", "x\x1b]52;c;ZXZpbA==\x07", "two\nlines", "bell\x07", "del\x7f",
           "c1-csi\x9b31m", "rtl\u202egnp.exe", "sep\u2028x", "nul\x00"]


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("field", ["agent_id", "host", "label name", "label value"])
def test_control_characters_are_refused_wherever_a_hello_carries_text(field, text):
    if field == "agent_id":
        msg = hello(agent_id=text)
    elif field == "host":
        msg = hello(host=text)
    elif field == "label name":
        msg = hello(labels={text: "v"})
    else:
        msg = hello(labels={"k": text})
    assert "control characters" in (hello_problem(msg) or "")


@pytest.mark.parametrize("fields, words", [
    ({"routing": ""}, "routing"),
    ({"routing": "host-1-ab12"}, "routing"),  # its public id: anyone could claim it
    ({"routing": "short/x"}, "routing"),
    ({"routing": "r" * 256}, "routing"),
    ({"labels": {f"k{n}": "v" for n in range(65)}}, "at most 64 labels"),
    ({"labels": {"k": "v" * 257}}, "at most 256"),
    ({"labels": {"k" * 129: "v"}}, "at most 128"),
    ({"labels": {"k": 1}}, "strings to strings"),
    ({"labels": {f"k{n:02d}": "v" * 200 for n in range(25)}}, "4096 characters in all"),
    ({"tokens": list(range(1, 8))}, "3 per slot"),  # 2 slots hold at most 6
    ({"tokens": [0]}, "positive"),
    ({"slots": 0}, "slots"),
    ({"slots": 10_001}, "slots"),
    ({"pid": -1}, "pid"),
    ({"agent_id": ""}, "empty"),
    ({"agent_id": "a" * 257}, "at most 256"),
])
def test_what_a_hello_may_make_the_broker_hold_is_bounded(fields, words):
    assert words in (hello_problem(hello(**fields)) or "")


def test_the_owner_digest_binds_identity_and_key_and_hides_the_secret():
    ident = b"host-1-ab12/" + b"f" * 32
    owner = owner_of(ident, None)
    assert owner != owner_of(b"host-1-ab12/" + b"e" * 32, None)  # another connection
    assert owner != owner_of(ident, "hostb")                     # the same identity, another key
    assert owner == owner_of(ident, None) and len(owner) == 16
    assert b"ffff" not in owner
    assert peer_name(ident) == "host-1-ab12"  # logs show the public part only
    assert peer_name(b"x\x1b]0;T/" + b"f" * 32) == "x\\x1b]0;T"


@pytest.mark.parametrize("absurd", [1e300, -1e300, math.inf, -math.inf, math.nan, 0.0,
                                    NOW + 3600, NOW - 86400])
def test_a_result_with_absurd_times_gets_the_brokers_time(absurd):
    intake = Intake()
    result = m.Result(token=7, outcome="ok", exit_code=0, detail="", started_at=absurd,
                      finished_at=absurd)
    checked = intake.result(result, LEASE, NOW, "agent")
    assert checked.finished_at == NOW
    assert checked.started_at == LEASE.started_at  # what the Started said, already checked


def test_a_result_within_the_allowed_clock_skew_is_kept_and_ordered():
    intake = Intake()
    result = m.Result(token=7, outcome="ok", exit_code=0, detail="", started_at=NOW + 100,
                      finished_at=NOW + 50)  # another host's clock, a little ahead
    checked = intake.result(result, LEASE, NOW, "agent")
    assert (checked.started_at, checked.finished_at) == (NOW + 50, NOW + 50)


def test_numbers_out_of_range_become_unknown_not_stored():
    intake = Intake()
    result = m.Result(token=7, outcome="exit", exit_code=2**40, detail="", started_at=None,
                      finished_at=NOW, pid=2**40, stdout_end=-5, stderr_end=2**62)
    checked = intake.result(result, LEASE, NOW, "agent")
    assert checked.exit_code is None and "1099511627776" in checked.detail
    assert checked.pid is None
    assert (checked.stdout_end, checked.stderr_end) == (0, MAX_OFFSET)
    started = intake.started(m.Started(token=7, pid=-3, started_at=math.nan), NOW - 60, NOW,
                             "agent")
    assert (started.pid, started.started_at) == (0, NOW)


@pytest.mark.parametrize("text", HOSTILE)
def test_a_results_detail_keeps_its_control_characters_only_as_escapes(text):
    result = m.Result(token=7, outcome="signal", exit_code=None, detail=text, started_at=None,
                      finished_at=NOW)
    detail = Intake().result(result, LEASE, NOW, "agent").detail
    assert detail.isprintable()
    assert detail == "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode()
                             for ch in text)


def test_a_results_printable_detail_is_kept_as_it_is():
    result = m.Result(token=7, outcome="spawn_error", exit_code=None, started_at=None,
                      detail="No such file or directory: /données/日本", finished_at=NOW)
    assert Intake().result(result, LEASE, NOW, "agent").detail == result.detail


def test_output_must_name_a_stream_and_a_sane_offset():
    chunk: dict[str, Any] = {"token": 1, "data": b"abc"}
    assert output_problem(m.Output(stream=m.STDOUT, offset=0, **chunk)) is None
    assert output_problem(m.Output(stream=3, offset=0, **chunk)) == "a bad stream"
    assert output_problem(m.Output(stream=m.STDERR, offset=-1, **chunk)) == "a bad offset"
    assert output_problem(m.Output(stream=m.STDERR, offset=MAX_OFFSET, **chunk)) == "a bad offset"


def test_a_store_poisoned_before_version_7_is_repaired_and_reads_again(tmp_path):
    """Absurd values a broker once stored made every read of their job fail."""
    path = str(tmp_path / "queue.db")
    old = apsw.Connection(path)
    with old:
        for number in range(6):
            old.execute(MIGRATIONS[number])
        old.pragma("user_version", 6)
        old.execute("INSERT INTO jobs (id, command, queue, priority, state, run_at, timeout_sec,"
                    " max_retries, attempts, created_at, updated_at, started_at, finished_at,"
                    " exit_code) VALUES ('poisoned', 'true', 'default', 0, 'completed', 1, 60, 3,"
                    " 1, ?, ?, ?, ?, ?)", (NOW, NOW + 1, -1e300, 9e999, 2**40))
        seq = old.last_insert_rowid()
        old.execute("INSERT INTO attempts (job_seq, number, agent, dispatched_at, started_at,"
                    " finished_at, pid, exit_code) VALUES (?, 1, 'a', ?, ?, ?, ?, ?)",
                    (seq, NOW, 1e300, -9e999, 2**40, -2**40))
        old.execute("UPDATE totals SET value = 9e999 WHERE name = 'completed_seconds'")
        old.execute("UPDATE totals SET value = 1 WHERE name = 'completed_n'")
    old.close()
    store = Store(path)
    try:
        job = store.job("poisoned")
        assert job is not None
        assert (job.started_at, job.finished_at, job.exit_code) == (None, NOW + 1, None)
        attempt = store.attempts(job.seq)[0]
        assert (attempt.started_at, attempt.finished_at, attempt.pid, attempt.exit_code) == \
            (None, NOW, None, None)
        assert store.completed_duration() == (1, 0.0)
        assert job_view(job)["finished_at"] and attempt_view(attempt)["finished_at"]
    finally:
        store.close()
