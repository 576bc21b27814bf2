"""Fixtures for the stats page: a Flask test client on a real broker, and HTML helpers."""

from __future__ import annotations

import pytest

from harness import configure


@pytest.fixture
def quick(broker):
    """Short retry pauses so failing jobs reach the DLQ within seconds."""
    configure(broker, base_backoff=1, max_backoff=0.2)
    return broker


@pytest.fixture
def app(broker):
    from queuectl.dashboard.app import create_app

    app = create_app(broker.endpoint, timeout=1.0)
    app.testing = False  # errors must go through the page's own handlers, as in production
    return app


@pytest.fixture
def client(app):
    return app.test_client()
