"""The Python client API of QueueCTL: the one code path that talks to a broker.

The CLI and the stats page are thin layers over it::

    from queuectl.client import Client

    with Client("tcp://127.0.0.1:5555") as qc:
        job = qc.enqueue({"command": "echo hello"})
        done = qc.wait(job["id"], timeout=30)
        print(done["state"], done["exit_code"])

Every method raises a subclass of :class:`QueueError`, whose ``exit_code``
is the one the CLI uses: 2 invalid input, 3 no broker answered, 1 otherwise.
``wait``, ``logs(follow=True)`` and ``stop_agents(wait=True)`` ride out a
broker restart. The transport (timeouts, reconnection) is in
``queuectl.transport``.
"""

from __future__ import annotations

import builtins
import functools
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from queuectl.proto import config as config_keys
from queuectl.proto import jobspec
from queuectl.proto.states import TERMINAL_STATES

from . import streaming
from .transport import (
    BrokerError,
    BrokerUnreachable,
    Conflict,
    Connection,
    InvalidInput,
    NotFound,
    ProtocolMismatch,
    QueueError,
    Refused,
    Unavailable,
    default_endpoint,
    default_timeout,
    size_allowance,
)

__all__ = [
    "BrokerError", "BrokerUnreachable", "Client", "Conflict", "InvalidInput", "LogChunk",
    "NotFound", "ProtocolMismatch", "QueueError", "Refused", "Unavailable", "default_endpoint",
    "default_timeout",
]

HOLD = 10.0  # seconds the broker may park a waiting request (wait, logs --follow)
DLQ_RETRY_ALL_EXTRA = 120.0  # retrying every dead job touches an unknown number of rows


@dataclass(frozen=True)
class LogChunk:
    """Output of a job: ``stream`` is 1 (stdout) or 2 (stderr); ``skipped`` counts
    bytes before this chunk that were not kept (the store keeps the last ones)."""

    stream: int
    data: bytes
    skipped: int = 0


