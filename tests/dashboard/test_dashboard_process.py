"""The stats page as users start it: `queuectl dashboard`, `python -m queuectl.dashboard`,
and as part of `queuectl up`, fetched over real HTTP on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dashboard.dashboard_html import counter, job_rows, parse
from harness import free_port, pid_alive, program, run_cli, wait_until
from queuectl.client import Client

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def fetch(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def serving(proc, url: str) -> bool:
    assert proc.poll() is None, Path(proc.log_path).read_text()
    try:
        return fetch(url, 2)[0] == 200
    except OSError:
        return False


def stop(proc, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout)


def nobody_listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_queuectl_dashboard_serves_the_page_and_its_assets_over_http(procs, broker):
    with broker.client() as qc:
        qc.enqueue({"id": "waiting", "command": "true", "delay": "1h"})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    page = procs.start(program("queuectl") + ["dashboard", "--port", str(port),
                                              "--broker", broker.endpoint],
                       "dashboard.log", env=broker.env())
    wait_until(lambda: serving(page, base + "/healthz"), 30, message="the stats page")

    status, kind, body = fetch(base + "/")
    assert status == 200 and kind.startswith("text/html")
    tree = parse(body)
    assert counter(tree, "count-pending") == 1 and set(job_rows(tree)) == {"waiting"}
    status, kind, script = fetch(base + "/static/app.js")
    assert status == 200 and "javascript" in kind and "X-CSRFToken" in script
    status, kind, css = fetch(base + "/static/style.css")
    assert status == 200 and kind.startswith("text/css") and "font-family" in css
    status, kind, stats = fetch(base + "/api/stats")
    assert status == 200 and json.loads(stats)["counts"]["pending"] == 1
    assert fetch(base + "/metrics")[0] == 200

    log = Path(page.log_path).read_text()
    assert f"http://127.0.0.1:{port}/" in log  # it says where it listens
    assert stop(page) == 0
    assert "Traceback" not in Path(page.log_path).read_text()
    assert nobody_listens(port)


def test_a_busy_port_is_one_line_and_exit_1(procs, broker):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(broker, "dashboard", "--port", str(port), timeout=60)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_a_public_address_without_a_token_is_refused_before_binding(broker, host):
    env = {k: v for k, v in broker.env().items() if k != "QUEUECTL_DASHBOARD_TOKEN"}
    port = free_port()
    started = time.monotonic()
    result = run_cli(broker, "dashboard", "--host", host, "--port", str(port), env=env,
                     timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        (f"queuectl: binding {host} exposes the queue; give --token or set "
         "QUEUECTL_DASHBOARD_TOKEN")]
    assert result.stdout == ""
    assert time.monotonic() - started < 20
    # the module form refuses the same way
    module = subprocess.run([sys.executable, "-m", "queuectl.dashboard", "--host", host,
                             "--port", str(port)], capture_output=True, text=True, env=env,
                            timeout=60, check=False)
    assert module.returncode == 2 and "exposes the queue" in module.stderr
    # and so does `queuectl up`, before starting anything
    up = run_cli(broker, "up", "--http", f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                 "--bind", f"tcp://127.0.0.1:{free_port()}", env=env, timeout=60)
    assert up.returncode == 2 and "QUEUECTL_DASHBOARD_TOKEN" in up.stderr
    assert len(up.stderr.splitlines()) == 1


WEAK_TOKENS = [" ", "a", " " * 32, "fifteen-chars-x", "sixteen chars ok", "tab\tin-a-long-token",
               "\x1b]0;long-enough-token"]


@pytest.mark.parametrize("token", WEAK_TOKENS, ids=repr)
def test_a_weak_token_is_refused_for_a_public_address(broker, token):
    """TEST-NET-1 (192.0.2.10) is no address of this host, so not even the code before
    this rule could expose anything here: it failed to bind (exit 1) instead of refusing."""
    host, port = "192.0.2.10", free_port()
    env = {**broker.env(), "QUEUECTL_DASHBOARD_TOKEN": token}
    for name, argv in (
            ("dashboard", program("queuectl") + ["dashboard", "--host", host, "--port", str(port)]),
            ("module", [sys.executable, "-m", "queuectl.dashboard", "--host", host,
                        "--port", str(port)]),
            ("up", program("queuectl") + ["up", "--http", f"{host}:{port}", "--bind",
                                          f"tcp://127.0.0.1:{free_port()}"])):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60,
                                check=False)
        assert result.returncode == 2, (name, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and result.stdout == "", (name, result)
        assert "QUEUECTL_DASHBOARD_TOKEN" in result.stderr and "at least 16" in result.stderr
        assert "secrets.token_urlsafe" in result.stderr  # how to make a good one
        assert "\x1b" not in result.stderr  # nor the token itself, which stays secret
        assert len(token.strip()) < 4 or token.strip() not in result.stderr
    # the same through --token
    result = run_cli(broker, "dashboard", "--host", host, "--port", str(port), "--token", token,
                     env={k: v for k, v in env.items() if k != "QUEUECTL_DASHBOARD_TOKEN"})
    assert result.returncode == 2 and "--token" in result.stderr and "at least 16" in result.stderr


def test_python_m_queuectl_dashboard_with_port_0_reports_the_port_it_got(procs, broker):
    page = procs.start([sys.executable, "-m", "queuectl.dashboard", "--port", "0",
                        "--broker", broker.endpoint, "--token", "tok"], "module.log",
                       env=broker.env())
    log = Path(page.log_path)
    line = wait_until(lambda: re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text()), 30,
                      message="the stats page to say where it listens")
    base = f"http://127.0.0.1:{line.group(1)}"
    assert "token required" in log.read_text()
    assert fetch(base + "/api/stats")[0] == 401
    request = urllib.request.Request(base + "/api/stats",
                                     headers={"Authorization": "Bearer tok"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["agents"] == 0
    assert stop(page, signal.SIGINT) == 0


# --- queuectl up ------------------------------------------------------------------------

def up_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "up-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("QUEUECTL_BROKER", "QUEUECTL_DASHBOARD_TOKEN")}
    return {**env, "QUEUECTL_HOME": str(home)}


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


@pytest.mark.timeout(120)
def kill_all(pids: list[int]) -> None:
    """Teardown: the children of `up` that this test saw (their own sessions)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_queuectl_up_runs_the_stats_page_and_stops_it(procs, tmp_path):
    endpoint, port = f"tcp://127.0.0.1:{free_port()}", free_port()
    env = up_env(tmp_path)
    up = procs.start(program("queuectl") + ["up", "--agents", "1", "--bind", endpoint,
                                            "--http", f"127.0.0.1:{port}"], "up.log", env=env)
    log = Path(up.log_path)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: "QueueCTL is up" in log.read_text(), 60, message="queuectl up")
    assert f"stats page {base}/" in log.read_text()
    children = children_of(up.pid)
    try:
        assert fetch(base + "/")[0] == 200
        env["QUEUECTL_BROKER"] = endpoint
        result = run_cli(None, "enqueue", '{"id": "hello", "command": "echo hello"}', env=env)
        assert result.returncode == 0, result.stderr

        def page_shows_it_completed() -> bool:
            tree = parse(fetch(base + "/")[2])
            rows = job_rows(tree)
            return "hello" in rows and counter(tree, "count-completed") == 1 and \
                counter(tree, "count-agents") == 1
        wait_until(page_shows_it_completed, 30, interval=0.2, message="the page to show it")
        assert stop(up, signal.SIGINT, 60) == 0
        text = log.read_text()
        assert "Traceback" not in text and "warning" not in text
        assert nobody_listens(port)
        wait_until(lambda: not any(pid_alive(pid) for pid in children), 10,
                   message="every child to exit")
    finally:
        kill_all(children)


