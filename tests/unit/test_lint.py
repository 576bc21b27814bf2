"""The code passes ruff and mypy (their settings are in pyproject.toml).

Run here, so the README's one test command checks them too. A finding fails
the test with the tool's own report, which names file, line and rule.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Everything the distribution ships, CI's own scripts, and the tests (benchmarks and
# the fault suite included).
LINTED = ["broker", "agent", "proto", "cli", "queuectl", ".ci", "tests"]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    result = run(str(BIN / "ruff"), "check", "--no-cache", *LINTED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_on_the_package_and_the_tests_finds_nothing():
    """.ci/typecheck.py with no arguments: the whole package with every strict flag
    (pyproject.toml), and tests/ at the tests' level (no annotations required,
    bodies checked). The helpers of faults/, dashboard/ and integration/ are
    imported by package name (faults.netns), so mypy finds them under tests/
    (mypy_path) without a second conftest module."""
    result = run(sys.executable, ".ci/typecheck.py")
    assert result.returncode == 0, result.stdout + result.stderr
