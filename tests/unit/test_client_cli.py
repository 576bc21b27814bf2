"""The client and CLI edges that need no broker: absent brokers, bad settings.

Behaviour against real brokers (slow, restarting, stopping) is in
tests/integration/test_client_resilience.py.
"""

from __future__ import annotations

import time

import pytest

from harness import free_port
from queuectl.cli.main import main
from queuectl.client import BrokerUnreachable, Client


def absent_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def test_a_big_batch_to_no_broker_still_fails_within_the_timeout():
    """A big batch earns extra time only after a ping shows a broker is there."""
    jobs = [{"command": "true"} for _ in range(100_000)]  # 10 s of allowance
    with Client(absent_endpoint(), timeout=0.5) as qc:
        started = time.monotonic()
        with pytest.raises(BrokerUnreachable, match="no broker answered"):
            qc.enqueue_many(jobs)
        assert time.monotonic() - started < 3  # validating the jobs + 0.5 s, not 10 s


def test_requests_the_broker_may_hold_fail_within_the_timeout_when_no_broker_is_there():
    """The contract: exit 3 within a few seconds when nothing answers, even for
    requests a broker would park (wait, logs --follow, cancel, worker stop)."""
    for request in (lambda qc: qc.wait("j"), lambda qc: qc.wait("j", timeout=60),
                    lambda qc: list(qc.logs("j", follow=True)), lambda qc: qc.cancel("j"),
                    lambda qc: qc.stop_agents()):
        with Client(absent_endpoint(), timeout=0.5) as qc:
            started = time.monotonic()
            with pytest.raises(BrokerUnreachable, match="no broker answered"):
                request(qc)
            assert time.monotonic() - started < 2


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", "5s"])
def test_a_bad_queuectl_timeout_is_invalid_input(monkeypatch, capsys, value):
    monkeypatch.setenv("QUEUECTL_TIMEOUT", value)
    monkeypatch.setenv("QUEUECTL_BROKER", absent_endpoint())
    assert main(["status"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err
    assert "QUEUECTL_TIMEOUT" in captured.err and repr(value) in captured.err


def test_queuectl_timeout_sets_how_long_a_client_waits(monkeypatch, capsys):
    monkeypatch.setenv("QUEUECTL_TIMEOUT", "0.25")
    monkeypatch.setenv("QUEUECTL_BROKER", absent_endpoint())
    started = time.monotonic()
    assert main(["status"]) == 3
    assert time.monotonic() - started < 2
    assert "within 0.25s" in capsys.readouterr().err
    monkeypatch.setenv("QUEUECTL_TIMEOUT", "")
    assert Client(absent_endpoint()).timeout == 5.0


@pytest.mark.parametrize("argv, words", [
    (["up", "--http", "nonsense"], ["--http", "HOST:PORT", "nonsense"]),
    (["up", "--http", "127.0.0.1:99999"], ["--http", "HOST:PORT"]),
    (["up", "--http", ":8080"], ["--http", "HOST:PORT"]),
    (["up", "--http", "127.0.0.1:8080", "--no-http"], ["--http", "--no-http", "not both"]),
])
def test_up_rejects_a_bad_http_option_before_starting_anything(capsys, argv, words):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    for word in words:
        assert word in captured.err
