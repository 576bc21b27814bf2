"""The access token of the stats page: checked on every request, static files too.

Through Flask's test client against a real broker; the refusal to bind a public
address without a token is checked through the real CLI in
test_dashboard_process.py.
"""

from __future__ import annotations

import pytest

from dashboard.dashboard_html import CSRF_META, parse

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TOKEN = "s3cret-Token_42"
PATHS = ("/", "/partials/overview", "/api/stats", "/metrics", "/healthz", "/static/app.js",
         "/static/style.css", "/jobs/j", "/api/jobs/j/logs")


@pytest.fixture
def guarded(broker):
    from queuectl.dashboard.app import create_app

    with broker.client() as qc:
        qc.enqueue({"id": "j", "command": "true", "delay": "1h"})
    return create_app(broker.endpoint, token=TOKEN, timeout=1.0)


def test_every_request_without_the_token_is_refused_without_echoing_what_was_given(guarded):
    client = guarded.test_client()
    wrong = "wrong-guess-0123"
    for path in PATHS:
        for headers in ({}, {"Authorization": f"Bearer {wrong}"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            body = response.get_data(as_text=True)
            assert wrong not in body and TOKEN not in body
        response = client.get(f"{path}?token={wrong}")
        assert response.status_code == 401, path
        assert wrong not in response.get_data(as_text=True)
        assert "Set-Cookie" not in response.headers or "queuectl_token" not in \
            response.headers["Set-Cookie"]
    page = client.get("/").get_data(as_text=True)
    assert "?token=" in page and "Authorization: Bearer" in page  # says how to pass it
    # POSTs too, and before CSRF is even looked at
    assert client.post("/dlq/retry-all").status_code == 401
    # a forged cookie is not the token
    client.set_cookie("queuectl_token", TOKEN)
    assert client.get("/api/stats").status_code == 401


def test_bearer_token_opens_every_route(guarded):
    client = guarded.test_client()
    for path in PATHS:
        response = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, path
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")


def test_token_in_the_url_once_sets_a_cookie_and_is_removed_from_the_address(guarded):
    client = guarded.test_client()
    response = client.get(f"/?state=pending&token={TOKEN}&q=j")
    assert response.status_code == 303
    assert response.headers["Location"] == "/?state=pending&q=j"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("queuectl_token=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie  # the browser keeps a derived value, not the token
    # From now on the browser's cookie is enough, for pages, fragments and assets.
    for path in PATHS:
        assert client.get(path).status_code == 200, path
    page = client.get("/?state=pending&q=j")
    rows = parse(page.get_data(as_text=True)).find_all("tr", data_job_id=True)
    assert {r.attrs["data-job-id"] for r in rows} == {"j"}
    # The token does not replace CSRF: an action still needs the page's CSRF token.
    assert client.post("/jobs/j/cancel").status_code == 400
    meta = CSRF_META.search(page.get_data(as_text=True))
    assert meta is not None
    csrf = meta.group(1)
    response = client.post("/jobs/j/cancel", data={"csrf_token": csrf})
    assert response.status_code == 303
    # An open redirect is not possible through the token redirect.
    response = client.get(f"//evil.example/?token={TOKEN}")
    assert response.status_code in (303, 404)
    if response.status_code == 303:
        assert response.headers["Location"].startswith("/") and \
            not response.headers["Location"].startswith("//")


def test_without_a_token_the_loopback_page_needs_none(client):
    assert client.get("/").status_code == 200
    assert client.get("/static/app.js").status_code == 200