@pytest.mark.timeout(120)
def test_queuectl_up_keeps_running_without_the_page_when_its_port_is_taken(procs, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = up_env(tmp_path)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = procs.start(program("queuectl") + ["up", "--agents", "1", "--bind", endpoint,
                                                "--http", f"127.0.0.1:{port}"], "up.log",
                         env=env)
        log = Path(up.log_path)
        wait_until(lambda: "QueueCTL is up" in log.read_text(), 60, message="queuectl up")
        children = children_of(up.pid)
        try:
            warnings = [line for line in log.read_text().splitlines() if "warning" in line]
            assert warnings == [
                (f"queuectl: warning: the stats page could not listen on 127.0.0.1:{port} "
                 "(address in use); running without it \u2014 choose another with "
                 "--http HOST:PORT")]
            ready = next(line for line in log.read_text().splitlines() if "is up" in line)
            assert "stats page" not in ready
            env["QUEUECTL_BROKER"] = endpoint
            result = run_cli(None, "enqueue", '{"id": "still", "command": "true"}', env=env)
            assert result.returncode == 0, result.stderr
            with Client(endpoint) as qc:
                assert qc.wait("still", 30)["state"] == "completed"
            assert up.poll() is None
            assert stop(up, signal.SIGINT, 60) == 0
            assert "Traceback" not in log.read_text()
        finally:
            kill_all(children)