class Client:
    def __init__(self, endpoint: str | None = None, timeout: float | None = None, *,
                 key: str | None = None, broker_key: str | None = None):
        """``key`` and ``broker_key`` are CURVE key files (this client's
        ``.key_secret`` and the broker's ``broker.key``); by default
        QUEUECTL_KEY and QUEUECTL_BROKER_KEY, else those in $QUEUECTL_HOME/keys."""
        self._conn = Connection(endpoint, timeout, key=key, broker_key=broker_key)
        self.endpoint, self.timeout = self._conn.endpoint, self._conn.timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def call(self, op: str, hold: float = 0.0, extra: float = 0.0, **args: Any) -> Any:
        """Send one admin request (declared in queuectl/proto/ops.py) and return its result."""
        return self._conn.call(op, hold=hold, extra=extra, **args)

    # --- jobs -------------------------------------------------------------------

    @staticmethod
    def _check(job: Any, label: str | None = None) -> dict[str, Any]:
        try:
            return jobspec.validate(job)
        except jobspec.SpecError as exc:
            raise InvalidInput(f"{label}: {exc}" if label else str(exc)) from None

    def enqueue(self, job: dict[str, Any]) -> dict[str, Any]:
        """Add one job; returns ``{"id", "state", "run_at"}``."""
        return self.call("enqueue", job=self._check(job))

    def enqueue_many(self, jobs: Iterable[dict[str, Any]], names: Iterable[str] | None = None,
                     on_ids: Callable[[list[str]], None] | None = None) -> dict[str, Any]:
        """Add every job or none; returns ``{"enqueued": n, "ids": [...]}``.

        ``jobs`` may be any iterable (a generator): it is read as it is sent, in
        chunks (queuectl/streaming.py), so the broker keeps serving others
        during a huge batch. ``names`` label the jobs in error messages (the CLI
        passes line numbers). With ``on_ids``, the ids go to it a chunk at a
        time, in order, and ``ids`` is empty: the caller need not hold them all.
        """
        ids: list[str] = []
        labels = names if names is not None else (f"job {n}" for n in itertools.count(1))
        count = streaming.enqueue_all(self._conn, self._check, jobs, labels,
                                       on_ids or ids.extend)
        return {"enqueued": count, "ids": ids}

    def get(self, job_id: str) -> dict[str, Any]:
        """One job, with its ``attempts_log``."""
        return self.call("get", id=job_id)

    def list(self, state: str | None = None, queue: str | None = None,
             limit: int = 100, search: str | None = None) -> list[dict[str, Any]]:
        """Jobs, newest first; ``search`` matches a part of the id or command, any case."""
        return self.call("list", extra=size_allowance(limit), state=state, queue=queue,
                         limit=limit, search=search)

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def metrics(self) -> dict[str, Any]:
        """Counters and a duration histogram since the broker started, and completed
        and failed attempts per minute over the last hour (see the README)."""
        return self.call("metrics")

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job is completed, dead or canceled; returns the job.

        Raises TimeoutError when ``timeout`` seconds pass first. The broker
        answers the moment the job ends (no polling).
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def attempt() -> Any:
            hold = HOLD if deadline is None else max(0.0, min(HOLD, deadline - time.monotonic()))
            return self.call("wait", hold=hold, id=job_id)

        while True:
            result = self._conn.survive_restarts(attempt, deadline)
            if result["done"]:
                return result["job"]
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {result['job']['state']}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job; a running one is killed first. Returns ``{"id", "state"}``."""
        return self.call("cancel", hold=HOLD + 20, id=job_id)

    def logs(self, job_id: str, follow: bool = False) -> Iterator[LogChunk]:
        """Output of the job's latest attempt; with ``follow``, until that attempt ends."""
        after, attempt = [0, 0], None
        while True:
            args: dict[str, Any] = {"id": job_id, "after": after}
            if attempt is not None:
                args["attempt"] = attempt
            if follow:
                result = self._conn.survive_restarts(
                    functools.partial(self.call, "logs", hold=HOLD, **args))
            else:
                result = self.call("logs", **args)
            if result["attempt"] != attempt:
                attempt, after = result["attempt"], [0, 0]
            for stream, offset, data in result["chunks"]:
                skipped = max(0, offset - after[stream - 1])
                after[stream - 1] = offset + len(data)
                yield LogChunk(stream, data, skipped)
            if result["chunks"]:
                continue
            if not follow or result["done"] or (result["attempt"] is None
                                                and result["state"] in TERMINAL_STATES):
                return

    # --- the dead-letter queue, config, agents ---------------------------------

    def dlq_list(self, limit: int | None = None) -> builtins.list[dict[str, Any]]:
        return self.call("dlq_list", extra=size_allowance(limit or 0), limit=limit)

    def dlq_retry(self, job_ids: builtins.list[str] | None = None) -> builtins.list[str]:
        """Move dead jobs back to pending with attempts reset; None retries them all."""
        if job_ids is None:
            return self.call("dlq_retry", extra=DLQ_RETRY_ALL_EXTRA, all=True)["retried"]
        job_ids = list(job_ids)
        return self.call("dlq_retry", extra=size_allowance(len(job_ids)), ids=job_ids)["retried"]

    def config_show(self) -> dict[str, Any]:
        return self.call("config_show")

    def config_get(self, key: str) -> Any:
        key = self._key(key)
        return self.call("config_get", key=key)[key]

    def config_set(self, key: str, value: Any) -> Any:
        key = self._key(key)
        try:
            value = config_keys.parse_value(key, value)
        except config_keys.ConfigError as exc:
            raise InvalidInput(str(exc)) from None
        return self.call("config_set", key=key, value=value)[key]

    @staticmethod
    def _key(key: str) -> str:
        try:
            return config_keys.normalize_key(key)
        except config_keys.ConfigError as exc:
            raise InvalidInput(str(exc)) from None

    def agents(self) -> builtins.list[dict[str, Any]]:
        return self.call("agents")

    def stop_agents(self, wait: bool = True) -> builtins.list[str]:
        """Ask every agent to stop gracefully; with ``wait``, return once they exited."""
        ids = self.call("stop_agents")["stopping"]
        while wait and ids:
            result = self._conn.survive_restarts(
                lambda: self.call("wait_agents", hold=HOLD, ids=ids))
            if not result["remaining"]:
                break
        return ids

    # --- queues -------------------------------------------------------------------

    def queues(self) -> builtins.list[dict[str, Any]]:
        """Queues with a rule or unfinished jobs: name, paused, limit, pending, processing."""
        return self.call("queue_list")

    def queue_pause(self, name: str) -> dict[str, Any]:
        """No job of ``name`` starts until ``queue_resume``; running ones go on."""
        return self.call("queue_pause", name=name)

    def queue_resume(self, name: str) -> dict[str, Any]:
        return self.call("queue_resume", name=name)

    def queue_limit(self, name: str, limit: int | None) -> dict[str, Any]:
        """At most ``limit`` jobs of ``name`` leased at once across all agents;
        None removes the limit."""
        return self.call("queue_limit", name=name, limit=limit)

    def ping(self) -> dict[str, Any]:
        return self.call("ping")
