"""A job goes from enqueue to completed, and its output is what `logs` shows."""

from __future__ import annotations

import pytest

from harness import cli_json, run_cli

pytestmark = pytest.mark.integration


def test_job_completes_and_logs_show_its_output(broker, start_agent):
    start_agent(count=2)
    result = run_cli(broker, "enqueue",
                     '{"id":"hello","command":"echo hello from $QUEUECTL_JOB_ID; echo oops >&2"}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Enqueued job: hello"

    with broker.client() as qc:
        job = qc.wait("hello", timeout=15)
    assert job["state"] == "completed"
    assert job["exit_code"] == 0
    assert job["attempts"] == 1
    assert job["duration_sec"] is not None and job["duration_sec"] >= 0

    logs = run_cli(broker, "logs", "hello")
    assert logs.returncode == 0
    assert logs.stdout == "hello from hello\n"
    assert logs.stderr == "oops\n"

    shown = cli_json(broker, "show", "hello")
    assert shown["state"] == "completed"
    assert [a["exit_code"] for a in shown["attempts_log"]] == [0]
