"""What reaches an admin's terminal: the real `queuectl` on a pseudo-terminal.

Job commands, environments, working directories and errors come from whoever
enqueued the job; agent ids, hosts and labels from whoever runs an agent. An
ESC or a C1 control in them must not become a terminal sequence (a window
title, an OSC 52 clipboard write, a screen clear): every human-readable output
shows them escaped (README, "Terminal safety"). ``logs`` keeps colours.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading

import pytest
import zmq

from harness import cli_json, program, run_in_terminal
from queuectl.proto import decode, encode
from queuectl.proto import messages as m

pytestmark = pytest.mark.integration

HOSTILE = "x\x1b]0;PWNED\x1b\\ clip\x1b]52;c;SGVsbG8=\x07 c1\u009b2J del\x7f nl\nend"
SHOWN = b"x\\x1b]0;PWNED\\x1b\\ clip\\x1b]52;c;SGVsbG8=\\x07 c1\\x9b2J del\\x7f nl\\nend"
SGR = re.compile(rb"\x1b\[[0-9;]*m")


def raw_controls(screen: bytes) -> set[str]:
    """Control characters that reached the terminal, besides colours (SGR) and line ends."""
    text = SGR.sub(b"", screen).replace(b"\r\n", b"").decode("utf-8")
    return {f"U+{ord(c):04X}" for c in text if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0}


def test_list_show_and_dlq_show_a_jobs_control_characters_escaped(broker, start_agent):
    start_agent(count=1)
    job = {"id": "evil", "command": f"echo {HOSTILE}", "max_retries": 1,
           "env": {"TITLE": HOSTILE}, "cwd": f"/nonexistent/{HOSTILE}"}
    with broker.client() as qc:
        qc.enqueue(job)
        dead = qc.wait("evil", timeout=15)
    # The agent's words (a spawn error naming the cwd) are stored with their
    # control characters escaped (broker/intake.py); the command and cwd as given.
    assert dead["state"] == "dead" and "\\x1b]0;PWNED" in dead["last_error"]
    for argv in (["list"], ["show", "evil"], ["dlq", "list"]):
        code, screen = run_in_terminal(broker, *argv)
        assert code == 0, screen
        assert raw_controls(screen) == set(), (argv, screen)
        assert SHOWN in screen, (argv, screen)  # the command, visibly
    code, screen = run_in_terminal(broker, "show", "evil")
    assert screen.count(b"x\\x1b]0;PWNED") >= 3  # command, last_error and cwd; attempt reason

    # --json on a terminal: one valid document with the very same values, escaped by JSON
    code, screen = run_in_terminal(broker, "show", "evil", "--json")
    assert code == 0 and raw_controls(screen) == set()
    assert json.loads(screen.decode()) == cli_json(broker, "show", "evil")


JOB_OUTPUT = ("printf 'red \\033[31mRED\\033[0m\\ttab\\n'; "
              "printf 'clip \\033]52;c;SGVsbG8=\\007 title \\033]0;PWNED\\033\\\\ "
              "c1 \\302\\233 clear \\033[2J bad \\377\\n'; "
              "printf 'err \\033]0;ERR\\007\\n' >&2")
PRINTED = (b"red \x1b[31mRED\x1b[0m\ttab\n"
           b"clip \x1b]52;c;SGVsbG8=\x07 title \x1b]0;PWNED\x1b\\ c1 \xc2\x9b clear \x1b[2J"
           b" bad \xff\n")


def test_logs_on_a_terminal_keep_colours_and_escape_other_sequences(broker, start_agent):
    start_agent(count=1)
    with broker.client() as qc:
        qc.enqueue({"id": "colours", "command": JOB_OUTPUT})
        assert qc.wait("colours", timeout=15)["state"] == "completed"

    code, screen = run_in_terminal(broker, "logs", "colours")
    assert code == 0
    assert b"red \x1b[31mRED\x1b[0m\ttab\r\n" in screen  # colours and tabs pass
    assert (b"clip \\x1b]52;c;SGVsbG8=\\x07 title \\x1b]0;PWNED\\x1b\\ c1 \\x9b "
            b"clear \\x1b[2J bad \\xff\r\n") in screen
    assert b"err \\x1b]0;ERR\\x07\r\n" in screen  # stderr too
    assert raw_controls(screen.replace(b"\t", b"")) == set(), screen

    # --raw: the bytes as the job wrote them, even on a terminal
    code, screen = run_in_terminal(broker, "logs", "colours", "--raw")
    assert code == 0 and PRINTED.replace(b"\n", b"\r\n") in screen

    # a pipe or a file gets the bytes unchanged, as before
    piped = subprocess.run(program("queuectl") + ["logs", "colours"], capture_output=True,
                           env=broker.env(), timeout=60, check=False)
    assert piped.returncode == 0
    assert (piped.stdout, piped.stderr) == (PRINTED, b"err \x1b]0;ERR\x07\n")


# --- text a broker sends: agents, config, queues, ids (a broker of another version, or
# --- one that is not what it seems, may send anything)

class ScriptedBroker:
    """A stand-in broker on a free loopback port: answers each admin request with
    ``answers[op]`` (a result, or an ``m.Reply`` to send as it is)."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            if not self.sock.poll(50):
                continue
            peer, frame = self.sock.recv_multipart()
            request = decode(frame)
            answer = self.answers.get(request.op, {})
            if isinstance(answer, m.Reply):
                answer = m.Reply(req_id=request.req_id, ok=False, error_code=answer.error_code,
                                 error=answer.error)
            else:
                answer = m.Reply(req_id=request.req_id, ok=True, result=answer)
            self.sock.send_multipart([peer, encode(answer)])

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        self.ctx.term()


