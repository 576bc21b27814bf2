"""The Python client API of QueueCTL: the one code path that talks to a broker.

The CLI and the stats page are thin layers over it::

    from queuectl.client import Client

    with Client("tcp://127.0.0.1:5555") as qc:
        job = qc.enqueue({"command": "echo hello"})
        done = qc.wait(job["id"], timeout=30)
        print(done["state"], done["exit_code"])

Every method raises a subclass of :class:`QueueError`, whose ``exit_code``
is the one the CLI uses: 2 invalid input, 3 no broker answered, 1 otherwise.
The socket is a DEALER with request ids (the guide's Lazy Pirate client): a
reply that does not come within ``timeout`` seconds closes the socket, so a
late reply can never be mistaken for the answer to a later request.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import zmq

from queuectl.proto import MAX_FRAME, VERSION, ProtocolError, VersionMismatch, decode, encode
from queuectl.proto import config as config_keys
from queuectl.proto import jobspec
from queuectl.proto import messages as m
from queuectl.proto.states import TERMINAL_STATES

DEFAULT_BROKER = "tcp://127.0.0.1:5555"
DEFAULT_TIMEOUT = 5.0
HOLD = 10.0  # seconds the broker may hold a waiting request (wait, logs --follow)


class QueueError(Exception):
    exit_code = 1


class InvalidInput(QueueError):
    exit_code = 2


class NotFound(QueueError):
    pass


class Conflict(QueueError):
    pass


class BrokerUnreachable(QueueError):
    exit_code = 3


class ProtocolMismatch(QueueError):
    pass


class BrokerError(QueueError):
    pass


_ERRORS = {"invalid": InvalidInput, "not_found": NotFound, "conflict": Conflict,
           "version": ProtocolMismatch}


@dataclass(frozen=True)
class LogChunk:
    """Output of a job: ``stream`` is 1 (stdout) or 2 (stderr); ``skipped`` counts
    bytes before this chunk that were not kept (the store keeps the last ones)."""

    stream: int
    data: bytes
    skipped: int = 0


def default_endpoint() -> str:
    return os.environ.get("QUEUECTL_BROKER") or DEFAULT_BROKER


class Client:
    def __init__(self, endpoint: str | None = None, timeout: float | None = None):
        self.endpoint = endpoint or default_endpoint()
        if timeout is None:
            timeout = float(os.environ.get("QUEUECTL_TIMEOUT", DEFAULT_TIMEOUT))
        self.timeout = timeout
        self._ctx = zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._ids = itertools.count(1)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    # --- transport ------------------------------------------------------------

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
            if "[" in self.endpoint:
                sock.setsockopt(zmq.IPV6, 1)
            try:
                sock.connect(self.endpoint)
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                raise InvalidInput(f"bad broker endpoint {self.endpoint!r}: {exc}") from None
            self._socket = sock
        return self._socket

    def call(self, op: str, hold: float = 0.0, **args: Any) -> Any:
        """Send one admin request and return its result (or raise its error)."""
        if hold:
            args["hold"] = hold
        req_id = next(self._ids)
        frame = encode(m.Request(req_id=req_id, op=op, args=args))
        if len(frame) > MAX_FRAME:
            raise InvalidInput(f"the request is {len(frame)} bytes, more than the {MAX_FRAME} "
                               "bytes one message may carry; split it into smaller batches")
        sock = self._connect()
        sock.send(frame)
        deadline = time.monotonic() + self.timeout + hold
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1):
                self.close()
                raise BrokerUnreachable(
                    f"no broker answered at {self.endpoint} within {self.timeout:g}s "
                    "(is queuectl-broker running? set --broker or QUEUECTL_BROKER)")
            reply = self._decode(sock.recv())
            if isinstance(reply, m.Reply) and reply.req_id == req_id:
                if reply.ok:
                    return reply.result
                raise _ERRORS.get(reply.error_code, BrokerError)(reply.error or "broker error")

    def _decode(self, frame: bytes) -> Any:
        try:
            msg = decode(frame)
        except VersionMismatch as exc:
            raise ProtocolMismatch(f"the broker at {self.endpoint} speaks protocol version "
                                   f"{exc.peer_version!r}; this client speaks {VERSION}. "
                                   "Install matching QueueCTL versions.") from None
        except ProtocolError as exc:
            raise BrokerError(f"malformed reply from {self.endpoint}: {exc}") from None
        if isinstance(msg, m.Error):
            raise _ERRORS.get(msg.code, BrokerError)(msg.message)
        return msg

    # --- jobs -------------------------------------------------------------------

    @staticmethod
    def _check(job: Any, where: str = "") -> dict[str, Any]:
        try:
            return jobspec.validate(job)
        except jobspec.SpecError as exc:
            raise InvalidInput(f"{where}{exc}") from None

    def enqueue(self, job: dict[str, Any]) -> dict[str, Any]:
        """Add one job; returns ``{"id", "state", "run_at"}``."""
        return self.call("enqueue", job=self._check(job))

    def enqueue_many(self, jobs: Iterable[dict[str, Any]],
                     names: Iterable[str] | None = None) -> dict[str, Any]:
        """Add every job or none; returns ``{"enqueued": n, "ids": [...]}``.

        ``names`` label the jobs in error messages (the CLI passes line numbers).
        """
        jobs = list(jobs)
        labels = list(names) if names is not None else [f"job {n}" for n in range(1, len(jobs) + 1)]
        specs = [self._check(job, f"{label}: ") for job, label in zip(jobs, labels)]
        first: dict[str, str] = {}
        for spec, label in zip(specs, labels):
            if "id" in spec:
                if spec["id"] in first:
                    raise Conflict(f"{label}: id {spec['id']!r} appears twice in the batch "
                                   f"(first at {first[spec['id']]})")
                first[spec["id"]] = label
        return self.call("enqueue", jobs=specs)

    def get(self, job_id: str) -> dict[str, Any]:
        """One job, with its ``attempts_log``."""
        return self.call("get", id=job_id)

    def list(self, state: str | None = None, queue: str | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        return self.call("list", state=state, queue=queue, limit=limit)

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job is completed, dead or canceled; returns the job.

        Raises TimeoutError when ``timeout`` seconds pass first. The broker
        answers the moment the job ends (no polling).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            hold = HOLD if deadline is None else max(0.0, min(HOLD, deadline - time.monotonic()))
            result = self.call("wait", hold=hold, id=job_id)
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
            result = self.call("logs", hold=HOLD if follow else 0.0, **args)
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

    def dlq_list(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.call("dlq_list", limit=limit)

    def dlq_retry(self, job_ids: list[str] | None = None) -> list[str]:
        """Move dead jobs back to pending with attempts reset; None retries them all."""
        if job_ids is None:
            return self.call("dlq_retry", all=True)["retried"]
        return self.call("dlq_retry", ids=list(job_ids))["retried"]

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

    def agents(self) -> list[dict[str, Any]]:
        return self.call("agents")

    def stop_agents(self, wait: bool = True) -> list[str]:
        """Ask every agent to stop gracefully; with ``wait``, return once they exited."""
        ids = self.call("stop_agents")["stopping"]
        while wait and ids:
            if not self.call("wait_agents", hold=HOLD, ids=ids)["remaining"]:
                break
        return ids

    def ping(self) -> dict[str, Any]:
        return self.call("ping")
