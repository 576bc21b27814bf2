"""The `queuectl` CLI as scripts and people use it, against real brokers and agents.

Covers the exit codes and one-line errors of every bad input, the exact
``--json`` documents of the contract, `cancel`, `worker stop` from another
terminal, and `queuectl up` started and stopped with Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from harness import (
    Broker,
    Processes,
    cli_json,
    free_port,
    get_job,
    kill_if_alive,
    pid_alive,
    program,
    run_cli,
    wait_done,
    wait_state,
    wait_until,
)

pytestmark = pytest.mark.integration

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")
STATES = {"pending", "processing", "completed", "failed", "dead", "canceled"}
JOB_KEYS = {"id", "command", "state", "queue", "priority", "attempts", "max_retries",
            "timeout_sec", "run_at", "created_at", "updated_at", "started_at", "finished_at",
            "duration_sec", "exit_code", "last_error"}


# --- helpers -------------------------------------------------------------------

def enqueue(broker: Broker, spec: dict) -> str:
    result = run_cli(broker, "enqueue", json.dumps(spec))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().removeprefix("Enqueued job: ")


def assert_user_error(result, exit_code: int, *words: str) -> str:
    """Exit code as documented, nothing on stdout, one line on stderr naming ``words``."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), repr(result.stderr)
    assert lines[0].strip(), "the error line is empty"
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert result.stdout == "", repr(result.stdout)
    return lines[0]


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory):
    """One broker for the error cases, which change nothing (that is the point)."""
    workdir = tmp_path_factory.mktemp("cli-errors")
    owner = Processes(workdir)
    home = workdir / "home"
    home.mkdir()
    try:
        yield Broker(owner, home).start()
    finally:
        owner.cleanup()


# --- bad input: exit code and one line on stderr -------------------------------

TRUE = '"command": "true"'


def true_and(fields: str) -> str:
    """A job object: the command true, and the JSON members ``fields``."""
    return "{" + TRUE + ", " + fields + "}"


