"""The layout is the architecture: who may import whom.

proto/ depends on the standard library and msgpack only; agents, the CLI and
the client speak to the broker over the wire and never import broker/.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports(folder: str) -> list[tuple[str, str]]:
    """(file, absolute module name) for every import in the folder's Python files."""
    found = []
    paths = [ROOT / folder] if folder.endswith(".py") else sorted((ROOT / folder).rglob("*.py"))
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path.name, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((path.name, node.module))
    return found


@pytest.mark.parametrize("folder", ["agent", "cli", "queuectl/client.py"])
def test_clients_of_the_broker_never_import_it(folder):
    offenders = [(f, mod) for f, mod in imports(folder) if mod.startswith("queuectl.broker")]
    assert offenders == []


def test_proto_depends_on_the_standard_library_and_msgpack_only():
    allowed = set(sys.stdlib_module_names) | {"msgpack"}
    offenders = [(f, mod) for f, mod in imports("proto") if mod.split(".")[0] not in allowed]
    assert offenders == []


def test_only_the_broker_opens_the_database():
    for folder in ("agent", "cli", "proto", "queuectl"):
        offenders = [(f, mod) for f, mod in imports(folder)
                     if mod.split(".")[0] in ("apsw", "sqlite3")]
        assert offenders == [], folder
