"""The stats page in a real headless Chromium, against a real broker, real agents
and a real ``queuectl dashboard`` process: what a user sees and clicks.

The page updates itself (it polls the server every couple of seconds), so every
check waits with Playwright's auto-waiting ``expect`` up to a deadline; the
tests also check the page did not navigate (``window.__marker`` survives), so
a change counts only if it came from the live update. Selectors are the stable
ones of the design (``data-testid`` / ``data-job-id`` / ``data-action``).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import struct
import urllib.parse
from pathlib import Path

import pytest

from harness import kill_if_alive, pid_alive, read_pid, state_of, wait_until

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture reports it (skip, or fail in CI)
    if os.environ.get("QUEUECTL_REQUIRE_BROWSER") == "1":
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

pytestmark = [pytest.mark.integration]


# --- helpers ------------------------------------------------------------------

def q(path: Path) -> str:
    return shlex.quote(str(path))


def by_testid(page, name: str):
    return page.locator(f'[data-testid="{name}"]')


def job_row(page, job_id: str, table: str = "jobs"):
    return page.locator(f'[data-testid="{table}"] tr[data-job-id="{job_id}"]')


def state_text(state: str) -> re.Pattern:
    """The text of a state cell: the state's name (a badge may add nothing else)."""
    return re.compile(rf"^\s*{state}\s*$")


def tag_rows(page) -> None:
    """Mark every table row now on the page; a row without the mark was drawn by a
    later live update."""
    page.evaluate("document.querySelectorAll('tr').forEach("
                  "r => r.setAttribute('data-e2e-old', '1'))")


def fresh(locator_text: str) -> str:
    return f"{locator_text}:not([data-e2e-old])"


def assert_no_script_errors(tab) -> None:
    assert tab.page_errors == [], f"uncaught script errors on the page: {tab.page_errors}"
    csp = [text for text in tab.console_errors if "Content Security Policy" in text]
    assert csp == [], f"the page's own code breaks its CSP: {csp}"


def save_shot(page, tmp_path: Path, name: str) -> bytes:
    """A full-page screenshot into ``tmp_path`` and, when ``QUEUECTL_SCREENSHOT_DIR``
    is set, into that folder too (the docs keep one)."""
    data = page.screenshot(full_page=True)
    folders = [tmp_path]
    if os.environ.get("QUEUECTL_SCREENSHOT_DIR"):
        folders.append(Path(os.environ["QUEUECTL_SCREENSHOT_DIR"]))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return data


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


# --- 1. live counters ----------------------------------------------------------------

@pytest.mark.timeout(90)
def test_counters_and_slots_update_live_when_jobs_run_and_complete(broker, start_agent, tab,
                                                                   tmp_path):
    agent = start_agent(count=2)
    with broker.client() as qc:
        agent_id = next(a["id"] for a in qc.agents() if a["pid"] == agent.pid)
    page = tab.page
    tab.open("/")
    expect(by_testid(page, "count-completed")).to_have_text("0")
    expect(by_testid(page, "count-agents")).to_have_text("1")
    expect(by_testid(page, "slots-total")).to_have_text("2")
    expect(by_testid(page, "slots-busy")).to_have_text("0")
    expect(page.locator(f'[data-testid="agents"] tr[data-agent-id="{agent_id}"]')).to_be_visible()
    tab.mark()

    gate = tmp_path / "gate"
    with broker.client() as qc:
        qc.enqueue({"id": "held", "command": f"while [ ! -e {q(gate)} ]; do sleep 0.1; done"})
    try:
        expect(by_testid(page, "slots-busy")).to_have_text("1")
        expect(by_testid(page, "count-processing")).to_have_text("1")
        expect(job_row(page, "held").locator('[data-testid="job-state"]')).to_have_text(
            state_text("processing"))
    finally:
        gate.touch()

    with broker.client() as qc:
        ids = [qc.enqueue({"command": "true"})["id"] for _ in range(3)]
        for job_id in ids + ["held"]:
            assert qc.wait(job_id, timeout=20)["state"] == "completed"
    expect(by_testid(page, "count-completed")).to_have_text("4")
    expect(by_testid(page, "avg-duration")).to_have_text(re.compile(r"^\s*\d[\d.,]*\s*(ms|s|m)?\b"))
    expect(by_testid(page, "count-processing")).to_have_text("0")
    expect(by_testid(page, "slots-busy")).to_have_text("0")
    for job_id in ids:
        expect(job_row(page, job_id).locator('[data-testid="job-state"]')).to_have_text(
            state_text("completed"))
    assert tab.still_marked(), "the page navigated: the counters must update without a reload"
    assert_no_script_errors(tab)