BAD_INPUT = [
    # (case, argv, exit code, words the message must contain)
    ("invalid-json", ["enqueue", "{command: true}"], 2, ["invalid JSON"]),
    ("not-an-object", ["enqueue", '["true"]'], 2, ["object"]),
    ("unknown-field", ["enqueue", true_and('"colour": "red"')], 2, ["colour"]),
    ("missing-command", ["enqueue", '{"id": "x1"}'], 2, ["command"]),
    ("empty-command", ["enqueue", '{"command": "  "}'], 2, ["command"]),
    ("command-not-string", ["enqueue", '{"command": 42}'], 2, ["command"]),
    ("priority-not-int", ["enqueue", true_and('"priority": "high"')], 2, ["priority"]),
    ("priority-bool", ["enqueue", true_and('"priority": true')], 2, ["priority"]),
    ("max-retries-zero", ["enqueue", true_and('"max_retries": 0')], 2, ["max_retries"]),
    ("max-retries-float", ["enqueue", true_and('"max_retries": 2.5')], 2, ["max_retries"]),
    ("timeout-negative", ["enqueue", true_and('"timeout_sec": -1')], 2, ["timeout_sec"]),
    ("env-not-strings", ["enqueue", true_and('"env": {"A": 1}')], 2, ["env"]),
    ("requires-not-object", ["enqueue", true_and('"requires": ["gpu"]')], 2, ["requires"]),
    ("bad-id", ["enqueue", true_and('"id": "has space"')], 2, ["id"]),
    ("state-not-pending", ["enqueue", true_and('"state": "completed"')], 2, ["state"]),
    ("attempts-not-zero", ["enqueue", true_and('"attempts": 2')], 2, ["attempts"]),
    ("bad-timestamp", ["enqueue", true_and('"run_at": "next tuesday"')], 2, ["run_at"]),
    ("timestamp-not-string", ["enqueue", true_and('"run_at": 1700000000')], 2, ["run_at"]),
    ("bad-delay", ["enqueue", true_and('"delay": "soon"')], 2, ["delay"]),
    ("negative-delay", ["enqueue", true_and('"delay": -5')], 2, ["delay"]),
    ("run_at-and-delay",
     ["enqueue", true_and('"run_at": "2030-01-01T00:00:00Z", "delay": "5s"')],
     2, ["run_at", "delay"]),
    ("lone-surrogate", ["enqueue", '{"command": "echo \\ud800"}'], 2, ["surrogate"]),
    ("no-job-given", ["enqueue"], 2, []),
    ("missing-file", ["enqueue", "--file", "/nonexistent/jobs.jsonl"], 2,
     ["/nonexistent/jobs.jsonl"]),
    ("list-bogus-state", ["list", "--state", "bogus"], 2, ["bogus"]),
    ("list-limit-zero", ["list", "--limit", "0"], 2, ["limit"]),
    ("config-set-unknown-key", ["config", "set", "colour", "red"], 2, ["colour"]),
    ("config-get-unknown-key", ["config", "get", "colour"], 2, ["colour"]),
    ("config-set-max-retries-0", ["config", "set", "max_retries", "0"], 2, ["max_retries"]),
    ("config-set-not-a-number", ["config", "set", "timeout_sec", "soon"], 2, ["timeout_sec"]),
    ("config-set-timeout-0", ["config", "set", "timeout-sec", "0"], 2, ["timeout_sec"]),
    ("unknown-command", ["frobnicate"], 2, ["frobnicate"]),
    ("show-unknown-id", ["show", "no-such-job"], 1, ["no-such-job"]),
    ("logs-unknown-id", ["logs", "no-such-job"], 1, ["no-such-job"]),
    ("cancel-unknown-id", ["cancel", "no-such-job"], 1, ["no-such-job"]),
    ("dlq-retry-unknown-id", ["dlq", "retry", "no-such-job"], 1, ["no-such-job"]),
    ("dlq-retry-nothing", ["dlq", "retry"], 2, []),
]


# Cases also run with --json: a script gets the same error and no document on stdout.
JSON_TOO = {"invalid-json", "unknown-field", "run_at-and-delay", "list-bogus-state",
            "config-set-unknown-key", "show-unknown-id", "cancel-unknown-id",
            "dlq-retry-unknown-id"}


@pytest.mark.parametrize("case,argv,exit_code,words", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_exit_code_and_one_line_error(shared_broker, case, argv, exit_code, words):
    assert_user_error(run_cli(shared_broker, *argv), exit_code, *words)
    if case in JSON_TOO:
        assert_user_error(run_cli(shared_broker, *argv, "--json"), exit_code, *words)


def test_bad_input_changed_nothing(shared_broker):
    """Runs after the error cases: no job was added and the config kept its defaults."""
    assert cli_json(shared_broker, "list") == []
    config = cli_json(shared_broker, "config", "show")
    keys = ("max_retries", "base_backoff", "max_backoff", "timeout_sec")
    assert {k: config[k] for k in keys} == \
        {"max_retries": 3, "base_backoff": 2, "max_backoff": 3600, "timeout_sec": 60}


def test_unreachable_broker_exits_3_quickly():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "QUEUECTL_BROKER": endpoint, "QUEUECTL_TIMEOUT": "1"}
    for argv in (["status"], ["list", "--json"], ["enqueue", '{"command": "true"}']):
        result = run_cli(None, *argv, env=env, timeout=10)
        line = assert_user_error(result, 3, endpoint)
        assert "no broker" in line.lower()
    # --broker, before or after the command, overrides QUEUECTL_BROKER
    other = f"tcp://127.0.0.1:{free_port()}"
    assert_user_error(run_cli(None, "--broker", other, "status", env=env, timeout=10), 3, other)
    assert_user_error(run_cli(None, "config", "show", "--broker", other, env=env, timeout=10),
                      3, other)


