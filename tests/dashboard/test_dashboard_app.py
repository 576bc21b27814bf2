"""The stats page through Flask's test client, against a real broker and real agents.

Every route is exercised with what a user would notice: the numbers on the page
match the broker, actions change jobs (and are refused without a CSRF token),
a missing broker is reported as such and the page recovers when it returns.
"""

from __future__ import annotations

import os
import re
import shlex
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dashboard.dashboard_html import counter, csrf_token, job_rows, parse, settle
from harness import cli_json, state_of, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

def stop_agent(broker, agent) -> None:
    """Gracefully stop one agent (by its PID) and wait until the broker forgets it."""
    os.kill(agent.pid, signal.SIGTERM)
    agent.proc.wait(30)
    with broker.client() as qc:
        wait_until(lambda: all(a["pid"] != agent.pid for a in qc.agents()), 15,
                   message="the agent to leave")


def scrape(client) -> dict[str, dict[tuple, float]]:
    """/metrics as {sample name: {sorted labels: value}}, parsed by prometheus_client."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain" and "version=" in response.headers["Content-Type"]
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


# --- the overview -----------------------------------------------------------------

def test_overview_shows_the_brokers_counts_agents_jobs_and_dlq(quick, start_agent, client):
    broker = quick
    start_agent(count=2, labels={"zone": "eu-1"})
    with broker.client() as qc:
        qc.enqueue({"id": "ok-1", "command": "true"})
        qc.enqueue({"id": "ok-2", "command": "echo hi", "queue": "mail"})
        qc.enqueue({"id": "broken", "command": "exit 4", "max_retries": 1})
        qc.enqueue({"id": "later", "command": "true", "delay": "1h"})
        settle(broker, ["ok-1", "ok-2", "broken"])
        qc.enqueue({"id": "busy", "command": "sleep 60"})
        wait_until(lambda: qc.get("busy")["state"] == "processing", 15, message="busy to run")

    response = client.get("/")
    assert response.status_code == 200
    page = parse(response.get_data(as_text=True))
    assert "hidden" in page.testid("broker-banner").attrs
    expected = {"count-pending": 1, "count-processing": 1, "count-completed": 2,
                "count-failed": 0, "count-dead": 1, "count-canceled": 0, "count-dlq": 1,
                "count-agents": 1, "slots-busy": 1, "slots-total": 2}
    assert {name: counter(page, name) for name in expected} == expected
    assert page.testid("avg-duration").clean_text().endswith(("ms", "s"))
    assert page.testid("chart-throughput").tag == "svg"
    assert page.testid("chart-states").tag == "svg"
    # a bar per minute; their tooltips add up to what finished in the last hour
    titles = [t.text() for t in page.testid("chart-throughput").find_all("title")]
    found = [re.search(r"(\d+) completed, (\d+) failed", t) for t in titles]
    assert None not in found, titles
    per_bar = [tuple(map(int, match.groups())) for match in found if match is not None]
    assert len(per_bar) == 60 and tuple(map(sum, zip(*per_bar, strict=True))) == (2, 1)

    agents = page.testid("agents").find_all("tr", data_agent_id=True)
    assert len(agents) == 1
    row_text = agents[0].clean_text()
    assert "zone=eu-1" in row_text and "1 / 2" in row_text and "busy" in row_text

    rows = job_rows(page)
    assert set(rows) == {"ok-1", "ok-2", "broken", "later", "busy"}
    assert next(iter(rows)) == "busy"  # newest first
    for job_id, state in (("ok-1", "completed"), ("broken", "dead"), ("later", "pending"),
                          ("busy", "processing")):
        assert rows[job_id].one(data_testid="job-state").clean_text() == state
        assert rows[job_id].find("a", href=f"/jobs/{job_id}") is not None
    cancelable = {job_id for job_id, row in rows.items()
                  if row.find("button", data_action="cancel") is not None}
    assert cancelable == {"later", "busy"}

    dlq = job_rows(page, "dlq")
    assert list(dlq) == ["broken"]
    assert "exit code 4" in dlq["broken"].clean_text()
    assert dlq["broken"].find("button", data_action="retry") is not None
    assert "disabled" not in page.testid("dlq-retry-all").attrs
    with broker.client() as qc:
        qc.cancel("busy")


def test_overview_partial_has_every_live_region_and_applies_the_filters(broker, client):
    with broker.client() as qc:
        for job_id, queue, command in (("alpha-1", "default", "echo Build"),
                                       ("alpha-2", "mail", "echo send"),
                                       ("beta-1", "mail", "make BUILD")):
            qc.enqueue({"id": job_id, "command": command, "queue": queue, "delay": "1h"})
        qc.cancel("beta-1")

    def ids(query: str) -> set[str]:
        response = client.get("/partials/overview" + query)
        assert response.status_code == 200
        return set(job_rows(parse(response.get_data(as_text=True))))

    body = client.get("/partials/overview").get_data(as_text=True)
    regions = {node.attrs["data-region"] for node in parse(body).find_all(data_region=True)}
    assert regions == {"counters", "throughput", "states", "agents", "jobs", "dlq"}
    assert "<html" not in body  # a fragment, not a page

    assert ids("") == {"alpha-1", "alpha-2", "beta-1"}
    assert ids("?state=canceled") == {"beta-1"}
    assert ids("?state=pending&queue=mail") == {"alpha-2"}
    assert ids("?queue=mail") == {"alpha-2", "beta-1"}
    assert ids("?q=build") == {"alpha-1", "beta-1"}  # command, any case
    assert ids("?q=ALPHA") == {"alpha-1", "alpha-2"}  # id, any case
    assert ids("?q=nothing-like-this") == set()
    assert ids("?state=bogus") == {"alpha-1", "alpha-2", "beta-1"}  # ignored, not an error
    # the main page renders the same filters into its inputs, so a filtered view can be linked
    page = parse(client.get("/?state=pending&queue=mail&q=alp").get_data(as_text=True))
    assert set(job_rows(page)) == {"alpha-2"}
    assert page.testid("filter-queue").attrs["value"] == "mail"
    assert page.testid("filter-search").attrs["value"] == "alp"
    selected = [o for o in page.testid("filter-state").find_all("option")
                if "selected" in o.attrs]
    assert [o.attrs["value"] for o in selected] == ["pending"]


def test_jobs_table_shows_the_newest_25_and_more_on_request(broker, client):
    with broker.client() as qc:
        qc.enqueue_many([{"id": f"job-{n:02d}", "command": "true", "delay": "1h"}
                         for n in range(30)])
    page = parse(client.get("/").get_data(as_text=True))
    rows = list(job_rows(page))
    assert rows == [f"job-{n:02d}" for n in range(29, 4, -1)]  # newest first
    more = page.one("a", href="/?limit=100#jobs")
    assert more.clean_text() == "Show 100"
    assert len(job_rows(parse(client.get("/?limit=100").get_data(as_text=True)))) == 30
    assert len(job_rows(parse(client.get("/?limit=7").get_data(as_text=True)))) == 25
    partial = parse(client.get("/partials/overview?limit=100&q=job-1").get_data(as_text=True))
    assert set(job_rows(partial)) == {f"job-{n}" for n in range(10, 20)}


# --- a job's page, its JSON and its output -------------------------------------------

def test_job_page_shows_attempts_exit_codes_durations_and_output(quick, start_agent, client,
                                                                 tmp_path):
    start_agent(count=1)
    flag = shlex.quote(str(tmp_path / "flag"))
    command = (f"if [ -e {flag} ]; then echo second try; echo fine >&2; "
               f"else touch {flag}; echo first try; exit 5; fi")
    with quick.client() as qc:
        qc.enqueue({"id": "twice", "command": command, "max_retries": 3})
    assert settle(quick, ["twice"])["twice"]["state"] == "completed"

    response = client.get("/jobs/twice")
    assert response.status_code == 200
    page = parse(response.get_data(as_text=True))
    assert page.testid("job-state").clean_text() == "completed"
    attempts = page.testid("attempts").find_all("tr", data_attempt=True)
    assert [row.attrs["data-attempt"] for row in attempts] == ["1", "2"]
    cells = [[td.clean_text() for td in row.find_all("td")] for row in attempts]
    assert cells[0][5] == "5" and "exit code 5" in cells[0][6]
    assert cells[1][5] == "0"
    assert all(row[4].endswith(("ms", "s")) for row in cells)  # a duration per attempt
    # the output of the latest attempt, as written
    assert page.testid("stdout").text() == "second try\n"
    assert page.testid("stderr").text() == "fine\n"
    assert page.find("button", data_action="cancel") is None  # nothing to cancel
    assert page.one(data_job_root=True).attrs["data-live"] == "0"

    partial = client.get("/partials/jobs/twice")
    assert partial.status_code == 200
    fragment = parse(partial.get_data(as_text=True))
    assert fragment.one(data_region="job").find(data_testid="attempts") is not None
    assert fragment.testid("job-state").clean_text() == "completed"


def test_api_stats_and_api_job_are_the_cli_documents(quick, start_agent, client):
    start_agent(count=2)
    with quick.client() as qc:
        qc.enqueue({"id": "a", "command": "echo a"})
        qc.enqueue({"id": "b", "command": "exit 1", "max_retries": 1})
        qc.enqueue({"id": "c", "command": "true", "delay": "1h", "env": {"K": "v"}})
    settle(quick, ["a", "b"])
    # Nothing moves now: the documents must be equal, field for field.
    stats = client.get("/api/stats")
    assert stats.status_code == 200 and stats.is_json
    assert stats.get_json() == cli_json(quick, "status")
    for job_id in ("a", "b", "c"):
        job = client.get(f"/api/jobs/{job_id}")
        assert job.status_code == 200
        assert job.get_json() == cli_json(quick, "show", job_id)


def test_logs_endpoint_follows_offsets_attempts_and_split_characters(quick, start_agent, client,
                                                                      tmp_path):
    start_agent(count=1)
    gate, flag = tmp_path / "gate", tmp_path / "flag"
    # Attempt 1 prints and fails. Attempt 2 prints "start" and the first byte of "é",
    # waits for the gate, then prints the second byte and "end".
    command = (f"if [ ! -e {shlex.quote(str(flag))} ]; then touch {shlex.quote(str(flag))};"
               f" echo first-attempt; exit 3; fi;"
               f" printf 'start\\n\\303'; while [ ! -e {shlex.quote(str(gate))} ];"
               f" do sleep 0.05; done; printf '\\251 end\\n'; echo oops >&2")
    with quick.client() as qc:
        qc.enqueue({"id": "talky", "command": command, "max_retries": 2})

    def logs(**params) -> dict:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        response = client.get(f"/api/jobs/talky/logs?{query}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    first = wait_until(lambda: (doc := logs()) and doc["attempt"] == 2 and
                       doc["stdout"].startswith("start") and doc, 20,
                       message="attempt 2 to print start")
    # The lone first byte of "é" is held back, not shown as U+FFFD.
    assert first["stdout"] == "start\n" and first["out"] == len(b"start\n")
    assert first["done"] is False and first["state"] == "processing"
    assert first["stderr"] == "" and first["err"] == 0 and first["skipped"] is False

    # Asking again from those offsets gives nothing new while the job waits.
    assert logs(attempt=2, out=first["out"], err=0)["stdout"] == ""
    # Offsets of an older attempt are ignored: the new attempt is read from 0.
    restarted = logs(attempt=1, out=999, err=999)
    assert restarted["attempt"] == 2 and restarted["stdout"] == "start\n"

    gate.touch()
    assert settle(quick, ["talky"])["talky"]["state"] == "completed"
    rest = logs(attempt=2, out=first["out"], err=0)
    assert rest["stdout"] == "\u00e9 end\n" and rest["stderr"] == "oops\n"
    assert rest["done"] is True and rest["state"] == "completed"
    assert rest["out"] == len("start\n\u00e9 end\n".encode()) and rest["err"] == len(b"oops\n")
    assert logs(attempt=2, out=rest["out"], err=rest["err"])["stdout"] == ""

    for bad in ("out=-1", "err=x", "attempt=one"):
        response = client.get(f"/api/jobs/talky/logs?{bad}")
        assert response.status_code == 400 and response.is_json


def test_unknown_job_is_a_404_on_every_route(client):
    token = csrf_token(client)
    for path in ("/jobs/nope", "/partials/jobs/nope"):
        response = client.get(path)
        assert response.status_code == 404
        assert "no job with id 'nope'" in parse(response.get_data(as_text=True)).clean_text()
    for path in ("/api/jobs/nope", "/api/jobs/nope/logs"):
        response = client.get(path)
        assert response.status_code == 404 and response.is_json
    for path in ("/jobs/nope/cancel", "/dlq/nope/retry"):
        response = client.post(path, headers={"X-CSRFToken": token,
                                              "Accept": "application/json"})
        assert response.status_code == 404
        assert response.get_json()["ok"] is False
    assert client.get("/no/such/page").status_code == 404
    hostile = client.get("/jobs/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert hostile.status_code == 404
    body = hostile.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


# --- /metrics -------------------------------------------------------------------------

def test_metrics_count_enqueued_completed_failed_dead_canceled_and_durations(
        quick, start_agent, client):
    start_agent(count=2)
    with quick.client() as qc:
        qc.enqueue({"id": "fast", "command": "true"})
        qc.enqueue({"id": "slow", "command": "sleep 0.3"})
        qc.enqueue({"id": "doomed", "command": "exit 9", "max_retries": 2})
        qc.enqueue({"id": "never", "command": "true", "delay": "1h"})
        qc.enqueue({"id": "waiting", "command": "true", "delay": "1h"})
        settle(quick, ["fast", "slow", "doomed"])
        qc.cancel("never")

    samples = scrape(client)
    one = {name: values.get((), None) for name, values in samples.items()}
    assert one["queuectl_broker_up"] == 1
    assert one["queuectl_jobs_enqueued_total"] == 5
    assert one["queuectl_jobs_completed_total"] == 2
    assert one["queuectl_jobs_failed_total"] == 2  # failed attempts: both of "doomed"
    assert one["queuectl_jobs_dead_total"] == 1
    assert one["queuectl_jobs_canceled_total"] == 1
    # the histogram: 4 finished attempts, cumulative buckets ending in +Inf
    buckets = {dict(labels)["le"]: value
               for labels, value in samples["queuectl_job_duration_seconds_bucket"].items()}
    assert buckets["+Inf"] == one["queuectl_job_duration_seconds_count"] == 4
    ordered = sorted(buckets.items(), key=lambda item: float(item[0]))
    assert [v for _, v in ordered] == sorted(v for _, v in ordered)  # cumulative
    assert buckets["0.25"] <= 3  # "slow" took at least 0.3 s
    duration_sum = one["queuectl_job_duration_seconds_sum"]
    assert duration_sum is not None and duration_sum >= 0.3
    states = {dict(labels)["state"]: value for labels, value in samples["queuectl_jobs"].items()}
    assert states == {"pending": 1, "processing": 0, "completed": 2, "failed": 0, "dead": 1,
                      "canceled": 1}
    assert one["queuectl_queue_depth"] == 1
    assert one["queuectl_agents"] == 1
    slots = {dict(labels)["kind"]: value for labels, value in samples["queuectl_slots"].items()}
    assert slots == {"busy": 0, "total": 2}

    # Counters only grow: retrying the dead job adds its new failed attempts.
    with quick.client() as qc:
        qc.dlq_retry(["doomed"])
        settle(quick, ["doomed"])
    again = {name: values.get(()) for name, values in scrape(client).items()}
    assert again["queuectl_jobs_failed_total"] == 4
    assert again["queuectl_jobs_dead_total"] == 2
    assert again["queuectl_job_duration_seconds_count"] == 6


# --- actions --------------------------------------------------------------------------

def test_cancel_retry_and_retry_all_need_a_csrf_token_and_work_with_one(
        quick, start_agent, client):
    broker = quick
    agent = start_agent(count=2)
    with broker.client() as qc:
        for job_id in ("dead-1", "dead-2", "dead-3"):
            qc.enqueue({"id": job_id, "command": "exit 2", "max_retries": 1})
        settle(broker, ["dead-1", "dead-2", "dead-3"])
        qc.enqueue({"id": "running", "command": "sleep 60"})
        wait_until(lambda: qc.get("running")["state"] == "processing", 15)
        qc.enqueue({"id": "pending", "command": "true", "delay": "1h"})
        qc.enqueue({"id": "done", "command": "true"})
        settle(broker, ["done"])

    # Without a token, or with a wrong one, nothing happens.
    for headers, data in (({}, {}), ({"X-CSRFToken": "forged"}, {}),
                          ({}, {"csrf_token": "forged"})):
        for path in ("/jobs/pending/cancel", "/jobs/running/cancel", "/dlq/dead-1/retry",
                     "/dlq/retry-all"):
            response = client.post(path, headers=headers, data=data)
            assert response.status_code == 400, path
            assert "out of date" in response.get_data(as_text=True)
    refused = client.post("/dlq/retry-all", headers={"Accept": "application/json"})
    assert refused.status_code == 400
    assert refused.get_json()["message"] == "This page is out of date; reload it."
    assert [state_of(broker, j) for j in ("pending", "running", "dead-1", "dead-2")] == \
        ["pending", "processing", "dead", "dead"]

    token = csrf_token(client)
    # A form post (no script): redirect back with a message on the next page.
    response = client.post("/jobs/pending/cancel", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/"
    assert state_of(broker, "pending") == "canceled"
    flash = parse(client.get("/").get_data(as_text=True)).testid("flash").clean_text()
    assert "pending canceled" in flash
    # The page's script: JSON, with the token in a header. A running job is killed.
    response = client.post("/jobs/running/cancel",
                           headers={"X-CSRFToken": token, "Accept": "application/json"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"ok": True, "message": "Job running canceled."}
    assert state_of(broker, "running") == "canceled"
    # Canceling a finished job is a conflict, shown to the user, not a crash.
    response = client.post("/jobs/done/cancel",
                           headers={"X-CSRFToken": token, "Accept": "application/json"})
    assert response.status_code == 409 and response.get_json()["ok"] is False
    response = client.post("/jobs/done/cancel", data={"csrf_token": token, "next": "job"})
    assert response.status_code == 303 and response.headers["Location"] == "/jobs/done"
    page = parse(client.get("/jobs/done").get_data(as_text=True))
    assert page.testid("flash").find("p", class_="flash flash-error") is not None

    # Retries: stop the agent first so a retried job stays pending where we can see it.
    stop_agent(broker, agent)
    response = client.post("/dlq/dead-1/retry", data={"csrf_token": token})
    assert response.status_code == 303
    assert state_of(broker, "dead-1") == "pending"
    with broker.client() as qc:
        assert qc.get("dead-1")["attempts"] == 0
    response = client.post("/dlq/dead-1/retry",
                           headers={"X-CSRFToken": token, "Accept": "application/json"})
    assert response.status_code == 409  # not dead any more
    response = client.post("/dlq/retry-all",
                           headers={"X-CSRFToken": token, "Accept": "application/json"})
    assert response.status_code == 200
    assert response.get_json() == {"ok": True,
                                   "message": "2 dead jobs moved back to pending."}
    assert [state_of(broker, j) for j in ("dead-2", "dead-3")] == ["pending", "pending"]
    page = parse(client.get("/").get_data(as_text=True))
    assert counter(page, "count-dlq") == 0 and job_rows(page, "dlq") == {}
    assert "disabled" in page.testid("dlq-retry-all").attrs


# --- a broker that goes away and comes back --------------------------------------------

def test_broker_down_is_a_clear_503_and_the_page_recovers_when_it_returns(broker):
    from queuectl.dashboard.app import create_app

    client = create_app(broker.endpoint, timeout=0.5).test_client()  # a dead broker costs 0.5 s
    with broker.client() as qc:
        qc.enqueue({"id": "kept", "command": "true", "delay": "1h"})
    token = csrf_token(client)
    assert broker.stop() == 0

    page = client.get("/")
    assert page.status_code == 503
    tree = parse(page.get_data(as_text=True))
    banner = tree.testid("broker-banner")
    assert "hidden" not in banner.attrs
    assert "broker unavailable" in banner.clean_text().lower()
    assert broker.endpoint in banner.clean_text()
    for path in ("/partials/overview", "/jobs/kept", "/partials/jobs/kept"):
        response = client.get(path)
        assert response.status_code == 503, path
        body = response.get_data(as_text=True)
        assert "broker unavailable" in body.lower() and "Traceback" not in body
    for path in ("/api/stats", "/api/jobs/kept", "/api/jobs/kept/logs"):
        response = client.get(path)
        assert response.status_code == 503 and response.get_json()["error"] == \
            "broker unavailable"
    response = client.post("/jobs/kept/cancel",
                           headers={"X-CSRFToken": token, "Accept": "application/json"})
    assert response.status_code == 503
    samples = scrape(client)
    assert samples == {"queuectl_broker_up": {(): 0.0}}
    assert client.get("/healthz").get_json()["broker"] == "down"

    broker.start()  # the same port and store
    page = client.get("/")
    assert page.status_code == 200
    tree = parse(page.get_data(as_text=True))
    assert "hidden" in tree.testid("broker-banner").attrs
    assert set(job_rows(tree)) == {"kept"}
    assert scrape(client)["queuectl_broker_up"] == {(): 1.0}
    assert client.get("/api/stats").status_code == 200
