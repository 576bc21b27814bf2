"""Fixtures: a broker per test, agents on demand, everything cleaned up."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

import harness
from harness import Agent, Broker, Processes

# Property tests draw the same examples on every run, so CI is repeatable; set
# HYPOTHESIS_PROFILE=explore to draw new ones (and keep what fails as a test).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(autouse=True, scope="session")
def _own_home(tmp_path_factory):
    """The test process never uses the developer's own QueueCTL home or keys
    (a client would speak CURVE to the tests' brokers)."""
    names = ("QUEUECTL_HOME", "QUEUECTL_KEY", "QUEUECTL_BROKER_KEY")
    saved = {name: os.environ.pop(name, None) for name in names}
    os.environ["QUEUECTL_HOME"] = str(tmp_path_factory.mktemp("queuectl-home"))
    yield
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


@pytest.fixture
def procs(tmp_path):
    owner = Processes(tmp_path)
    yield owner
    owner.cleanup()


@pytest.fixture
def broker(procs, tmp_path):
    """A running broker with a fresh store in a temporary QUEUECTL_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    return Broker(procs, home).start()


@pytest.fixture
def start_agent(procs, broker):
    """start_agent(count=2, labels=None, grace=None, wait=True) -> Agent for ``broker``:
    harness.start_agent, with each agent of the test named agent-1, agent-2, ..."""
    started = 0

    def start(count: int = 2, labels: dict[str, str] | None = None,
              grace: float | None = None, wait: bool = True) -> Agent:
        nonlocal started
        started += 1
        return harness.start_agent(procs, broker, count, labels=labels, grace=grace,
                                   name=f"agent-{started}", wait=wait)

    return start