def test_file_with_one_bad_line_enqueues_nothing(broker, tmp_path):
    good = json.dumps({"id": "file-good", "command": "true"})
    cases = {
        "invalid-json": ([good, "{not json", json.dumps({"id": "after", "command": "true"})], 2,
                         "line 2"),
        "unknown-field": ([good, "", json.dumps({"command": "true", "colour": 1})], 2, "line 3"),
        "bad-timestamp": ([good, json.dumps({"command": "true", "run_at": "later"})], 2, "line 2"),
        "duplicate-in-file": ([good, json.dumps({"id": "file-good", "command": "false"})], 1,
                              "file-good"),
    }
    for name, (lines, code, where) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        assert_user_error(run_cli(broker, "enqueue", "--file", str(path)), code, where)
        # the same through stdin
        assert_user_error(run_cli(broker, "enqueue", "--file", "-", input=path.read_text()),
                          code, where)
    assert cli_json(broker, "list") == [], "a rejected file must enqueue none of its jobs"

    # a line whose id already exists in the queue: the whole file is refused
    assert enqueue(broker, {"id": "existing", "command": "true", "delay": "1h"}) == "existing"
    path = tmp_path / "clash.jsonl"
    path.write_text(json.dumps({"id": "new-one", "command": "true"}) + "\n"
                    + json.dumps({"id": "existing", "command": "true"}) + "\n")
    assert_user_error(run_cli(broker, "enqueue", "--file", str(path)), 1, "existing")
    assert [j["id"] for j in cli_json(broker, "list")] == ["existing"]
    assert_user_error(run_cli(broker, "show", "new-one"), 1, "new-one")


def test_duplicate_id_and_wrong_state_exit_1(broker, start_agent):
    assert enqueue(broker, {"id": "dup", "command": "true", "delay": "1h"}) == "dup"
    assert_user_error(run_cli(broker, "enqueue", '{"id": "dup", "command": "echo other"}'),
                      1, "dup")
    assert get_job(broker, "dup")["command"] == "true", "the duplicate must not replace the job"
    # dlq retry of a job that is not dead
    assert_user_error(run_cli(broker, "dlq", "retry", "dup"), 1, "dup")
    assert get_job(broker, "dup")["state"] == "pending"
    # cancel of a job that already completed, and of one already canceled
    start_agent(count=1)
    enqueue(broker, {"id": "done", "command": "true"})
    assert wait_done(broker, "done")["state"] == "completed"
    assert_user_error(run_cli(broker, "cancel", "done"), 1, "done", "completed")
    assert_user_error(run_cli(broker, "cancel", "done", "--json"), 1, "done")
    assert get_job(broker, "done")["state"] == "completed"
    assert run_cli(broker, "cancel", "dup").returncode == 0
    assert_user_error(run_cli(broker, "cancel", "dup"), 1, "dup", "canceled")


# --- --json documents ------------------------------------------------------------

def assert_job_document(job: dict) -> None:
    assert set(job) >= JOB_KEYS, JOB_KEYS - set(job)
    assert job["state"] in STATES
    for key in ("run_at", "created_at", "updated_at", "started_at", "finished_at"):
        assert job[key] is None or ISO_UTC.match(job[key]), (key, job[key])
    assert isinstance(job["priority"], int) and isinstance(job["attempts"], int)
    assert isinstance(job["max_retries"], int)