# --- 2. the DLQ retry buttons ------------------------------------------------------------

@pytest.mark.timeout(90)
def test_dlq_retry_button_and_retry_all_move_dead_jobs_back_to_pending(broker, start_agent,
                                                                       tab):
    start_agent(count=2)
    dead_ids = ["doomed-1", "doomed-2", "doomed-3"]
    with broker.client() as qc:
        for job_id in dead_ids:
            qc.enqueue({"id": job_id, "command": "exit 1", "max_retries": 1})
        for job_id in dead_ids:
            assert qc.wait(job_id, timeout=20)["state"] == "dead"
        # No agent from here on, so a retried job stays visibly pending.
        qc.stop_agents(wait=True)
        wait_until(lambda: qc.agents() == [], 15, message="the agents to leave")

    page = tab.page
    tab.open("/")
    for job_id in dead_ids:
        expect(job_row(page, job_id, "dlq")).to_be_visible()
    expect(by_testid(page, "count-dlq")).to_have_text("3")
    tab.mark()

    job_row(page, "doomed-1", "dlq").locator("button[data-action=retry]").click()
    expect(job_row(page, "doomed-1", "dlq")).to_have_count(0)
    expect(job_row(page, "doomed-1").locator('[data-testid="job-state"]')).to_have_text(
        state_text("pending"))
    expect(by_testid(page, "count-dlq")).to_have_text("2")
    expect(by_testid(page, "flash")).to_have_text(re.compile(r"\S"))  # a result message
    with broker.client() as qc:
        retried = qc.get("doomed-1")
        assert (retried["state"], retried["attempts"]) == ("pending", 0)
        assert [qc.get(job_id)["state"] for job_id in dead_ids[1:]] == ["dead", "dead"]
    expect(job_row(page, "doomed-2", "dlq")).to_be_visible()

    by_testid(page, "dlq-retry-all").click()
    expect(page.locator('[data-testid="dlq"] tr[data-job-id]')).to_have_count(0)
    expect(by_testid(page, "count-dlq")).to_have_text("0")
    expect(by_testid(page, "count-pending")).to_have_text("3")
    for job_id in dead_ids:
        expect(job_row(page, job_id).locator('[data-testid="job-state"]')).to_have_text(
            state_text("pending"))
    assert [state_of(broker, job_id) for job_id in dead_ids] == ["pending"] * 3
    assert tab.still_marked(), "the buttons must act in place (fetch), not navigate"
    assert_no_script_errors(tab)


# --- 3. cancel -------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_cancel_button_cancels_a_pending_job_in_the_jobs_table(broker, tab):
    with broker.client() as qc:
        qc.enqueue({"id": "later", "command": "true", "delay": 3600})
        qc.enqueue({"id": "bystander", "command": "true", "delay": 3600})
    page = tab.page
    tab.open("/")
    row = job_row(page, "later")
    expect(row.locator('[data-testid="job-state"]')).to_have_text(state_text("pending"))
    tab.mark()

    row.locator("button[data-action=cancel]").click()
    expect(row.locator('[data-testid="job-state"]')).to_have_text(state_text("canceled"))
    expect(row.locator("button[data-action=cancel]")).to_have_count(0)
    expect(by_testid(page, "count-canceled")).to_have_text("1")
    expect(by_testid(page, "count-pending")).to_have_text("1")
    assert state_of(broker, "later") == "canceled"
    assert state_of(broker, "bystander") == "pending"
    expect(job_row(page, "bystander").locator('[data-testid="job-state"]')).to_have_text(
        state_text("pending"))
    assert tab.still_marked()
    assert_no_script_errors(tab)


