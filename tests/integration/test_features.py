"""What jobs do once enqueued: order, schedule, config, output, and a robust wire.

Each test runs a real broker (and real agents where jobs must run) and checks
what a user would see through `queuectl`.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import msgpack
import pytest
import zmq

from harness import Broker, cli_json, get_job, program, run_cli, wait_done, wait_state, wait_until

pytestmark = pytest.mark.integration


# --- helpers -------------------------------------------------------------------

def enqueue(broker: Broker, spec: dict, env: dict | None = None) -> dict:
    result = run_cli(broker, "enqueue", json.dumps(spec), "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def config_set(broker: Broker, key: str, value: str) -> str:
    result = run_cli(broker, "config", "set", key, value)
    assert result.returncode == 0, result.stderr
    return result.stdout


def epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def iso_ms(moment: float) -> str:
    when = dt.datetime.fromtimestamp(moment, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def logs_bytes(broker: Broker, job_id: str) -> subprocess.CompletedProcess:
    """`queuectl logs ID` with stdout and stderr as raw bytes."""
    return subprocess.run(program("queuectl") + ["logs", job_id], capture_output=True,
                          timeout=30, env=broker.env())


# --- priority and FIFO -----------------------------------------------------------

def test_one_slot_runs_jobs_by_priority_then_fifo(broker, start_agent, tmp_path):
    order = tmp_path / "order.txt"
    record = f"echo $QUEUECTL_JOB_ID >> {order}"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(spec) + "\n" for spec in [
        {"id": "p100-a", "command": record, "priority": 100},
        {"id": "p5", "command": record, "priority": 5},
        {"id": "default-b", "command": record},  # priority 100 by default
        {"id": "p50-a", "command": record, "priority": 50},
        {"id": "negative", "command": record, "priority": -3},
        {"id": "p50-b", "command": record, "priority": 50},
        # the most urgent, but not due: it must not run at all
        {"id": "urgent-later", "command": record, "priority": -100, "delay": "1h"},
    ]))
    assert cli_json(broker, "enqueue", "--file", str(jobs))["enqueued"] == 7
    enqueue(broker, {"id": "p50-c", "command": record, "priority": 50})
    enqueue(broker, {"id": "default-c", "command": record})
    # FIFO means the oldest run_at first: enqueued last, but due an hour ago
    an_hour_ago = iso_ms(dt.datetime.now(dt.UTC).timestamp() - 3600)
    enqueue(broker, {"id": "backdated", "command": record, "run_at": an_hour_ago})

    start_agent(count=1)
    expected = ["negative", "p5", "p50-a", "p50-b", "p50-c", "backdated", "p100-a", "default-b",
                "default-c"]
    for job_id in expected:
        assert wait_done(broker, job_id)["state"] == "completed"
    assert order.read_text().split() == expected
    assert get_job(broker, "urgent-later")["state"] == "pending"


# --- run_at and delay --------------------------------------------------------------

def test_run_at_and_delay_are_respected(broker, start_agent):
    start_agent(count=3)
    before = dt.datetime.now(dt.UTC).timestamp()
    delayed = enqueue(broker, {"id": "delayed", "command": "true", "delay": "2s"})
    at_utc = iso_ms(before + 2.5)
    utc = enqueue(broker, {"id": "at-utc", "command": "true", "run_at": at_utc})
    # A timestamp without a zone is the local time of whoever wrote it: here a
    # user in UTC+05:30 (a POSIX TZ string, so no tz database is needed).
    india = dt.timezone(dt.timedelta(hours=5, minutes=30))
    local_moment = dt.datetime.fromtimestamp(round(before + 2.5), india)
    local_text = local_moment.replace(tzinfo=None).isoformat()
    assert "+" not in local_text and not local_text.endswith("Z")
    local = enqueue(broker, {"id": "at-local", "command": "true", "run_at": local_text},
                    env={**broker.env(), "TZ": "IST-05:30"})
    after = dt.datetime.now(dt.UTC).timestamp()

    assert delayed["state"] == "pending"
    assert before + 2 - 0.01 <= epoch(delayed["run_at"]) <= after + 2 + 0.01
    assert utc["run_at"] == at_utc
    assert local["run_at"] == iso_ms(local_moment.timestamp())

    for job_id in ("delayed", "at-utc", "at-local"):
        shown = cli_json(broker, "show", job_id)
        assert shown["state"] == "pending", shown
        assert shown["started_at"] is None and shown["attempts_log"] == []

    for job_id in ("delayed", "at-utc", "at-local"):
        job = wait_done(broker, job_id, timeout=10)
        assert job["state"] == "completed"
        started, run_at = epoch(job["started_at"]), epoch(job["run_at"])
        assert started >= run_at, f"{job_id} started at {job['started_at']}, before {job['run_at']}"
        assert started - run_at < 3, f"{job_id} started {started - run_at:.2f}s late"


# --- config ---------------------------------------------------------------------------

def test_config_show_get_set_and_aliases(broker):
    config = cli_json(broker, "config", "show")
    assert {"max_retries": 3, "base_backoff": 2, "max_backoff": 3600, "timeout_sec": 60}.items() \
        <= config.items()
    for key in ("backoff-base", "backoff_base", "base_backoff", "base-backoff"):
        result = run_cli(broker, "config", "get", key)
        assert result.returncode == 0 and result.stdout == "2\n", (key, result)
    assert cli_json(broker, "config", "get", "backoff-base") == {"base_backoff": 2}

    assert config_set(broker, "backoff-base", "3") == "Configuration updated: base_backoff = 3\n"
    assert config_set(broker, "max-retries", "5") == "Configuration updated: max_retries = 5\n"
    assert run_cli(broker, "config", "get", "base_backoff").stdout == "3\n"
    assert cli_json(broker, "config", "show")["max_retries"] == 5
    shown = run_cli(broker, "config", "show")
    assert shown.returncode == 0
    assert "base_backoff" in shown.stdout and "max_retries" in shown.stdout

    # settings are kept by the broker across a restart
    assert broker.stop() == 0
    broker.start()
    config = cli_json(broker, "config", "show")
    assert config["base_backoff"] == 3 and config["max_retries"] == 5


def test_new_max_retries_and_timeout_apply_to_new_jobs(broker, start_agent):
    start_agent(count=2)
    enqueue(broker, {"id": "before", "command": "true", "delay": "1h"})
    config_set(broker, "max_retries", "2")
    config_set(broker, "base_backoff", "1")
    assert cli_json(broker, "config", "set", "timeout_sec", "1") == {"timeout_sec": 1}

    enqueue(broker, {"id": "flaky", "command": "exit 3"})
    enqueue(broker, {"id": "slow", "command": "sleep 10", "max_retries": 1})

    flaky = wait_done(broker, "flaky", timeout=15)
    assert flaky["state"] == "dead" and flaky["attempts"] == 2 and flaky["max_retries"] == 2
    log = cli_json(broker, "show", "flaky")["attempts_log"]
    assert [a["reason"] for a in log] == ["exit code 3", "exit code 3"]

    slow = wait_done(broker, "slow", timeout=15)
    assert slow["state"] == "dead" and slow["timeout_sec"] == 1
    assert slow["last_error"] == "timeout"
    assert slow["duration_sec"] < 5, "the job was not killed at its 1 s timeout"

    dlq = {d["id"]: d for d in cli_json(broker, "dlq", "list")}
    assert dlq["flaky"]["reason"] == "exit code 3" and dlq["flaky"]["attempts"] == 2
    assert dlq["slow"]["reason"] == "timeout"

    # a job enqueued before the change keeps the defaults it was given
    before = get_job(broker, "before")
    assert before["max_retries"] == 3 and before["timeout_sec"] == 60


def test_new_base_backoff_applies_to_retries_scheduled_after_it(broker, start_agent):
    start_agent(count=1)
    enqueue(broker, {"id": "retry", "command": "exit 1", "max_retries": 3})

    def failed_once():
        job = get_job(broker, "retry")
        return job if job["state"] == "failed" and job["attempts"] == 1 else None

    wait_until(failed_once, 10, message="the first attempt to fail")
    # the retry already scheduled keeps its 2 ** 1 = 2 s; the next one uses 1.2 ** 2
    config_set(broker, "base_backoff", "1.2")
    job = wait_done(broker, "retry", timeout=15)
    assert job["state"] == "dead" and job["attempts"] == 3
    log = cli_json(broker, "show", "retry")["attempts_log"]
    first_gap = epoch(log[1]["started_at"]) - epoch(log[0]["finished_at"])
    second_gap = epoch(log[2]["started_at"]) - epoch(log[1]["finished_at"])
    assert 1.95 <= first_gap < 3, first_gap
    assert 1.40 <= second_gap < 2.5, \
        f"{second_gap:.2f}s: the new base_backoff (1.44 s) was not used"


# --- output -----------------------------------------------------------------------------

def test_logs_follow_streams_a_running_job_until_it_ends(broker, start_agent, procs):
    start_agent(count=1)
    enqueue(broker, {"id": "talker",
                     "command": "echo first; sleep 2; echo second; sleep 1; echo third"})
    wait_state(broker, "talker", "processing")
    follower = procs.start(program("queuectl") + ["logs", "talker", "--follow"], "follow.log",
                           env=broker.env())
    seen = Path(follower.log_path)
    wait_until(lambda: seen.read_text().startswith("first\n"), 5, message="the first line")
    assert get_job(broker, "talker")["state"] == "processing", "the line came only at the end"
    assert follower.poll() is None
    assert follower.wait(15) == 0, seen.read_text()
    assert seen.read_text() == "first\nsecond\nthird\n"
    assert get_job(broker, "talker")["state"] == "completed"


def test_logs_follow_waits_for_a_job_that_has_not_started(broker, start_agent, procs):
    start_agent(count=1)
    enqueue(broker, {"id": "soon", "command": "echo one; sleep 0.5; echo two", "delay": "1s"})
    follower = procs.start(program("queuectl") + ["logs", "soon", "-f"], "follow.log",
                           env=broker.env())
    assert follower.wait(15) == 0
    assert Path(follower.log_path).read_text() == "one\ntwo\n"


def test_binary_output_survives_logs_byte_exact(broker, start_agent):
    start_agent(count=1)
    enqueue(broker, {"id": "binary", "command": r"printf '\377\376\000x'; printf '\200\000e' >&2"})
    assert wait_done(broker, "binary")["state"] == "completed"
    result = logs_bytes(broker, "binary")
    assert result.returncode == 0
    assert result.stdout == b"\xff\xfe\x00x"
    assert result.stderr == b"\x80\x00e"


def test_output_beyond_the_limit_keeps_the_last_bytes(broker, start_agent):
    start_agent(count=1)  # already connected: the new limit reaches it too
    assert config_set(broker, "output_limit", "4096") == \
        "Configuration updated: output_limit = 4096\n"
    enqueue(broker, {"id": "chatty", "command": "seq 1 3000; echo tail >&2"})
    assert wait_done(broker, "chatty")["state"] == "completed"
    produced = "".join(f"{n}\n" for n in range(1, 3001)).encode()
    dropped = len(produced) - 4096
    result = logs_bytes(broker, "chatty")
    assert result.returncode == 0
    marker = f"[queuectl: {dropped} bytes of stdout were not kept]\n".encode()
    assert result.stdout == marker + produced[-4096:]
    assert result.stderr == b"tail\n"


# --- the wire ------------------------------------------------------------------------------

def test_broker_survives_malformed_frames_and_names_the_wrong_version(broker):
    from queuectl.proto import VERSION, decode, encode
    from queuectl.proto import messages as m

    ping = encode(m.Request(req_id=1, op="ping", args={}))
    with broker.client() as qc:
        pid = qc.ping()["pid"]
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(broker.endpoint)

    def reply():
        assert sock.poll(5000), "the broker did not answer"
        return decode(sock.recv())

    try:
        for garbage in (b"\xc1 garbage \xff\x00", ping[: len(ping) // 2], b"",
                        msgpack.packb({"not": "an envelope"}),
                        msgpack.packb([VERSION, "nonsense", {}]),
                        msgpack.packb([VERSION, "request",
                                       {"req_id": "x", "op": "ping", "args": {}}])):
            sock.send(garbage)
            error = reply()
            assert isinstance(error, m.Error) and error.code == "protocol", (garbage, error)

        # a multi-frame message is dropped; the next request is answered normally
        sock.send_multipart([ping, ping])
        sock.send(ping)
        answer = reply()
        assert isinstance(answer, m.Reply) and answer.ok and answer.result["pid"] == pid

        # another protocol version: an error naming both versions
        sock.send(msgpack.packb([99, "request", {"req_id": 2, "op": "ping", "args": {}}]))
        error = reply()
        assert isinstance(error, m.Error) and error.code == "version"
        assert "99" in error.message and str(VERSION) in error.message

        # well-formed requests with bad arguments get an error reply, not a crash
        sock.send(encode(m.Request(req_id=3, op="get", args={"id": 5})))
        bad = reply()
        assert isinstance(bad, m.Reply) and not bad.ok and bad.error_code == "invalid"
        sock.send(encode(m.Request(req_id=4, op="no_such_op", args={})))
        bad = reply()
        assert isinstance(bad, m.Reply) and not bad.ok and "no_such_op" in (bad.error or "")
        # an agent message from a peer that never said hello
        sock.send(encode(m.Heartbeat()))
        sock.send(ping)
        answers = [reply(), reply()]
        assert any(isinstance(a, m.Reply) and a.ok for a in answers), answers
    finally:
        sock.close(linger=0)

    assert broker.proc.poll() is None
    status = run_cli(broker, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["counts"]["pending"] == 0
    with broker.client() as qc:
        assert qc.ping()["pid"] == pid, "the broker restarted"
    assert "Traceback" not in broker.log()