AGENT = {"id": HOSTILE, "host": HOSTILE, "pid": 1, "labels": {HOSTILE: HOSTILE},
         "slots": {"busy": 1, "total": 2}, "last_heartbeat": "2030-01-01T00:00:00.000Z",
         "connected_at": "2030-01-01T00:00:00.000Z", "state": "active", "running": [HOSTILE],
         "queued": []}
JOB = {"id": HOSTILE, "command": HOSTILE, "state": "dead", "queue": HOSTILE, "priority": 1,
       "attempts": 1, "max_retries": 1, "duration_sec": None, "updated_at": None}
ANSWERS = {
    "agents": [AGENT],
    "stop_agents": {"stopping": [HOSTILE]},
    "wait_agents": {"remaining": []},
    "config_show": {HOSTILE: HOSTILE},
    "config_get": {"max_retries": HOSTILE},
    "config_set": {"max_retries": HOSTILE},
    "queue_list": [{"name": HOSTILE, "paused": True, "limit": None, "pending": 1,
                    "processing": 0}],
    "list": [JOB],
    "dlq_list": [{"id": HOSTILE, "command": HOSTILE, "reason": HOSTILE, "attempts": 1,
                  "dead_at": None}],
    "dlq_retry": {"retried": [HOSTILE]},
    "status": {"counts": {HOSTILE: 1}, "dlq": 0, "avg_duration_sec": 0.0, "agents": 1,
               "slots": {"busy": 0, "total": 1}},
    "enqueue": {"id": HOSTILE, "state": "pending", "run_at": None},
    "get": m.Reply(req_id=0, ok=False, error_code="not_found", error=f"no job {HOSTILE}"),
}


@pytest.fixture(scope="module")
def scripted_broker():
    stand_in = ScriptedBroker(ANSWERS)
    try:
        yield stand_in
    finally:
        stand_in.close()


@pytest.mark.parametrize("argv", [
    ["agents"], ["worker", "stop"], ["config", "show"], ["config", "get", "max_retries"],
    ["config", "set", "max_retries", "3"], ["queue", "list"], ["list"], ["dlq", "list"],
    ["dlq", "retry", "--all"], ["status"], ["enqueue", '{"command": "true"}'], ["show", "x"],
], ids=" ".join)
def test_text_from_the_broker_reaches_the_terminal_escaped(scripted_broker, argv):
    env = {**os.environ, "QUEUECTL_BROKER": scripted_broker.endpoint, "QUEUECTL_TIMEOUT": "5"}
    code, screen = run_in_terminal(None, *argv, env=env)
    assert code == (1 if argv[0] == "show" else 0), screen
    assert raw_controls(screen) == set(), screen
    assert b"x\\x1b]0;PWNED\\x1b\\ clip\\x1b]52;c;SGVsbG8=\\x07" in screen, screen
