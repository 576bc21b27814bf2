"""Fixtures of the fault suite: network namespaces, always removed."""

from __future__ import annotations

import pytest

from faults import netns


@pytest.fixture
def topology(procs):
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    topo = netns.Topology()
    try:
        yield topo
    finally:
        procs.cleanup()  # first: no process may keep a namespace alive
        errors = topo.cleanup()
        assert errors == [] and topo.leftovers() == [], (errors, topo.leftovers())
