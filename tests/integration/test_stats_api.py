"""What a real broker tells the stats page: counters, durations and the
per-minute series (``Client.metrics``), and job search (``list --search``)."""

from __future__ import annotations

import pytest

from harness import cli_json, configure, run_cli, wait_until

pytestmark = pytest.mark.integration


def settled(qc, **counts: int):
    def check():
        current = qc.status()["counts"]
        return all(current[state] == n for state, n in counts.items())
    return check


def test_metrics_count_what_happened_and_the_chart_survives_a_restart(broker, start_agent):
    configure(broker, base_backoff=1)
    start_agent(count=2)
    with broker.client() as qc:
        qc.enqueue({"command": "sleep 0.3"})
        qc.enqueue_many([{"command": "true"}, {"command": "true"}])
        qc.enqueue({"command": "exit 3", "max_retries": 2})
        wait_until(settled(qc, completed=3, dead=1), 30, message="3 completed and 1 dead")
        metrics = qc.metrics()
    assert metrics["counters"] == {"enqueued": 4, "completed": 3, "failed": 2, "dead": 1,
                                   "canceled": 0}
    duration = metrics["duration"]
    assert duration["count"] == 5 and sum(duration["counts"]) == 5
    assert 0.3 <= duration["sum"] < 5  # the sleep alone is 0.3 s
    assert sum(metrics["per_minute"]["completed"]) == 3
    assert sum(metrics["per_minute"]["failed"]) == 2

    broker.stop()
    broker.start()
    with broker.client() as qc:
        after = qc.metrics()
    assert set(after["counters"].values()) == {0}  # counters are since the broker started
    assert after["started_at"] > metrics["started_at"]
    assert sum(after["per_minute"]["completed"]) == 3  # the chart comes from the store
    assert sum(after["per_minute"]["failed"]) == 2


def test_a_refused_enqueue_and_a_cancel_count_as_what_they_are(broker):
    with broker.client() as qc:
        qc.enqueue({"id": "taken", "command": "true", "delay": 60})
        assert run_cli(broker, "enqueue", '{"id": "taken", "command": "true"}').returncode == 1
        qc.cancel("taken")
        counters = qc.metrics()["counters"]
    assert (counters["enqueued"], counters["canceled"], counters["failed"]) == (1, 1, 0)


def test_list_search_finds_jobs_by_a_part_of_the_id_or_command(broker):
    with broker.client() as qc:
        qc.enqueue({"id": "nightly-backup", "command": "tar czf /tmp/x.tgz /etc", "delay": 60})
        qc.enqueue({"id": "report-1", "command": "python make_REPORT.py --50%", "delay": 60})
        qc.enqueue({"id": "other", "command": "true", "delay": 60})
    assert [j["id"] for j in cli_json(broker, "list", "--search", "BACKUP")] == ["nightly-backup"]
    assert [j["id"] for j in cli_json(broker, "list", "--search", "report.py")] == ["report-1"]
    assert [j["id"] for j in cli_json(broker, "list", "--search", "50%")] == ["report-1"]
    assert cli_json(broker, "list", "--search", "nothing-like-this") == []
    result = run_cli(broker, "list", "--search", "x" * 1001)
    assert result.returncode == 2 and "search" in result.stderr


def test_a_search_with_a_nul_character_is_refused_instead_of_matching_everything(broker):
    from queuectl.client import InvalidInput

    with broker.client() as qc:
        qc.enqueue({"id": "one", "command": "true", "delay": 60})
        with pytest.raises(InvalidInput, match="NUL"):
            qc.list(search="x\x00")


def test_logs_by_token_reads_that_attempt_of_that_job_only(broker, start_agent):
    from queuectl.client import NotFound

    configure(broker, base_backoff=1)
    start_agent(count=1)
    with broker.client() as qc:
        qc.enqueue({"id": "twice", "command": "echo at $(date +%s%N); exit 1", "max_retries": 2})
        qc.enqueue({"id": "other", "command": "echo other"})
        assert qc.wait("twice", timeout=30)["state"] == "dead"
        assert qc.wait("other", timeout=30)["state"] == "completed"
        first, second = (a["token"] for a in qc.get("twice")["attempts_log"])
        outputs = [qc.call("logs", id="twice", token=t) for t in (first, second)]
        assert [o["attempt"] for o in outputs] == [1, 2]
        texts = [b"".join(c[2] for c in o["chunks"]) for o in outputs]
        assert texts[0].startswith(b"at ") and texts[1].startswith(b"at ")
        assert texts[0] != texts[1] and all(o["done"] for o in outputs)
        other_token = qc.get("other")["attempts_log"][0]["token"]
        with pytest.raises(NotFound):
            qc.call("logs", id="twice", token=other_token)
