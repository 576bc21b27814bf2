"""A plain ``queuectl enqueue`` skips the typer app (cli/enqueue.py) and must behave
exactly as the full CLI does: same output, same errors, same exit codes.

Each command line runs twice in-process against one real broker through
``main``: as it is (the fast path when the form is plain), and with the fast
path turned off (the typer app), with different job ids so both can succeed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from queuectl.cli import enqueue as fast_enqueue
from queuectl.cli.main import main

pytestmark = pytest.mark.integration


def shape(out: str) -> object:
    """A --json document without what differs between two runs (time, generated ids)."""
    try:
        document = json.loads(out)
    except ValueError:
        return out
    if isinstance(document, dict):
        document.pop("run_at", None)
        if "ids" in document:
            document["ids"] = len(document["ids"])
    return document


def outcome(capsys, call, args: list[str]) -> tuple[int, str, str]:
    code = call(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("form", [
    ["enqueue", '{"id": "ID", "command": "true"}'],
    ["enqueue", "--json", '{"id": "ID", "command": "true"}'],
    ["enqueue", '{"id": "ID", "command": "true"}', "--json"],
    ["--broker", "EP", "enqueue", '{"id": "ID", "command": "true"}'],
    ["enqueue", "--broker=EP", '{"id": "ID", "command": "true"}'],
    ["enqueue", "--broker", "EP", "--file", "FILE"],
    ["enqueue", "-f", "FILE", "--json"],
    ["enqueue", "--file=FILE"],
    ["enqueue", '{"id": "ID", "command": "true", "nope": 1}'],
    ["enqueue", "{not json"],
    ["enqueue", '{"id": "ID", "command": "true"}', "--file", "FILE"],
    ["enqueue"],
    ["enqueue", "--file", "MISSING"],
    ["enqueue", "--broker", "tcp://127.0.0.1:1", '{"id": "ID", "command": "true"}'],
], ids=lambda form: " ".join(form))
def test_the_fast_path_answers_as_the_full_cli(broker, tmp_path, capsys, monkeypatch, form):
    monkeypatch.setenv("QUEUECTL_BROKER", broker.endpoint)
    monkeypatch.setenv("QUEUECTL_TIMEOUT", "1")
    results = []
    def through_typer(args: list[str]) -> int:
        with monkeypatch.context() as patch:
            patch.setattr(fast_enqueue, "fast_main", lambda argv: None)
            return main(args)

    for name, call in (("alpha", main), ("bravo", through_typer)):
        jobs = tmp_path / f"{name}.jsonl"
        jobs.write_text(json.dumps({"id": f"{name}-file", "command": "true"}) + "\n\n"
                        + json.dumps({"command": "true"}) + "\n")
        args = [arg.replace("ID", f"{name}-job").replace("EP", broker.endpoint)
                .replace("MISSING", str(tmp_path / "missing")).replace("FILE", str(jobs))
                for arg in form]
        code, out, err = outcome(capsys, call, args)
        results.append((code, out.replace(name, "NAME"), err.replace(name, "NAME")))
    fast, full = [(code, shape(out), err) for code, out, err in results]
    assert fast == full
    assert fast[0] in (0, 1, 2, 3)


def test_a_plain_enqueue_does_not_load_typer_and_help_still_works(broker):
    code = ("import sys; from queuectl.cli.main import main; "
            f"rc = main(['--broker', {broker.endpoint!r}, 'enqueue', "
            "'{\"id\": \"quick\", \"command\": \"true\"}']); "
            "print(rc, 'typer' in sys.modules, 'rich' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.splitlines() == ["Enqueued job: quick", "0 False False"], result
    helped = subprocess.run([sys.executable, "-m", "queuectl.cli.main", "enqueue", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--file" in helped.stdout