@pytest.mark.timeout(90)
def test_cancel_on_the_job_page_kills_a_running_job(broker, start_agent, tab, tmp_path):
    start_agent(count=1)
    pid_file = tmp_path / "long.pid"
    with broker.client() as qc:
        qc.enqueue({"id": "long", "command": f"echo $$ > {q(pid_file)}; exec sleep 60"})
    pid = read_pid(pid_file, timeout=20)
    try:
        page = tab.page
        tab.open("/jobs/long")
        state = by_testid(page, "job-state")
        expect(state).to_have_text(re.compile(r"\bprocessing\b"))
        assert pid_alive(pid)
        tab.mark()

        page.locator("button[data-action=cancel]").click()
        expect(state).to_have_text(re.compile(r"\bcanceled\b"), timeout=35_000)
        assert state_of(broker, "long") == "canceled"
        wait_until(lambda: not pid_alive(pid), 10, interval=0.1,
                   message=f"the canceled job's process {pid} to be gone")
        expect(page.locator("button[data-action=cancel]")).to_have_count(0)
        assert tab.still_marked()
        assert_no_script_errors(tab)
    finally:
        kill_if_alive(pid)


# --- 4. broker down ----------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_page_says_broker_unavailable_while_the_broker_is_down_and_recovers(broker, tab,
                                                                           tmp_path):
    with broker.client() as qc:
        qc.enqueue({"id": "survivor", "command": "true", "delay": 3600})
    page = tab.page
    tab.open("/")
    banner = by_testid(page, "broker-banner")
    expect(by_testid(page, "count-pending")).to_have_text("1")
    expect(banner).to_be_hidden()
    tab.mark()

    assert broker.stop() == 0
    expect(banner).to_be_visible(timeout=30_000)
    expect(banner).to_contain_text(re.compile("broker unavailable", re.IGNORECASE))
    save_shot(page, tmp_path, "broker-down.png")

    # A page opened while the broker is down says so too, with a 503, not a 500.
    other = page.context.new_page()
    reply = other.goto(tab.base + "/", wait_until="domcontentloaded")
    assert reply.status == 503
    expect(by_testid(other, "broker-banner")).to_be_visible()
    expect(by_testid(other, "broker-banner")).to_contain_text(
        re.compile("broker unavailable", re.IGNORECASE))
    assert "Traceback" not in other.content()
    job_page = page.context.new_page()
    assert job_page.goto(tab.base + "/jobs/survivor",
                         wait_until="domcontentloaded").status == 503
    expect(by_testid(job_page, "broker-banner")).to_be_visible()
    other.close()

    broker.start()
    expect(banner).to_be_hidden(timeout=30_000)
    expect(by_testid(page, "count-pending")).to_have_text("1")
    expect(job_row(page, "survivor")).to_be_visible()
    # The job page that opened as an error page comes back to the job by itself.
    expect(by_testid(job_page, "job-state")).to_have_text(state_text("pending"), timeout=30_000)
    job_page.close()
    assert tab.still_marked(), "the page must recover by itself, without a reload"
    assert_no_script_errors(tab)


