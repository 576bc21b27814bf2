"""Fixtures for the browser tests: one headless Debian Chromium per session, a real
``queuectl dashboard`` process per test, and a fresh browser context per test.

The browser is Debian's ``/usr/bin/chromium`` driven by Playwright's sync API
(never ``playwright install``: it downloads a browser and fails here). Without
it the tests are skipped, unless ``QUEUECTL_REQUIRE_BROWSER=1`` (CI) makes that
a failure.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness import free_port, program, wait_until

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-quic"]
INSTALL_HINT = "install Debian's chromium (apt-get install -y chromium)"
VIEWPORT = {"width": 1280, "height": 900}
WAIT_MS = 25_000  # how long a browser expectation may take on a loaded 2-core machine


def _unavailable(reason: str) -> None:
    if os.environ.get("QUEUECTL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}: {INSTALL_HINT}", pytrace=False)
    pytest.skip(f"{reason}; the browser tests need it ({INSTALL_HINT})")


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole session."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Dashboard:
    """A running ``queuectl dashboard`` on a loopback port."""

    url: str
    port: int
    proc: Any

    def log(self) -> str:
        return Path(self.proc.log_path).read_text(errors="replace")[-4000:]


def _answers(url: str, proc: Any) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the dashboard exited with {proc.returncode}: "
                           f"{Path(proc.log_path).read_text(errors='replace')[-2000:]}")
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401  # a token-protected page answers 401 without its token
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def start_dashboard(procs, broker):
    """start_dashboard(token=None, port=None) -> Dashboard: ``queuectl dashboard`` as a
    user starts it, a client of ``broker``; returns once it answers."""
    started = []

    def start(token: str | None = None, port: int | None = None) -> Dashboard:
        port = port or free_port()
        argv = program("queuectl") + ["dashboard", "--host", "127.0.0.1", "--port", str(port),
                                      "--broker", broker.endpoint]
        env = broker.env()
        env.pop("QUEUECTL_DASHBOARD_TOKEN", None)
        if token:
            argv += ["--token", token]
        started.append(port)
        proc = procs.start(argv, f"dashboard-{len(started)}.log", env=env)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url + "/", proc), 30, interval=0.1,
                   message=f"the dashboard to answer at {url}/")
        return Dashboard(url, port, proc)

    return start


@pytest.fixture
def dashboard(start_dashboard) -> Dashboard:
    return start_dashboard()


@dataclass
class Tab:
    """A page in a fresh browser context, with what it reported: dialogs (alert,
    confirm...), console errors, uncaught script errors, and (status, url) of
    every response."""

    page: Any
    base: str
    dialogs: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    responses: list[tuple[int, str]] = field(default_factory=list)

    def open(self, path: str) -> Any:
        reply = self.page.goto(self.base + path, wait_until="domcontentloaded")
        return reply

    def mark(self) -> None:
        """Tag the document: still tagged later means the page did not navigate."""
        self.page.evaluate("window.__marker = 1")

    def still_marked(self) -> bool:
        return self.page.evaluate("window.__marker") == 1


def watch(page: Any, base: str) -> Tab:
    """Record what ``page`` reports into a new ``Tab``."""
    tab = Tab(page, base)

    def on_dialog(dialog: Any) -> None:
        tab.dialogs.append(f"{dialog.type}: {dialog.message}")
        # A confirm() before a destructive action is fair UX: accept it so the
        # action goes on. Tests that must see no dialog at all check tab.dialogs.
        if dialog.type == "confirm":
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda msg: tab.console_errors.append(msg.text)
            if msg.type == "error" else None)
    page.on("pageerror", lambda exc: tab.page_errors.append(str(exc)))
    page.on("response", lambda reply: tab.responses.append((reply.status, reply.url)))
    return tab


@pytest.fixture
def new_tab(browser):
    """new_tab(base_url) -> a Tab in a fresh browser context (1280x900), closed at
    teardown; each context has its own cookies."""
    contexts = []

    def make(base: str) -> Tab:
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        return watch(context.new_page(), base)

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def tab(new_tab, dashboard) -> Tab:
    """A page of a fresh browser context, aimed at ``dashboard``."""
    return new_tab(dashboard.url)
