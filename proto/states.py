"""Job states, attempt outcomes, the error codes of admin replies, and key roles.

These are names shared by every component; the broker owns the transition
table that says which state changes are allowed (``broker/lifecycle.py``).
"""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    PENDING = "pending"        # waiting, possibly until run_at
    PROCESSING = "processing"  # leased to an agent
    COMPLETED = "completed"
    FAILED = "failed"          # an attempt failed; waiting for its retry time
    DEAD = "dead"              # retries exhausted: in the DLQ
    CANCELED = "canceled"


ALL_STATES = tuple(s.value for s in JobState)
TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.DEAD, JobState.CANCELED})


class Event(str, enum.Enum):
    """What the broker counts since it started (``metrics``; ``/metrics`` exports
    each as ``queuectl_jobs_<name>_total``)."""

    ENQUEUED = "enqueued"    # jobs enqueued
    COMPLETED = "completed"  # jobs completed
    FAILED = "failed"        # attempts failed (a job's last one too)
    DEAD = "dead"            # jobs moved to the DLQ
    CANCELED = "canceled"    # jobs canceled


class Outcome(str, enum.Enum):
    """How an attempt ended, as the agent reports it."""

    OK = "ok"                   # exit code 0
    EXIT = "exit"               # non-zero exit code
    SIGNAL = "signal"           # killed by a signal nobody asked for
    TIMEOUT = "timeout"         # killed at timeout_sec
    CANCELED = "canceled"       # killed because a user canceled it
    SPAWN_ERROR = "spawn_error" # could not start (bad cwd, bad env, ...)
    LEASE_LOST = "lease_lost"   # the agent lost the broker past its lease and killed it
    STOPPED = "stopped"         # the agent stopped and its grace period ran out


class ErrorCode(str, enum.Enum):
    """Error codes in admin replies; the CLI maps them to exit codes."""

    INVALID = "invalid"        # exit 2
    NOT_FOUND = "not_found"    # exit 1
    CONFLICT = "conflict"      # exit 1: duplicate id, wrong state for the action
    UNAVAILABLE = "unavailable"  # exit 1: the store cannot write right now
    PROTOCOL = "protocol"      # exit 1: a malformed frame
    VERSION = "version"        # exit 1: the peer speaks another protocol version
    INTERNAL = "internal"      # exit 1: a bug in the broker
    FORBIDDEN = "forbidden"    # exit 1: this peer's key does not allow the request
    HELLO_FIRST = "hello_first"  # to an agent the broker does not know: say Hello again


class Role(str, enum.Enum):
    """What a CURVE key may do (``queuectl keys``); each admin operation names
    the least role it needs (``queuectl/proto/ops.py``)."""

    ADMIN = "admin"    # everything (it could enqueue any command anyway)
    AGENT = "agent"    # only the agent protocol: run jobs
    READER = "reader"  # only requests that change nothing (the stats page)