# --- 5. live output -----------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_job_page_shows_stdout_and_stderr_live_while_the_job_runs(broker, start_agent, tab,
                                                                  tmp_path):
    gate = tmp_path / "gate"
    command = (f"echo 'line 1'; echo 'oops on stderr' >&2; "
               f"while [ ! -e {q(gate)} ]; do sleep 0.1; done; echo 'line 2'")
    with broker.client() as qc:
        qc.enqueue({"id": "chatty", "command": command})
    try:
        # Opened before the job starts: the page must pick up its first attempt.
        page = tab.page
        tab.open("/jobs/chatty")
        tab.mark()
        stdout, stderr = by_testid(page, "stdout"), by_testid(page, "stderr")
        expect(by_testid(page, "job-state")).to_have_text(re.compile(r"\bpending\b"))
        start_agent(count=1)

        expect(stdout).to_contain_text("line 1")
        expect(stderr).to_contain_text("oops on stderr")
        expect(by_testid(page, "job-state")).to_have_text(re.compile(r"\bprocessing\b"))
        expect(by_testid(page, "attempts")).to_be_visible()
        expect(stdout).not_to_contain_text("line 2")

        gate.touch()
        # Appended once each, in order (a string match normalises whitespace).
        expect(stdout).to_have_text("line 1 line 2")
        expect(by_testid(page, "job-state")).to_have_text(re.compile(r"\bcompleted\b"))
        expect(stdout).to_have_text("line 1 line 2")
        expect(stderr).to_have_text("oops on stderr")
        assert tab.still_marked(), "output must stream into the page without a reload"
        assert_no_script_errors(tab)
    finally:
        gate.touch()


# --- 6. hostile strings -------------------------------------------------------------------

HOSTILE_COMMAND = "<script>alert(1)</script>"
HOSTILE_QUEUE = "<img src=x onerror=alert(2)>"
HOSTILE_LABEL = "<img src=x onerror=alert(5)>"
HOSTILE_STDOUT = "<script>alert(3)</script>"
HOSTILE_STDERR = "</pre><img src=x onerror=alert(6)>"


@pytest.mark.timeout(90)
def test_hostile_commands_queues_labels_and_output_show_as_text_and_never_run(
        broker, start_agent, tab):
    start_agent(count=2, labels={"z": HOSTILE_LABEL})
    with broker.client() as qc:
        qc.enqueue({"id": "hostile-cmd", "command": HOSTILE_COMMAND, "queue": HOSTILE_QUEUE,
                    "requires": {"z": HOSTILE_LABEL}, "max_retries": 1})
        qc.enqueue({"id": "hostile-out", "queue": HOSTILE_QUEUE,
                    "command": f"printf %s {shlex.quote(HOSTILE_STDOUT)}; "
                               f"printf %s {shlex.quote(HOSTILE_STDERR)} >&2"})
        assert qc.wait("hostile-cmd", timeout=20)["state"] == "dead"  # sh: syntax error
        assert qc.wait("hostile-out", timeout=20)["state"] == "completed"

    page = tab.page
    tab.open("/")
    row = job_row(page, "hostile-cmd")
    expect(row).to_contain_text(HOSTILE_COMMAND)
    expect(row).to_contain_text("<img src=x onerror=")  # the queue (clipped in the table)
    expect(job_row(page, "hostile-cmd", "dlq")).to_contain_text(HOSTILE_COMMAND)
    expect(page.locator('[data-testid="agents"]')).to_contain_text(f"z={HOSTILE_LABEL}")
    # The same values drawn again by the live update (the script path), not only by
    # the first server render.
    tag_rows(page)
    redrawn = page.locator(fresh('[data-testid="jobs"] tr[data-job-id="hostile-cmd"]'))
    expect(redrawn).to_contain_text(HOSTILE_COMMAND)
    expect(page.locator(fresh('[data-testid="agents"] tr[data-agent-id]'))).to_contain_text(
        f"z={HOSTILE_LABEL}")
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("script", has_text="alert").count() == 0

    tab.open("/jobs/hostile-out")
    expect(by_testid(page, "stdout")).to_have_text(HOSTILE_STDOUT)
    expect(by_testid(page, "stderr")).to_have_text(HOSTILE_STDERR)
    expect(page.locator("body")).to_contain_text(HOSTILE_QUEUE)
    tab.open("/jobs/hostile-cmd")
    expect(page.locator("body")).to_contain_text(HOSTILE_COMMAND)
    expect(by_testid(page, "job-state")).to_have_text(re.compile(r"\bdead\b"))
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("script", has_text="alert").count() == 0

    # An unknown id in the address is echoed on a 404 page, as text.
    reply = tab.open("/jobs/" + urllib.parse.quote(HOSTILE_QUEUE, safe=""))
    assert reply.status == 404
    expect(page.locator("body")).to_contain_text(HOSTILE_QUEUE)
    assert page.locator('img[src="x"]').count() == 0

    assert tab.dialogs == [], f"hostile input ran as script: {tab.dialogs}"
    assert_no_script_errors(tab)


