"""Unit-test fixtures: a real APSW store in a temporary file."""

from __future__ import annotations

import pytest

from queuectl.broker.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "queue.db"))
    yield s
    s.close()
