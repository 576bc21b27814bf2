"""Turn store dataclasses into the documents of the user contract."""

from __future__ import annotations

import math
from typing import Any

from queuectl.proto.timefmt import to_iso

from .store import Attempt, Job


def _duration(started: float | None, finished: float | None) -> float | None:
    if started is None or finished is None:
        return None
    seconds = finished - started
    return round(max(0.0, seconds), 6) if math.isfinite(seconds) else None


def job_view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "command": job.command,
        "state": job.state.value,
        "queue": job.queue,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_retries": job.max_retries,
        "timeout_sec": job.timeout_sec,
        "run_at": to_iso(job.run_at),
        "created_at": to_iso(job.created_at),
        "updated_at": to_iso(job.updated_at),
        "started_at": to_iso(job.started_at),
        "finished_at": to_iso(job.finished_at),
        "duration_sec": _duration(job.started_at, job.finished_at),
        "exit_code": job.exit_code,
        "last_error": job.last_error,
        "env": job.env,
        "cwd": job.cwd,
        "requires": job.requires,
        "agent": job.agent,
    }


def attempt_view(attempt: Attempt) -> dict[str, Any]:
    return {
        "attempt": attempt.number,
        "token": attempt.id,
        "agent": attempt.agent,
        "dispatched_at": to_iso(attempt.dispatched_at),
        "started_at": to_iso(attempt.started_at),
        "finished_at": to_iso(attempt.finished_at),
        "duration_sec": _duration(attempt.started_at, attempt.finished_at),
        "pid": attempt.pid,
        "exit_code": attempt.exit_code,
        "reason": attempt.reason,
        "late_result": attempt.late_result,
        "stale": attempt.stale,
    }


def dlq_view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "command": job.command,
        "reason": job.last_error,
        "attempts": job.attempts,
        "exit_code": job.exit_code,
        "dead_at": to_iso(job.finished_at if job.finished_at is not None else job.updated_at),
    }