def test_json_documents_match_the_contract(broker, start_agent, tmp_path):
    # enqueue --json: exactly {"id", "state", "run_at"}
    doc = cli_json(broker, "enqueue", '{"id": "ok", "command": "echo hi"}')
    assert set(doc) == {"id", "state", "run_at"}
    assert doc["id"] == "ok" and doc["state"] == "pending" and ISO_UTC.match(doc["run_at"])
    generated = cli_json(broker, "enqueue", '{"command": "exit 4", "max_retries": 1}')
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", generated["id"])
    dead_id = generated["id"]
    # the job format users already write is accepted
    compat = {"id": "compat", "command": "true", "state": "pending", "attempts": 0,
              "max_retries": 3,
              "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
              "delay": "1h"}
    assert cli_json(broker, "enqueue", json.dumps(compat))["id"] == "compat"

    # enqueue --file --json: {"enqueued": N, "ids": [...]} in file order
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"id": "f1", "command": "true", "delay": "1h"}) + "\n\n"
                    + json.dumps({"command": "true", "delay": "1h"}) + "\n"
                    + json.dumps({"id": "f3", "command": "true", "delay": "1h"}) + "\n")
    doc = cli_json(broker, "enqueue", "--file", str(path))
    assert set(doc) == {"enqueued", "ids"} and doc["enqueued"] == 3
    assert doc["ids"][0] == "f1" and doc["ids"][2] == "f3" and doc["ids"][1] not in ("f1", "f3")
    human = run_cli(broker, "enqueue", "--file", "-",
                    input=json.dumps({"id": "f4", "command": "true", "delay": "1h"}) + "\n")
    assert human.returncode == 0 and human.stdout == "Enqueued 1 jobs\n"

    start_agent(count=2)
    assert wait_done(broker, "ok")["state"] == "completed"
    assert wait_done(broker, dead_id)["state"] == "dead"

    # status --json: the contract's document
    status = cli_json(broker, "status")
    assert set(status) == {"counts", "dlq", "avg_duration_sec", "agents", "slots"}
    assert set(status["counts"]) == STATES
    assert status["counts"] == {"pending": 5, "processing": 0, "completed": 1, "failed": 0,
                                "dead": 1, "canceled": 0}
    assert status["dlq"] == 1
    assert isinstance(status["avg_duration_sec"], (int, float)) and status["avg_duration_sec"] >= 0
    assert status["agents"] == 1 and status["slots"] == {"busy": 0, "total": 2}

    # list --json: one JSON array and nothing else, newest first
    result = run_cli(broker, "list", "--json")
    assert result.returncode == 0 and result.stderr == ""
    items = json.loads(result.stdout)
    assert isinstance(items, list) and len(items) == 7
    assert [j["id"] for j in items][:3] == ["f4", "f3", doc["ids"][1]]
    assert [j["id"] for j in items][-2:] == [dead_id, "ok"]
    for item in items:
        assert_job_document(item)
    assert [j["id"] for j in cli_json(broker, "list", "--state", "dead")] == [dead_id]
    assert [j["id"] for j in cli_json(broker, "list", "--limit", "2")] == ["f4", "f3"]
    assert cli_json(broker, "list", "--queue", "nope") == []

    # show --json: a job plus its attempts
    shown = cli_json(broker, "show", "ok")
    assert_job_document(shown)
    assert shown["state"] == "completed" and shown["exit_code"] == 0 and shown["last_error"] is None
    assert shown["queue"] == "default" and shown["priority"] == 100 and shown["attempts"] == 1
    assert isinstance(shown["attempts_log"], list) and len(shown["attempts_log"]) == 1
    assert shown["attempts_log"][0]["exit_code"] == 0
    pending = cli_json(broker, "show", "f1")
    assert pending["attempts_log"] == [] and pending["started_at"] is None
    assert pending["finished_at"] is None and pending["duration_sec"] is None

    # cancel --json: exactly {"id", "state": "canceled"}
    assert cli_json(broker, "cancel", "f1") == {"id": "f1", "state": "canceled"}

    # dlq list --json
    dlq = cli_json(broker, "dlq", "list")
    assert isinstance(dlq, list) and len(dlq) == 1
    assert {"id", "command", "reason", "attempts", "dead_at"} <= set(dlq[0])
    assert dlq[0]["id"] == dead_id and dlq[0]["command"] == "exit 4"
    assert dlq[0]["reason"] == "exit code 4" and dlq[0]["attempts"] == 1
    assert ISO_UTC.match(dlq[0]["dead_at"])

    # dlq retry --json: {"retried": [ids]}, and the job runs (and dies) again
    assert cli_json(broker, "dlq", "retry", dead_id) == {"retried": [dead_id]}
    again = wait_done(broker, dead_id)
    assert again["state"] == "dead" and again["attempts"] == 1
    assert len(cli_json(broker, "show", dead_id)["attempts_log"]) == 2
    assert cli_json(broker, "dlq", "retry", "--all") == {"retried": [dead_id]}
    wait_done(broker, dead_id)

    # config --json
    config = cli_json(broker, "config", "show")
    defaults = {"max_retries": 3, "base_backoff": 2, "max_backoff": 3600, "timeout_sec": 60}
    assert defaults.items() <= config.items()
    assert cli_json(broker, "config", "get", "max-retries") == {"max_retries": 3}
    assert cli_json(broker, "config", "set", "max_backoff", "120") == {"max_backoff": 120}
    assert cli_json(broker, "config", "show")["max_backoff"] == 120

    # agents --json
    agents = cli_json(broker, "agents")
    assert isinstance(agents, list) and len(agents) == 1
    agent = agents[0]
    assert {"id", "host", "labels", "slots", "last_heartbeat"} <= set(agent)
    assert agent["slots"] == {"busy": 0, "total": 2} and agent["labels"] == {}
    assert isinstance(agent["id"], str) and agent["id"] and isinstance(agent["host"], str)
    assert ISO_UTC.match(agent["last_heartbeat"])