# --- 7. filters ----------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_state_queue_and_search_filters_narrow_the_jobs_table_and_live_in_the_url(broker, tab):
    with broker.client() as qc:
        qc.enqueue({"id": "alpha-1", "command": "echo apple", "queue": "fruit", "delay": 3600})
        qc.enqueue({"id": "beta-2", "command": "echo banana", "queue": "veg", "delay": 3600})
        qc.enqueue({"id": "gamma-3", "command": "echo cherry", "queue": "veg", "delay": 3600})
        qc.cancel("beta-2")
    everyone = ("alpha-1", "beta-2", "gamma-3")
    page = tab.page

    def shown(*expected: str) -> None:
        for job_id in everyone:
            expect(job_row(page, job_id)).to_have_count(1 if job_id in expected else 0)

    tab.open("/")
    shown(*everyone)
    tab.mark()

    by_testid(page, "filter-state").select_option("canceled")
    shown("beta-2")
    expect(page).to_have_url(re.compile(r"[?&]state=canceled(&|$)"))

    by_testid(page, "filter-state").select_option("")
    shown(*everyone)
    expect(page).not_to_have_url(re.compile(r"state=canceled"))

    by_testid(page, "filter-search").fill("apple")
    shown("alpha-1")
    expect(page).to_have_url(re.compile(r"[?&]q=apple(&|$)"))
    # The filter holds across live updates (the poll carries it).
    tag_rows(page)
    expect(page.locator(fresh('[data-testid="jobs"] tr[data-job-id="alpha-1"]'))).to_have_count(1)
    shown("alpha-1")

    # Typed slowly, across several live updates: the box keeps every key and its focus.
    search = by_testid(page, "filter-search")
    search.fill("")
    search.press_sequentially("cherry", delay=700)
    expect(search).to_have_value("cherry")
    expect(search).to_be_focused()
    shown("gamma-3")

    by_testid(page, "filter-search").fill("GAMMA")  # an id, any case
    shown("gamma-3")
    expect(page).to_have_url(re.compile(r"[?&]q=GAMMA(&|$)"))

    by_testid(page, "filter-search").fill("")
    by_testid(page, "filter-queue").fill("veg")
    shown("beta-2", "gamma-3")
    expect(page).to_have_url(re.compile(r"[?&]queue=veg(&|$)"))
    assert tab.still_marked(), "filtering must not reload the page"

    # A filtered view is a link: opening it shows the same narrowing and inputs.
    tab.open("/?state=pending&queue=veg")
    shown("gamma-3")
    expect(by_testid(page, "filter-state")).to_have_value("pending")
    expect(by_testid(page, "filter-queue")).to_have_value("veg")
    assert_no_script_errors(tab)


