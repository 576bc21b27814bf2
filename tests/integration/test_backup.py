"""``queuectl-broker backup PATH``: a consistent copy of a running broker's store,
and a broker started on that copy (the restore) serves the same jobs."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from harness import Broker, program

pytestmark = pytest.mark.integration


def backup(broker: Broker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(program("queuectl-broker") + ["backup", *args], capture_output=True,
                          text=True, timeout=60, env=broker.env())


def test_a_backup_of_a_running_broker_restores_its_jobs(broker, start_agent, procs, tmp_path):
    start_agent(count=2)
    with broker.client() as qc:
        done = [qc.enqueue({"command": f"echo {n}"})["id"] for n in range(20)]
        for job_id in done:
            qc.wait(job_id, timeout=20)
        qc.enqueue({"id": "later", "command": "true", "delay": "1h"})
        qc.config_set("max_retries", 7)
        # A backup while the broker keeps writing (a batch being drained).
        qc.enqueue_many([{"command": "true"} for _ in range(500)])
        copy = tmp_path / "queue-backup.db"
        result = backup(broker, str(copy))  # --db defaults to $QUEUECTL_HOME/queue.db
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Backed up {broker.db} to {copy} (")
        # Jobs' commands and environments are for the broker's user only.
        for path in (broker.db, Path(f"{broker.db}-wal"), copy):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert broker.proc.poll() is None
        snapshot_jobs = int(result.stdout.rsplit("(", 1)[1].split()[0])
        assert snapshot_jobs == 521  # everything enqueued before it started

    restored_home = tmp_path / "restored"
    restored_home.mkdir()
    copy.rename(restored_home / "queue.db")
    restored = Broker(procs, restored_home).start()
    with restored.client() as qc:
        assert qc.get("later")["state"] == "pending"
        assert all(qc.get(job_id)["state"] == "completed" for job_id in done)
        assert qc.config_get("max_retries") == 7
        assert sum(qc.status()["counts"].values()) == 521


@pytest.mark.parametrize("where, message", [
    ("store", "is the store itself"),
    ("nowhere", "does not exist"),
])
def test_a_backup_never_overwrites_the_store(broker, tmp_path, where, message):
    target = str(broker.db) if where == "store" else str(tmp_path / "no" / "dir" / "b.db")
    result = backup(broker, target, "--db", str(broker.db))
    assert result.returncode == 2 and message in result.stderr
    assert broker.answers()
