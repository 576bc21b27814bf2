"""Run mypy on QueueCTL under its import names (queuectl.proto, queuectl.broker, ...).

Import names map to source directories through [tool.setuptools.package-dir] in
pyproject.toml (queuectl.proto is proto/), and the editable install serves that
map with an import hook. mypy reads files and never imports, so it cannot follow
the hook (pypa/setuptools#3518). This script builds the import layout as a tree
of symlinks, build/typecheck/queuectl/..., from that same table (one source of
truth), runs mypy with pyproject.toml's [tool.mypy] (whose mypy_path holds the
tree), and prints mypy's report with the real file names (proto/codec.py, not
build/typecheck/queuectl/proto/codec.py).

Usage: .venv/bin/python .ci/typecheck.py [mypy arguments]
With no arguments it checks the package and the tests, as CI does.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"
TREE_PATH = re.compile(r"^(build/typecheck/[^:\s]+\.pyi?)(?=:)")


def build_tree() -> None:
    """One symlink per mapped package; a package that holds mapped subpackages
    (queuectl holds queuectl.proto) is a real directory of links to its own files."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    table: dict[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    for name in sorted(table):  # a parent sorts before its children
        target = TREE.joinpath(*name.split("."))
        source = ROOT / table[name]
        target.parent.mkdir(parents=True, exist_ok=True)
        if not any(other.startswith(name + ".") for other in table):
            target.symlink_to(source, target_is_directory=True)
            continue
        target.mkdir()
        for entry in source.iterdir():
            if entry.name != "__pycache__" and f"{name}.{entry.name}" not in table:
                (target / entry.name).symlink_to(entry)


def real_name(line: str) -> str:
    match = TREE_PATH.match(line)
    if match is None:
        return line
    real = (ROOT / match.group(1)).resolve().relative_to(ROOT)
    return str(real) + line[match.end():]


def main(argv: list[str]) -> int:
    os.chdir(ROOT)  # mypy finds pyproject.toml here, and reports paths relative to it
    build_tree()
    # The tree as a directory (not -p queuectl), so the tests can go in the same run.
    stdout, stderr, status = api.run(argv or [str(TREE.relative_to(ROOT) / "queuectl"), "tests"])
    sys.stdout.write("".join(real_name(line) for line in stdout.splitlines(keepends=True)))
    sys.stderr.write(stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