# --- 8. screenshot --------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_screenshot_of_a_busy_dashboard(broker, start_agent, tab, tmp_path):
    start_agent(count=2, labels={"zone": "eu-west", "gpu": "a100"})
    start_agent(count=2, labels={"zone": "us-east"})
    pid_file = tmp_path / "render.pid"
    quick = [
        {"id": "thumbnail-001", "command": "sleep 0.3", "queue": "images"},
        {"id": "thumbnail-002", "command": "sleep 0.2", "queue": "images"},
        {"id": "email-digest", "command": "echo sent 42 emails", "queue": "emails"},
        {"id": "report-daily", "command": "sleep 0.5; echo report ok", "queue": "reports"},
        {"id": "cleanup-tmp", "command": "true"},
        {"id": "index-search", "command": "sleep 0.4", "queue": "search"},
    ]
    with broker.client() as qc:
        qc.enqueue_many(quick)
        qc.enqueue({"id": "nightly-backup", "command": "tar czf /nonexistent/db.tgz /var/lib/db",
                    "max_retries": 1, "queue": "backups"})
        for job in quick:
            assert qc.wait(job["id"], timeout=30)["state"] == "completed"
        assert qc.wait("nightly-backup", timeout=30)["state"] == "dead"
        qc.enqueue({"id": "render-video", "queue": "video",
                    "command": f"echo $$ > {q(pid_file)}; echo rendering; exec sleep 60"})
        qc.enqueue({"id": "report-weekly", "command": "echo weekly", "queue": "reports",
                    "delay": 3600})
    pid = read_pid(pid_file, timeout=20)
    try:
        page = tab.page
        tab.open("/")
        expect(by_testid(page, "count-completed")).to_have_text(str(len(quick)))
        expect(by_testid(page, "count-processing")).to_have_text("1")
        expect(by_testid(page, "count-dlq")).to_have_text("1")
        expect(page.locator('[data-testid="agents"] tr[data-agent-id]')).to_have_count(2)
        expect(by_testid(page, "chart-throughput")).to_be_visible()
        expect(by_testid(page, "chart-states")).to_be_visible()

        data = save_shot(page, tmp_path, "dashboard.png")
        width, height = png_size(data)
        assert len(data) > 20_000, f"a {len(data)}-byte screenshot is too small to show the page"
        assert width >= 1200 and height >= 900, (width, height)

        tab.open("/jobs/report-daily")
        expect(by_testid(page, "stdout")).to_contain_text("report ok")
        job_shot = save_shot(page, tmp_path, "job.png")
        assert png_size(job_shot)[0] >= 1200
        assert_no_script_errors(tab)
    finally:
        kill_if_alive(pid)


# --- 9. a page older than the dashboard process ---------------------------------------------

@pytest.mark.timeout(90)
def test_an_action_from_a_page_older_than_a_dashboard_restart_asks_for_a_reload(
        broker, dashboard, start_dashboard, tab):
    with broker.client() as qc:
        qc.enqueue({"id": "later", "command": "true", "delay": 3600})
    page = tab.page
    tab.open("/")
    row = job_row(page, "later")
    expect(row.locator('[data-testid="job-state"]')).to_have_text(state_text("pending"))

    # A new dashboard process on the same address has a new CSRF secret. The page's
    # live updates are held back meanwhile, so its forms stay the ones the old
    # process issued (a live update from the new one would renew them).
    page.route(lambda url: "/partials/" in url, lambda route: route.abort())
    dashboard.proc.terminate()
    dashboard.proc.wait(15)
    start_dashboard(port=dashboard.port)
    row.locator("button[data-action=cancel]").click()
    expect(by_testid(page, "flash")).to_contain_text(
        re.compile(r"out of date.*reload", re.IGNORECASE))
    assert state_of(broker, "later") == "pending", "a stale form must not act"
    page.unroute_all()

    tab.open("/")
    job_row(page, "later").locator("button[data-action=cancel]").click()
    expect(job_row(page, "later").locator('[data-testid="job-state"]')).to_have_text(
        state_text("canceled"))
    assert state_of(broker, "later") == "canceled"
    assert_no_script_errors(tab)


@pytest.mark.timeout(90)
def test_a_page_whose_dashboard_stopped_says_so_rather_than_blaming_the_broker(
        broker, dashboard, start_dashboard, tab):
    page = tab.page
    tab.open("/")
    expect(by_testid(page, "count-pending")).to_have_text("0")
    tab.mark()
    dashboard.proc.terminate()
    dashboard.proc.wait(15)
    expect(by_testid(page, "page-banner")).to_be_visible(timeout=30_000)
    expect(by_testid(page, "page-banner")).to_contain_text("does not answer")
    expect(by_testid(page, "broker-banner")).to_be_hidden()
    start_dashboard(port=dashboard.port)
    expect(by_testid(page, "page-banner")).to_be_hidden(timeout=30_000)
    with broker.client() as qc:
        qc.enqueue({"command": "true", "delay": 3600})
    expect(by_testid(page, "count-pending")).to_have_text("1")
    assert tab.still_marked(), "the page must recover by itself, without a reload"


