"""Defects found by an adversarial review of the stats page, kept as regression tests.

Each test asserts what a user (or an attacker) would notice, against a real broker:
- a page on loopback must not answer pages and actions for a foreign ``Host``
  (DNS rebinding turns any web site into a same-origin client of 127.0.0.1);
- the ``?token=`` redirect must stay on this site whatever the path holds;
- jobs whose ids are ``.`` or ``..`` (valid ids) must be reachable from their links
  and their buttons;
- ``--host`` that cannot be bound is one line on stderr, not a traceback;
- a malformed broker endpoint is refused at start (a job page opened while the
  broker is down recovering by itself is checked in tests/e2e).
"""

from __future__ import annotations

import subprocess
from urllib.parse import urljoin, urlsplit

import pytest

from dashboard.dashboard_html import CSRF_META, parse
from harness import free_port, program, wait_until

pytestmark = pytest.mark.integration

SECRET = "hunter2-not-for-other-sites"
TOKEN = "review-Token_7"


def _app(broker, token: str | None = None):
    from queuectl.dashboard.app import create_app

    app = create_app(broker.endpoint, token=token, timeout=1.0)
    app.testing = False
    return app


def _csrf(client, host: str | None = None) -> str:
    headers = {"Host": host} if host else {}
    page = client.get("/", headers=headers).get_data(as_text=True)
    match = CSRF_META.search(page)
    return match.group(1) if match else ""


def test_a_foreign_host_name_gets_neither_job_data_nor_actions(broker):
    """DNS rebinding: evil.example resolves to 127.0.0.1 after the victim opened it,
    so its script is same-origin with the page; only the Host header tells them apart."""
    with broker.client() as qc:
        qc.enqueue({"id": "secret-job", "command": "deploy", "delay": "1h",
                    "env": {"API_KEY": SECRET}})
    app = _app(broker)
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080"):  # loopback still works
        assert app.test_client().get("/api/jobs/secret-job",
                                     headers={"Host": host}).status_code == 200, host

    for host in ("evil.example:8080", "evil.example"):
        client = app.test_client()
        reply = client.get("/api/jobs/secret-job", headers={"Host": host})
        assert reply.status_code != 200 and SECRET not in reply.get_data(as_text=True), host
        token = _csrf(client, host)
        reply = client.post("/jobs/secret-job/cancel", headers={
            "Host": host, "X-CSRFToken": token, "Accept": "application/json"})
        assert reply.status_code != 200, (host, reply.get_data(as_text=True))
        with broker.client() as qc:
            assert qc.get("secret-job")["state"] == "pending", host


@pytest.mark.parametrize("path", ["/%09/evil.example/", "/%09%2Fevil.example/",
                                  "/%0A/evil.example/", "//evil.example/",
                                  "/%5C%5Cevil.example/"])
def test_the_token_redirect_stays_on_this_site(broker, path):
    client = _app(broker, TOKEN).test_client()
    reply = client.get(f"{path}?token={TOKEN}")
    assert reply.status_code < 500, reply.get_data(as_text=True)[:300]
    if 300 <= reply.status_code < 400:
        here = "http://127.0.0.1:8080/"
        # Browsers drop tabs and newlines from URLs, as urljoin does.
        target = urlsplit(urljoin(here, reply.headers["Location"]))
        assert target.netloc == "127.0.0.1:8080", reply.headers["Location"]


@pytest.mark.parametrize("job_id", [".", ".."])
def test_a_job_named_with_dots_can_be_opened_and_canceled_from_the_overview(broker, job_id):
    with broker.client() as qc:
        qc.enqueue({"id": job_id, "command": "echo dots", "delay": "1h"})
    client = _app(broker).test_client()
    here = "http://127.0.0.1:8080/"
    tree = parse(client.get("/").get_data(as_text=True))
    row = tree.find("tr", data_job_id=job_id)
    assert row is not None
    # What a browser requests when the link is clicked (it removes dot segments).
    def requested(url: str) -> str:
        parts = urlsplit(urljoin(here, url))
        return parts.path + (f"?{parts.query}" if parts.query else "")

    link = requested(row.first("a").attr("href"))
    page = client.get(link)
    assert page.status_code == 200 and 'data-job-root' in page.get_data(as_text=True), link
    assert job_id in page.get_data(as_text=True)
    action = requested(row.first("form").attr("action"))
    reply = client.post(action, headers={"X-CSRFToken": _csrf(client),
                                         "Accept": "application/json"})
    assert reply.status_code == 200, (action, reply.get_data(as_text=True)[:200])
    with broker.client() as qc:
        assert qc.get(job_id)["state"] == "canceled"


def test_a_host_that_cannot_be_bound_is_reported_in_one_line(broker):
    result = subprocess.run(
        program("queuectl") + ["dashboard", "--host", "127.0.0.1 ", "--port", "0",
                               "--broker", broker.endpoint],
        check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode in (1, 2), result
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_malformed_broker_endpoint_is_refused_at_start_in_one_line():
    result = subprocess.run(
        program("queuectl") + ["dashboard", "--port", "0", "--broker", "tcp://no-port-here"],
        check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and "endpoint" in result.stderr, result.stderr


def test_a_request_without_a_host_header_is_served_on_loopback(procs, broker):
    """HTTP/1.0 probes send no Host; no browser does, so DNS rebinding needs one."""
    import socket

    port = free_port()
    page = procs.start(program("queuectl") + ["dashboard", "--port", str(port), "--broker",
                                              broker.endpoint], "dashboard.log", env=broker.env())

    def ask(request: bytes) -> bytes:
        assert page.poll() is None
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(request)
                return b"".join(iter(lambda: conn.recv(65536), b""))
        except OSError:
            return b""

    reply = wait_until(lambda: ask(b"GET /healthz HTTP/1.0\r\n\r\n"), 30,
                       message="the stats page to answer")
    assert reply.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")), reply[:200]
    foreign = ask(b"GET /healthz HTTP/1.0\r\nHost: evil.example\r\n\r\n")
    assert b" 421 " in foreign.split(b"\r\n", 1)[0], foreign[:200]


def test_the_query_forms_of_the_json_routes_answer_json_errors(broker):
    client = _app(broker).test_client()
    for path in ("/by-id/api?id=nope", "/by-id/logs?id=nope", "/api/jobs/nope"):
        reply = client.get(path)
        assert reply.status_code == 404 and reply.is_json, (path, reply.content_type)
