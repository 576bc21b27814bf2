"""The fault suite's witness: a side-effect ledger written by the jobs, and an audit.

Every job runs ``ledger.sh`` (see ``Ledger.command``). It takes an exclusive
``flock`` on a file named after its job id for the whole run, so a second
execution of the same job that starts while the first still runs cannot take
it: it writes ``overlap ID TOKEN`` and exits 75. A run that got the lock writes
``start ID TOKEN`` and, if it was not killed, ``end ID TOKEN``. The lock is
held by every process of the job, so it is released only when the whole
process group is gone: "no overlap" means no two executions of one job ever
ran at the same time, whatever the broker believed.

``audit`` then checks the whole store through the broker, as the issue asks:
every acknowledged job is present; every job is final or legitimately
pending; no job is ``processing`` without a live agent holding its lease; and
every completed job's winning attempt has a ``start`` and an ``end`` line.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINAL = {"completed", "dead", "canceled"}
WAITING = {"pending", "failed"}  # failed = a retry is scheduled

SCRIPT = """\
#!/bin/sh
# ledger.sh SECONDS: one execution of a fault-suite job.
exec 9>>"{locks}/$QUEUECTL_JOB_ID"
if ! flock -n 9; then
    echo "overlap $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT_ID" >> "{ledger}"
    exit 75
fi
echo "start $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT_ID" >> "{ledger}"
sleep "${{1:-0}}"
echo "end $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT_ID" >> "{ledger}"
"""


@dataclass
class Ledger:
    root: Path
    path: Path = field(init=False)
    locks: Path = field(init=False)
    script: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "ledger.log"
        self.locks = self.root / "locks"
        self.locks.mkdir(exist_ok=True)
        self.script = self.root / "ledger.sh"
        self.script.write_text(SCRIPT.format(locks=self.locks, ledger=self.path))
        self.path.touch()

    def command(self, seconds: float = 0.0) -> str:
        return f"sh {shlex.quote(str(self.script))} {seconds:g}"

    def job(self, job_id: str, seconds: float = 0.0, **fields: Any) -> dict[str, Any]:
        return {"id": job_id, "command": self.command(seconds), **fields}

    def lines(self) -> list[tuple[str, str, int]]:
        out = []
        for raw in self.path.read_text().splitlines():
            parts = raw.split()
            if len(parts) == 3:
                out.append((parts[0], parts[1], int(parts[2])))
        return out

    def overlaps(self) -> list[tuple[str, int]]:
        return [(job_id, token) for kind, job_id, token in self.lines() if kind == "overlap"]


@dataclass
class Audit:
    jobs_in: int
    states: Counter
    missing: list[str]
    not_settled: list[str]
    processing_without_lease: list[str]
    overlaps: list[tuple[str, int]]
    unwitnessed: list[str]   # completed, but the winning attempt never wrote start+end
    executions: int          # "start" lines: how many times commands began

    @property
    def completed(self) -> int:
        return self.states.get("completed", 0)

    @property
    def lost(self) -> int:
        return len(self.missing)

    def problems(self) -> list[str]:
        found = []
        for name in ("missing", "not_settled", "processing_without_lease", "overlaps",
                     "unwitnessed"):
            value = getattr(self, name)
            if value:
                found.append(f"{name}: {len(value)} e.g. {value[:5]}")
        return found

    def summary(self) -> str:
        return (f"jobs in {self.jobs_in}, completed {self.completed}, lost {self.lost}, "
                f"overlapping executions {len(self.overlaps)}, executions {self.executions}, "
                f"states {dict(self.states)}")


def all_jobs(qc, expected: int) -> dict[str, dict[str, Any]]:
    """Every job the broker knows, by id (one list call per state)."""
    found: dict[str, dict[str, Any]] = {}
    for state in sorted(FINAL | WAITING | {"processing"}):
        for job in qc.list(state=state, limit=expected + 1000):
            found[job["id"]] = job
    return found


def audit(broker, acknowledged: list[str], ledger: Ledger, *, settled: bool = True) -> Audit:
    """Check the whole store against what was acknowledged and what the jobs witnessed.

    ``settled``: every job must be final (the scenario waited for the queue to
    drain); otherwise pending and failed jobs are legitimate too.
    """
    with broker.client(timeout=30) as qc:
        jobs = all_jobs(qc, len(acknowledged))
        live_agents = {agent["id"] for agent in qc.agents()}
        processing_without_lease = []
        for job in jobs.values():
            if job["state"] == "processing" and job.get("agent") not in live_agents:
                processing_without_lease.append(job["id"])
        lines = ledger.lines()
        ended = {(job_id, token) for kind, job_id, token in lines if kind == "end"}
        started = {(job_id, token) for kind, job_id, token in lines if kind == "start"}
        unwitnessed = []
        for job in jobs.values():
            if job["state"] == "completed":
                winner = qc.get(job["id"])["attempts_log"][-1]["token"]
                if (job["id"], winner) not in ended or (job["id"], winner) not in started:
                    unwitnessed.append(job["id"])
    allowed = FINAL if settled else FINAL | WAITING | {"processing"}
    return Audit(
        jobs_in=len(acknowledged),
        states=Counter(job["state"] for job in jobs.values()),
        missing=[job_id for job_id in acknowledged if job_id not in jobs],
        not_settled=[job_id for job_id, job in jobs.items() if job["state"] not in allowed],
        processing_without_lease=processing_without_lease,
        overlaps=ledger.overlaps(),
        unwitnessed=unwitnessed,
        executions=sum(1 for kind, _, _ in lines if kind == "start"),
    )


def report(scenario: str, result: Audit, injected: str, recovery_sec: float | None,
           **extra: Any) -> dict[str, Any]:
    """Print one ``FAULT-REPORT {json}`` line (run pytest with ``-s`` to see it) and append
    it to the file named by ``QUEUECTL_FAULT_REPORT``, which docs/RELIABILITY.md is built from."""
    import json
    import os

    row = {"scenario": scenario, "injected": injected, "jobs_in": result.jobs_in,
           "completed": result.completed, "lost": result.lost,
           "overlapping": len(result.overlaps), "executions": result.executions,
           "recovery_sec": None if recovery_sec is None else round(recovery_sec, 2), **extra}
    line = "FAULT-REPORT " + json.dumps(row, sort_keys=True)
    print(line)
    target = os.environ.get("QUEUECTL_FAULT_REPORT")
    if target:
        with open(target, "a") as handle:
            handle.write(line + "\n")
    return row