# --- cancel --------------------------------------------------------------------

def test_cancel_kills_a_running_job_and_cancels_a_pending_one(broker, start_agent, tmp_path):
    start_agent(count=2)
    pidfile = tmp_path / "sleep.pid"
    enqueue(broker, {"id": "sleeper", "command": f"sleep 30 & echo $! > {pidfile}; wait"})
    shell_pid = sleep_pid = None
    try:
        job = wait_state(broker, "sleeper", "processing")
        sleep_pid = wait_until(lambda: pidfile.exists() and int(pidfile.read_text() or 0), 10,
                               message="the job to record its pid")
        shell_pid = wait_until(lambda: get_job(broker, "sleeper")["attempts_log"][-1]["pid"], 5,
                               message="the attempt's pid")
        assert pid_alive(sleep_pid) and pid_alive(shell_pid)
        assert job["state"] == "processing"

        result = run_cli(broker, "cancel", "sleeper")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "Canceled job: sleeper\n"
        # cancel returns once the job has stopped: its processes are already gone
        wait_until(lambda: not pid_alive(sleep_pid) and not pid_alive(shell_pid), 3,
                   message="the canceled job's processes to exit")
        job = get_job(broker, "sleeper")
        assert job["state"] == "canceled"
        assert job["attempts_log"][-1]["reason"] == "canceled"
        assert cli_json(broker, "status")["slots"]["busy"] == 0
    finally:
        kill_if_alive(sleep_pid, shell_pid, group=True)

    enqueue(broker, {"id": "later", "command": "touch should-not-run", "delay": "1h"})
    assert cli_json(broker, "cancel", "later") == {"id": "later", "state": "canceled"}
    later = get_job(broker, "later")
    assert later["state"] == "canceled" and later["attempts"] == 0 and later["attempts_log"] == []


def test_cancel_kills_a_job_that_ignores_sigterm(broker, start_agent, tmp_path):
    assert run_cli(broker, "config", "set", "kill_grace_sec", "1").returncode == 0
    start_agent(count=1)
    pidfile = tmp_path / "stubborn.pid"
    enqueue(broker, {"id": "stubborn",
                     "command": f"trap '' TERM; sleep 30 & echo $! > {pidfile}; wait; wait"})
    child = shell = None
    try:
        wait_state(broker, "stubborn", "processing")
        child = wait_until(lambda: pidfile.exists() and int(pidfile.read_text() or 0), 10,
                           message="the job to record its pid")
        shell = wait_until(lambda: get_job(broker, "stubborn")["attempts_log"][-1]["pid"], 5,
                           message="the attempt's pid")
        result = run_cli(broker, "cancel", "stubborn")
        assert result.returncode == 0 and result.stdout == "Canceled job: stubborn\n", result.stderr
        wait_until(lambda: not pid_alive(child) and not pid_alive(shell), 5,
                   message="the job's processes, which ignore SIGTERM, to be killed")
        assert get_job(broker, "stubborn")["state"] == "canceled"
    finally:
        kill_if_alive(child, shell, group=True)


