"""A retried job's page shows the output of each attempt, not only the last one:
the attempt numbers in its attempts table link to what that attempt printed."""

from __future__ import annotations

import pytest

from dashboard.dashboard_html import parse

pytestmark = pytest.mark.integration

# Each run prints its own number, so every attempt's output differs.
COUNTING = ('n=$(cat {f} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {f}; '
            'echo "run $n out"; echo "run $n failed" >&2; exit 1')


def test_each_attempt_of_a_retried_job_shows_its_own_output(quick, start_agent, client,
                                                              tmp_path):
    start_agent(count=1)
    with quick.client() as qc:
        qc.enqueue({"id": "flaky", "command": COUNTING.format(f=tmp_path / "n"),
                    "max_retries": 3})
        assert qc.wait("flaky", timeout=30)["state"] == "dead"
        tokens = [a["token"] for a in qc.get("flaky")["attempts_log"]]
    assert len(tokens) == 3

    page = parse(client.get("/jobs/flaky").get_data(as_text=True))
    assert page.testid("stdout").text() == "run 3 out\n"  # the latest, by default
    links = [row.first("a").attr("href") for row in page.testid("attempts").find_all("tr")
             if row.attrs.get("data-attempt")]
    assert links == [f"/jobs/flaky?token={token}#output" for token in tokens]

    first = client.get(f"/jobs/flaky?token={tokens[0]}")
    assert first.status_code == 200
    first_page = parse(first.get_data(as_text=True))
    assert first_page.testid("stdout").text() == "run 1 out\n"
    assert first_page.testid("stderr").text() == "run 1 failed\n"
    assert "attempt 1" in first_page.testid("output-attempt").text()
    assert first_page.find(data_testid="output-latest") is not None  # a way back to the latest

    # The token of the latest attempt is the ordinary live view.
    latest = parse(client.get(f"/jobs/flaky?token={tokens[-1]}").get_data(as_text=True))
    assert latest.testid("stdout").text() == "run 3 out\n"
    assert latest.find(data_testid="output-latest") is None


def test_a_token_of_another_job_or_garbage_is_a_clear_error(quick, client):
    with quick.client() as qc:
        qc.enqueue({"id": "mine", "command": "true", "delay": 3600})
    for query, status in (("token=999999", 404), ("token=abc", 400), ("token=-1", 400)):
        reply = client.get(f"/jobs/mine?{query}")
        assert reply.status_code == status, (query, reply.status_code)
        assert "Traceback" not in reply.get_data(as_text=True)