# --- 10. the access token ------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_a_token_protected_page_needs_its_token_once_then_works_fully(
        broker, start_dashboard, new_tab):
    secret = "e2e-" + secrets.token_hex(12)
    board = start_dashboard(token=secret)

    stranger = new_tab(board.url)
    assert stranger.open("/").status == 401
    assert stranger.open("/?token=wrong-guess-4711").status == 401
    assert "wrong-guess-4711" not in stranger.page.content()
    assert secret not in stranger.page.content()
    expect(by_testid(stranger.page, "count-pending")).to_have_count(0)

    with broker.client() as qc:
        qc.enqueue({"id": "first", "command": "true", "delay": 3600})
    user = new_tab(board.url)
    assert user.open(f"/?token={secret}").status == 200
    expect(user.page).to_have_url(board.url + "/")  # the token leaves the address bar
    page = user.page
    expect(by_testid(page, "count-pending")).to_have_text("1")
    user.mark()
    with broker.client() as qc:
        qc.enqueue({"id": "second", "command": "true", "delay": 3600})
    expect(by_testid(page, "count-pending")).to_have_text("2")  # the script loaded and polls
    job_row(page, "first").locator("button[data-action=cancel]").click()
    expect(job_row(page, "first").locator('[data-testid="job-state"]')).to_have_text(
        state_text("canceled"))
    assert state_of(broker, "first") == "canceled"
    assert user.still_marked()
    refused = [(status, url) for status, url in user.responses if status >= 400]
    assert refused == [], f"requests refused although the page had its token: {refused}"
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert all(secret not in c["value"] for c in cookies.values()), "the token itself is stored"
    assert_no_script_errors(user)


# --- 11. long values ------------------------------------------------------------------------

def page_overflow(page) -> int:
    """How many pixels the document is wider than the window (0: no sideways scroll)."""
    return page.evaluate("document.documentElement.scrollWidth"
                         " - document.documentElement.clientWidth")


@pytest.mark.timeout(90)
def test_long_commands_and_output_lines_do_not_stretch_the_page_sideways(broker, start_agent,
                                                                         tab):
    start_agent(count=1)
    word = "A" * 9000
    command = f"echo {word}; echo {word} >&2"
    with broker.client() as qc:
        qc.enqueue({"id": "wide", "command": command, "queue": "q" * 120, "max_retries": 1})
        assert qc.wait("wide", timeout=20)["state"] == "completed"
    page = tab.page
    tab.open("/")
    row = job_row(page, "wide")
    expect(row.locator('[data-testid="job-state"]')).to_have_text(state_text("completed"))
    assert page_overflow(page) <= 0, "a long command widens the overview beyond the window"
    # The cell's hover title carries the command: in full for anything readable, cut
    # (fmt.tip: 1,000 characters) for a 9 KiB one, since tables refresh every 2 s.
    # The job page below shows all of it.
    title = page.evaluate("""() => [...document.querySelectorAll(
        '[data-testid=jobs] tr[data-job-id=wide] [title]')].map(e => e.title)
        .filter(t => t.startsWith('echo A'))[0]""")
    assert title and len(title) >= 900 and command.startswith(title.rstrip("\u2026")), \
        f"the command cell's title should carry the command, got {title and title[:80]!r}"

    tab.open("/jobs/wide")
    expect(by_testid(page, "stdout")).to_have_text(word)
    expect(by_testid(page, "stderr")).to_have_text(word)
    expect(page.locator("body")).to_contain_text(command)  # the job page shows all of it
    assert page_overflow(page) <= 0, "a long command or output line widens the job page"
    assert_no_script_errors(tab)
