"""The stats page's safety through Flask's test client, against a real broker and agents:
every value from a job or an agent is escaped, and every response carries the
security headers (no inline script or style can run)."""

from __future__ import annotations

import json

import pytest

from dashboard.dashboard_html import CSP, job_rows, parse, settle
from harness import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]


# --- hostile values ----------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_every_value_from_a_job_or_agent_is_escaped(quick, start_agent, client):
    broker = quick
    start_agent(count=2, labels={"evil": HOSTILE})
    output = ("printf '%s\\n' '<script>alert(1)</script>' '</pre><img src=x onerror=alert(2)>'"
              " '{{ 7*7 }}'; printf 'nul:\\000 bad:\\377 rtl:\\342\\200\\256 end\\n'; exit 1")
    long_command = "echo " + "x" * 10_000
    with broker.client() as qc:
        qc.enqueue({"id": "xss-command", "command": HOSTILE, "max_retries": 1,
                    "queue": HOSTILE})
        qc.enqueue({"id": "xss-output", "command": output, "max_retries": 1,
                    "env": {"E": HOSTILE}})
        qc.enqueue({"id": "rtl", "command": "echo \u202etxt.exe", "delay": "1h"})
        qc.enqueue({"id": "long", "command": long_command, "delay": "1h"})
        settle(broker, ["xss-command", "xss-output"])
        qc.enqueue({"id": "running-xss", "command": f"sleep 60 # {HOSTILE}"})
        wait_until(lambda: qc.get("running-xss")["state"] == "processing", 15)

    pages = {}
    for path in ("/", "/partials/overview", f"/?q={HOSTILE}", f"/?queue={HOSTILE}",
                 "/jobs/xss-command", "/partials/jobs/xss-command", "/jobs/xss-output",
                 "/partials/jobs/xss-output", "/jobs/rtl", "/jobs/long", "/jobs/running-xss"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.mimetype == "text/html"
        pages[path] = body = response.get_data(as_text=True)
        assert HOSTILE not in body, path
        assert "<img src=x" not in body and "</pre><img" not in body, path
        assert "\u202e" not in body and "\x00" not in body, path
    for path in ("/", "/partials/overview", "/jobs/xss-command", "/jobs/running-xss"):
        assert ESCAPED in pages[path], path
    # the queue filter echoes the hostile value back into its input, escaped
    assert f'value="{ESCAPED}"' in pages[f"/?queue={HOSTILE}"]
    assert set(job_rows(parse(pages[f"/?queue={HOSTILE}"]))) == {"xss-command"}
    # the label of the agent, escaped
    agents = parse(pages["/"]).testid("agents").clean_text()
    assert f"evil={HOSTILE}" in agents  # as text, after unescaping by the parser
    # output: shown as text, with NUL, invalid UTF-8 and the RTL override made visible
    job = parse(pages["/jobs/xss-output"])
    stdout = job.testid("stdout").text()
    assert stdout.startswith(f"{HOSTILE}\n</pre><img src=x onerror=alert(2)>\n{{{{ 7*7 }}}}\n")
    assert "nul:\\u0000 bad:\ufffd rtl:\\u202e end" in stdout
    assert "{{ 7*7 }}" in stdout and "49" not in stdout
    assert "E=" + HOSTILE in job.clean_text()
    # the RTL override in a command is shown as an escape, not obeyed
    shown = parse(pages["/jobs/rtl"]).one("pre", class_="command-full").text()
    assert "echo \\u202etxt.exe" in shown
    # a 10,000-character command is cut in the table, with its first 1,000 characters in
    # the title (every row is sent again every 2 s), and the whole of it on the job's page
    row = job_rows(parse(pages["/"]))["long"]
    code = row.one("code")
    assert len(code.text()) < 100 and code.text().endswith("\u2026")
    assert code.attrs["title"] == long_command[:999] + "\u2026"
    assert long_command in parse(pages["/jobs/long"]).one("pre", class_="command-full").text()
    with broker.client() as qc:
        qc.cancel("running-xss")


# --- headers, assets, and the page's own rules -----------------------------------------

def test_security_headers_on_every_response_and_no_inline_script_or_style(broker, client):
    with broker.client() as qc:
        qc.enqueue({"id": "j", "command": "true", "delay": "1h"})
    responses = {path: client.get(path) for path in (
        "/", "/partials/overview", "/jobs/j", "/api/stats", "/api/jobs/j", "/metrics",
        "/healthz", "/static/app.js", "/static/style.css", "/jobs/missing", "/nowhere")}
    responses["POST /dlq/retry-all"] = client.post("/dlq/retry-all")  # refused: no token
    for name, response in responses.items():
        assert response.headers.get("Content-Security-Policy") == CSP, name
        assert response.headers.get("X-Content-Type-Options") == "nosniff", name
        assert response.headers.get("Referrer-Policy") == "same-origin", name
    assert responses["/static/app.js"].status_code == 200
    assert responses["/static/app.js"].mimetype in ("text/javascript", "application/javascript")
    assert responses["/static/style.css"].mimetype == "text/css"
    for path in ("/", "/jobs/j"):
        tree = parse(responses[path].get_data(as_text=True))
        scripts = tree.find_all("script")
        assert scripts and all((s.attrs.get("src") or "").startswith("/static/") and not s.text()
                               for s in scripts)
        assert not [n for n in tree.find_all() if "style" in n.attrs or n.tag == "style"]
        # nothing from another origin: every link, script and stylesheet is this server's
        for node in tree.find_all():
            for attr in ("src", "href", "action"):
                if attr in node.attrs:
                    assert (node.attrs[attr] or "").startswith(("/", "#")), (path, node.attrs[attr])
    # the session cookie that carries the CSRF secret is not readable by scripts
    cookie = responses["/"].headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_healthz_and_the_job_json_round_trip_hostile_text_untouched(broker, client):
    command = 'echo "<b>\u202e</b>"'
    with broker.client() as qc:
        qc.enqueue({"id": "raw", "command": command, "delay": "1h"})
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.get_json() == {"ok": True, "broker": "up", "endpoint": broker.endpoint}
    response = client.get("/api/jobs/raw")
    assert response.mimetype == "application/json"
    assert json.loads(response.get_data(as_text=True))["command"] == command
