"""The stats page's line to the broker: one client per server thread.

ZeroMQ sockets are not thread-safe and waitress serves requests from a pool of
threads, so each thread keeps its own ``Client``. A client whose broker went
away is dropped and made again on the next request, so the page recovers by
itself when the broker returns.
"""

from __future__ import annotations

import threading
from typing import Any

from queuectl.client import (
    BrokerError,
    BrokerUnreachable,
    Client,
    InvalidInput,
    Unavailable,
)

# Errors after which the connection may hold a half-finished exchange.
_RESET = (BrokerUnreachable, Unavailable, BrokerError)


class Source:
    """Everything the page asks the broker, through a per-thread ``Client``."""

    def __init__(self, endpoint: str, timeout: float = 2.0):
        self.endpoint = endpoint
        self.timeout = timeout
        self._local = threading.local()

    def client(self) -> Client:
        qc = getattr(self._local, "client", None)
        if qc is None:
            qc = self._local.client = Client(self.endpoint, timeout=self.timeout)
        return qc

    def reset(self) -> None:
        qc = getattr(self._local, "client", None)
        if qc is not None:
            qc.close()
            self._local.client = None

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``Client.<method>(*args, **kwargs)``; a broken connection is dropped on error."""
        try:
            return getattr(self.client(), method)(*args, **kwargs)
        except _RESET:
            self.reset()
            raise

    # --- what the views need ------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def metrics(self) -> dict[str, Any] | None:
        """The broker's counters and histograms; None from a broker too old to have them."""
        try:
            return self.call("metrics")
        except InvalidInput:
            return None

    def overview(self, state: str | None, queue: str | None, search: str | None,
                 limit: int, dlq_limit: int = 50) -> dict[str, Any]:
        """Everything on the main page, asked in one go."""
        return {
            "status": self.status(),
            "metrics": self.metrics(),
            "agents": self.call("agents"),
            "jobs": self.call("list", state=state, queue=queue, limit=limit, search=search),
            "dlq": self.call("dlq_list", dlq_limit),
        }

    def logs(self, job_id: str, attempt: int | None, out: int, err: int,
             token: int | None = None) -> dict[str, Any]:
        """The latest attempt's output after the offsets; with ``token``, that attempt's."""
        args: dict[str, Any] = {"id": job_id, "after": [out, err]}
        if attempt is not None:
            args["attempt"] = attempt
        if token is not None:
            args["token"] = token
        return self.call("call", "logs", **args)