def test_cancel_running_job_with_json(broker, start_agent, tmp_path):
    start_agent(count=1)
    enqueue(broker, {"id": "busy", "command": "sleep 30"})
    pid = None
    try:
        wait_state(broker, "busy", "processing")
        pid = wait_until(lambda: get_job(broker, "busy")["attempts_log"][-1]["pid"], 5,
                         message="the attempt's pid")
        assert cli_json(broker, "cancel", "busy") == {"id": "busy", "state": "canceled"}
        wait_until(lambda: not pid_alive(pid), 3, message="sleep 30 to be killed")
        # the slot is free again: the next job runs
        enqueue(broker, {"id": "next", "command": "true"})
        assert wait_done(broker, "next")["state"] == "completed"
    finally:
        kill_if_alive(pid, group=True)

    # a failed job waiting for its retry can be canceled too
    enqueue(broker, {"id": "flaky", "command": "exit 1", "max_retries": 3})
    wait_state(broker, "flaky", "failed")
    assert cli_json(broker, "cancel", "flaky") == {"id": "flaky", "state": "canceled"}
    flaky = get_job(broker, "flaky")
    assert flaky["state"] == "canceled" and flaky["attempts"] == 1


# --- worker start / worker stop --------------------------------------------------

def test_worker_stop_lets_the_running_job_finish(broker, procs):
    worker = procs.start(program("queuectl") + ["worker", "start", "--count", "1"], "worker.log",
                         env=broker.env())

    def connected():
        return next((a for a in cli_json(broker, "agents") if a["pid"] == worker.pid), None)

    agent = wait_until(connected, 15, message="the worker to connect")
    enqueue(broker, {"id": "slow", "command": "sleep 2; echo done"})
    wait_state(broker, "slow", "processing")

    result = run_cli(broker, "worker", "stop", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"stopped": [agent["id"]]}
    # it returned only after the agent had finished the job and left
    job = get_job(broker, "slow")
    assert job["state"] == "completed" and job["exit_code"] == 0
    assert run_cli(broker, "logs", "slow").stdout == "done\n"
    assert cli_json(broker, "agents") == []
    assert worker.wait(5) == 0, Path(worker.log_path).read_text()

    # nothing left to stop
    assert cli_json(broker, "worker", "stop") == {"stopped": []}
    again = run_cli(broker, "worker", "stop")
    assert again.returncode == 0 and again.stdout == "No agents were running\n"


def test_worker_start_finishes_the_running_job_on_ctrl_c(broker, procs):
    worker = procs.start(program("queuectl") + ["worker", "start", "--count", "2"], "worker.log",
                         env=broker.env())
    wait_until(lambda: any(a["pid"] == worker.pid for a in cli_json(broker, "agents")), 15,
               message="the worker to connect")
    enqueue(broker, {"id": "finishing", "command": "sleep 1; echo finished"})
    wait_state(broker, "finishing", "processing")
    worker.send_signal(signal.SIGINT)
    assert worker.wait(15) == 0, Path(worker.log_path).read_text()
    job = get_job(broker, "finishing")
    assert job["state"] == "completed", job
    assert run_cli(broker, "logs", "finishing").stdout == "finished\n"
    # a job enqueued after the stop waits for the next agent
    enqueue(broker, {"id": "afterwards", "command": "true"})
    assert get_job(broker, "afterwards")["state"] == "pending"


def test_worker_start_exits_non_zero_when_the_broker_refuses_it(procs):
    """An agent that cannot work (another protocol version) must not exit 0."""
    import msgpack
    import zmq

    router: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        worker = procs.start(program("queuectl") + ["worker", "start", "--broker",
                                                    f"tcp://127.0.0.1:{port}"], "worker.log")
        assert router.poll(15000), "the worker never said hello"
        ident, _hello = router.recv_multipart()
        refusal = msgpack.packb([9, "error", {"code": "version",
                                              "message": "broker: peer speaks protocol version 9"}])
        router.send_multipart([ident, refusal])
        assert worker.wait(15) == 1, Path(worker.log_path).read_text()
        assert "version 9" in Path(worker.log_path).read_text()
    finally:
        router.close(linger=0)


def test_ctrl_c_interrupts_logs_follow_with_exit_130(broker, start_agent, procs):
    start_agent(count=1)
    enqueue(broker, {"id": "endless", "command": "echo started; sleep 30"})
    wait_state(broker, "endless", "processing")
    pid = wait_until(lambda: get_job(broker, "endless")["attempts_log"][-1]["pid"], 5,
                     message="the attempt's pid")
    try:
        follower = procs.start(program("queuectl") + ["logs", "endless", "--follow"],
                               "follow.log", env=broker.env())
        output = Path(follower.log_path)
        wait_until(lambda: output.read_text().startswith("started\n"), 10,
                   message="the follower to print the first line")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 130, output.read_text()
        assert "Traceback" not in output.read_text()
        assert get_job(broker, "endless")["state"] == "processing", \
            "Ctrl-C of logs must not stop the job"
    finally:
        kill_if_alive(pid, group=True)


# --- queuectl up -------------------------------------------------------------------

def test_up_runs_broker_and_agents_until_ctrl_c(procs, tmp_path):
    home = tmp_path / "up-home"
    home.mkdir()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    db = tmp_path / "up.db"
    env = {**os.environ, "QUEUECTL_HOME": str(home), "QUEUECTL_BROKER": endpoint}
    # No --agents: the default (one slot per CPU) is what the README runs.
    up = procs.start(program("queuectl") + ["up", "--bind", endpoint,
                                            "--db", str(db), "--no-http"], "up.log", env=env)
    from queuectl.client import BrokerUnreachable, Client

    def ping():
        assert up.poll() is None, Path(up.log_path).read_text()
        try:
            with Client(endpoint, timeout=0.3) as qc:
                return qc.ping()
        except BrokerUnreachable:
            return None

    broker_pid = agent_pid = None
    try:
        broker_pid = wait_until(ping, 20, message="`queuectl up` to answer")["pid"]

        def agent_ready():
            result = run_cli(None, "agents", "--json", env=env)
            agents = json.loads(result.stdout) if result.returncode == 0 else []
            return agents if sum(a["slots"]["total"] for a in agents) == slots else None

        slots = os.cpu_count() or 1
        agents = wait_until(agent_ready, 20, message=f"{slots} agent slots")
        agent_pid = agents[0]["pid"]
        assert pid_alive(broker_pid) and pid_alive(agent_pid)
        assert db.exists()

        result = run_cli(None, "enqueue", '{"id": "hello", "command": "echo hello"}', env=env)
        assert result.returncode == 0 and result.stdout == "Enqueued job: hello\n", result.stderr
        with Client(endpoint) as qc:
            assert qc.wait("hello", timeout=15)["state"] == "completed"
        assert run_cli(None, "logs", "hello", env=env).stdout == "hello\n"

        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0, Path(up.log_path).read_text()
        wait_until(lambda: not pid_alive(broker_pid) and not pid_alive(agent_pid), 5,
                   message="the broker and agent of `up` to exit")
        with pytest.raises(BrokerUnreachable), Client(endpoint, timeout=0.5) as qc:
            qc.ping()
        assert "Traceback" not in Path(up.log_path).read_text()
    finally:
        kill_if_alive(broker_pid, agent_pid, group=True)
