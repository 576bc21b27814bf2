"""Fault-injection suite, issue 3: a full disk, a read-only store and a locked store.

The guarantee under test: ``enqueue`` fails with one clear line and the
contract's exit code (1), nothing already stored is damaged (every stored job
reads back unchanged, ``PRAGMA integrity_check`` is ok, the per-state counts
agree with the jobs), the broker stays up, and once the condition clears it
works again WITHOUT a restart; a job that finished while the store could not
write keeps its result (the agent holds it until the broker acknowledges it).

How the faults are made real without touching the host's mounts:

* **Disk full**: a holder process (``unshare --mount``) mounts a 16 MiB tmpfs
  on the store's directory in a private mount namespace; the broker is started
  in that namespace with ``nsenter``, and the test fills the tmpfs with ``dd``
  (and deletes the filler) through ``nsenter`` too. Nothing outside the
  namespace sees the mount; it disappears with the holder at teardown.
* **Read-only, while running**: Linux refuses ``mount -o remount,ro`` (EBUSY)
  while a process has a file open for writing on that mount, and the broker
  always has its store open, so an administrator's remount can never happen
  under a running broker. What can happen is the kernel turning a filesystem
  read-only under it (ext4 ``errors=remount-ro``): its writes then fail with
  EROFS. The test gives the real broker exactly that, with strace's syscall
  fault injection (``pwrite64``/``fsync``/``fdatasync``/``ftruncate`` of the
  broker's main thread, the only thread that touches SQLite, return EROFS),
  and clears it by detaching strace.
* **Read-only, at start**: the broker is stopped, the tmpfs is really
  remounted ``ro``, a broker is started on it (it must refuse with one clear
  line), then the tmpfs is remounted ``rw`` and a broker starts on the intact
  store.
* **Locked**: the test opens the store with APSW and holds ``BEGIN EXCLUSIVE``
  for several seconds while an enqueue arrives and jobs run and finish.
* **A batch larger than the room left** (issue 13): 10,000 jobs in one
  request, or one job with 900 KiB of env on a nearly full disk, sent to a
  broker whose store is on an 8 MiB tmpfs. SQLite then rolls the whole
  transaction back on its own, which used to end the broker. And a 50,000-line
  file, streamed in chunks, whose chunk that fills the disk fails the file.
* **The store's files under a running broker** (issue 13): the store file is
  deleted, renamed, or replaced by another file (writes must be refused within
  a second, with one clear line); the WAL file is deleted while enqueues go on,
  then the broker is SIGKILLed (no acknowledged job may be lost).

Every failing enqueue is timed, and each scenario prints ``STORAGE-FAULT``
lines and one ``FAULT-REPORT {json}`` line (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import apsw
import pytest

import harness
from faults.ledger import Ledger, audit, report
from harness import Broker, Processes, program, run_cli, start_agent, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TMPFS_SIZE = "16m"
FAST = {"heartbeat_sec": 0.5, "lease_sec": 2.0, "kill_grace_sec": 1.0}
# A job whose result the broker could not store is resent by its agent every
# 5 heartbeats (2.5 s here); give it a few rounds.
REDELIVERY_DEADLINE = 20
ENQUEUE_DEADLINE = 30  # a failing enqueue must return within this (it has its own timeout)
LOCK_SEC = 8.0         # longer than the lease (2 s) and the broker's busy timeout (5 s)

need_root = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "nsenter", "mount")),
    reason="needs root and unshare/nsenter/mount to mount a tmpfs in a private mount namespace")
need_strace = pytest.mark.skipif(
    shutil.which("strace") is None,
    reason="needs strace (syscall fault injection) to make the store read-only under a live broker")

INTEGRITY = ("import apsw, sys\n"
             "c = apsw.Connection(sys.argv[1], flags=apsw.SQLITE_OPEN_READONLY)\n"
             "print(c.execute('PRAGMA integrity_check').fetchall()[0][0])\n")


# --- a store on a tmpfs in a private mount namespace ---------------------------------

class MountNamespace:
    """A private mount namespace (held by a sleeping process) with a tmpfs on ``root``."""

    def __init__(self, procs: Processes, root: Path, size: str = TMPFS_SIZE):
        self.root = root
        root.mkdir()
        self.holder = procs.start(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             (f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(root))}"
              " && exec sleep 3600")], "mount-namespace.log")

        def mounted() -> bool:
            if self.holder.poll() is not None:
                pytest.skip("cannot mount a tmpfs in a private mount namespace: "
                            + Path(self.holder.log_path).read_text(errors="replace").strip())
            with open(f"/proc/{self.holder.pid}/mountinfo") as handle:
                return any(f" {root} " in line and " tmpfs " in line for line in handle)

        wait_until(mounted, 10, message=f"a tmpfs on {root} in the namespace")

    def run(self, *argv: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the namespace."""
        result = subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "--", *argv],
                                capture_output=True, text=True, timeout=timeout, check=False)
        if check:
            assert result.returncode == 0, f"{argv} in the namespace: {result.stderr.strip()}"
        return result

    def available_bytes(self) -> int:
        out = self.run("stat", "-f", "-c", "%a %S", str(self.root)).stdout.split()
        return int(out[0]) * int(out[1])

    def fill(self, leave: int = 0) -> None:
        """Fill the tmpfs to the last byte (dd stops with ENOSPC), then give ``leave``
        bytes back."""
        filler = str(self.root / "filler")
        self.run("dd", "if=/dev/zero", f"of={filler}", "bs=64k", check=False)
        self.run("dd", "if=/dev/zero", f"of={filler}", "bs=4k", "oflag=append",
                 "conv=notrunc", check=False)
        assert self.available_bytes() == 0, "the tmpfs is not full after dd"
        if leave:
            self.run("truncate", "-s", f"-{leave}", filler)
            assert leave <= self.available_bytes() < leave + 64 * 1024

    def unfill(self) -> None:
        self.run("rm", "-f", str(self.root / "filler"))
        assert self.available_bytes() > 1024 * 1024

    def remount(self, mode: str) -> subprocess.CompletedProcess:
        return self.run("mount", "-o", f"remount,{mode}", str(self.root), check=False)

    def integrity(self, db: Path) -> str:
        return self.run(sys.executable, "-c", INTEGRITY, str(db)).stdout.strip()


class NamespacedBroker(Broker):
    """A real broker whose store lives on the namespace's tmpfs."""

    def __init__(self, procs: Processes, ns: MountNamespace):
        super().__init__(procs, ns.root)
        self.ns = ns

    def argv(self, *extra: str) -> list[str]:
        return (["nsenter", "-t", str(self.ns.holder.pid), "-m", "--"] + program("queuectl-broker")
                + ["--bind", self.endpoint, "--db", str(self.db), *extra])

    def start(self, *extra: str) -> NamespacedBroker:
        self.starts += 1
        self.proc = self.procs.start(self.argv(*extra), f"broker-{self.starts}.log", env=self.env())
        wait_until(self.answers, 15, message=f"broker on {self.endpoint}")
        return self


@pytest.fixture
def tmpfs_broker(procs, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    ns = MountNamespace(procs, tmp_path / "store")
    return NamespacedBroker(procs, ns).start()


# --- helpers ----------------------------------------------------------------------------

def configure(broker: Broker, **settings: Any) -> None:
    harness.configure(broker, **{**FAST, **settings})


def timed_enqueue(broker: Broker, job: dict[str, Any] | None = None,
                  jobs: list[dict[str, Any]] | None = None,
                  ) -> tuple[subprocess.CompletedProcess, float]:
    """``queuectl enqueue JSON`` (or ``--file -`` for a batch) as a user runs it, timed."""
    start = time.monotonic()
    if jobs is not None:
        result = run_cli(broker, "enqueue", "--file", "-",
                         input="".join(json.dumps(j) + "\n" for j in jobs),
                         timeout=ENQUEUE_DEADLINE)
    else:
        result = run_cli(broker, "enqueue", json.dumps(job), timeout=ENQUEUE_DEADLINE)
    return result, time.monotonic() - start


def one_clear_line(result: subprocess.CompletedProcess, pattern: str) -> list[str]:
    """What is wrong with a failed command's error output, by the contract (empty: nothing)."""
    problems = []
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != 1:
        problems.append(f"exit code {result.returncode}, the contract says 1")
    if "Traceback" in result.stderr:
        problems.append("a traceback on stderr")
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr, expected one")
    if not re.search(pattern, result.stderr, re.IGNORECASE):
        problems.append(f"the error does not say what is wrong (/{pattern}/)")
    return problems


def assert_one_clear_line(result: subprocess.CompletedProcess, pattern: str, what: str) -> None:
    problems = one_clear_line(result, pattern)
    assert not problems, f"{what}: {'; '.join(problems)}; stderr: {result.stderr.strip()!r}"


def snapshot(broker: Broker, ids: list[str]) -> dict[str, dict[str, Any]]:
    with broker.client() as qc:
        return {job_id: qc.get(job_id) for job_id in ids}


def assert_unchanged(broker: Broker, before: dict[str, dict[str, Any]]) -> None:
    """Every stored job reads back exactly as before, with ``show`` and with ``list``."""
    listed = run_cli(broker, "list", "--limit", "1000", "--json")
    assert listed.returncode == 0, f"list failed: {listed.stderr}"
    by_id = {job["id"]: job for job in json.loads(listed.stdout)}
    now = snapshot(broker, list(before))
    for job_id, job in before.items():
        assert now[job_id] == job, f"show {job_id} changed: {job} -> {now[job_id]}"
        summary = {k: v for k, v in job.items() if k in by_id.get(job_id, {})}
        assert by_id.get(job_id) == summary, f"list shows {job_id} changed or missing"
    shown = run_cli(broker, "show", next(iter(before)), "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout) == next(iter(before.values()))


def assert_counts_agree(broker: Broker) -> None:
    """``status`` counts (kept by triggers) agree with the jobs themselves."""
    with broker.client() as qc:
        counts = qc.status()["counts"]
        states = Counter(job["state"] for job in qc.list(limit=10_000))
    assert {k: v for k, v in counts.items() if v} == dict(states), (counts, states)


def assert_absent(broker: Broker, ids: list[str]) -> None:
    """A failed enqueue stored nothing: no half-stored job to trip over later."""
    from queuectl.client import NotFound

    with broker.client() as qc:
        for job_id in ids:
            with pytest.raises(NotFound):
                qc.get(job_id)


def ledger_has(ledger: Ledger, kind: str, job_id: str) -> bool:
    return any(k == kind and j == job_id for k, j, _ in ledger.lines())


def enqueue_until_ok(broker: Broker, ledger: Ledger, prefix: str,
                     deadline: float) -> tuple[str, float, list[str]]:
    """After the fault clears: enqueue (new ids) until one succeeds; returns
    (its id, seconds until then, ids of enqueues that failed on the way)."""
    start, failed, n = time.monotonic(), [], 0

    def attempt() -> str | None:
        nonlocal n
        n += 1
        job_id = f"{prefix}-{n}"
        result = run_cli(broker, "enqueue", json.dumps(ledger.job(job_id)))
        if result.returncode == 0:
            return job_id
        failed.append(job_id)
        return None

    job_id = wait_until(attempt, deadline, interval=0.2, message="an enqueue to succeed again")
    return job_id, time.monotonic() - start, failed


def broker_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_errors(broker: Broker) -> int:
    assert broker.proc is not None  # started
    return Path(broker.proc.log_path).read_text(errors="replace").count("store commit failed")


def finished_once(broker: Broker, job_id: str, timeout: float = REDELIVERY_DEADLINE) -> dict:
    with broker.client(timeout=timeout + 5) as qc:
        qc.wait(job_id, timeout=timeout)
        job = qc.get(job_id)
    assert job["state"] == "completed", f"{job_id}: {job['state']} ({job['last_error']})"
    assert job["attempts"] == 1 and len(job["attempts_log"]) == 1, \
        f"{job_id} ran {len(job['attempts_log'])} times: {job['attempts_log']}"
    return job


def seed(broker: Broker, ledger: Ledger) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Jobs stored before the fault: 4 completed, 2 waiting for an hour from now."""
    done = [f"done-{n}" for n in range(4)]
    waiting = [f"waiting-{n}" for n in range(2)]
    with broker.client() as qc:
        qc.enqueue_many([ledger.job(job_id) for job_id in done]
                        + [ledger.job(job_id, delay=3600) for job_id in waiting])
        for job_id in done:
            assert qc.wait(job_id, timeout=20)["state"] == "completed"
    return done + waiting, snapshot(broker, done + waiting)


def start_inflight(broker: Broker, ledger: Ledger, job_id: str, seconds: float) -> None:
    """A job that prints a marker after ``seconds`` of work; returns once it runs."""
    with broker.client() as qc:
        qc.enqueue({"id": job_id, "command": f"{ledger.command(seconds)} && echo out-{job_id}"})
    wait_until(lambda: ledger_has(ledger, "start", job_id), 15, message=f"{job_id} to start")


def assert_output(broker: Broker, job_id: str) -> None:
    logs = run_cli(broker, "logs", job_id)
    assert logs.returncode == 0 and f"out-{job_id}" in logs.stdout, \
        f"the output of {job_id} was lost: {logs.stdout!r} {logs.stderr!r}"


# --- 1. disk full -------------------------------------------------------------------------

@need_root
@pytest.mark.timeout(120)
def test_disk_full_enqueue_fails_clearly_nothing_stored_is_damaged_and_the_broker_recovers(
        procs, tmpfs_broker, tmp_path):
    broker, ns = tmpfs_broker, tmpfs_broker.ns
    ledger = Ledger(tmp_path / "ledger")
    configure(broker)
    start_agent(procs, broker)
    stored, before = seed(broker, ledger)
    start_inflight(broker, ledger, "inflight", 3.0)

    ns.fill()
    single, single_sec = timed_enqueue(broker, ledger.job("while-full"))
    batch, batch_sec = timed_enqueue(broker, jobs=[ledger.job(f"while-full-batch-{n}")
                                                   for n in range(3)])
    print(f"STORAGE-FAULT disk full: enqueue exit {single.returncode} in {single_sec:.2f}s: "
          f"{single.stderr.strip()!r}; batch of 3 exit {batch.returncode} in {batch_sec:.2f}s")
    assert_one_clear_line(single, r"full", "enqueue on a full disk")
    assert_one_clear_line(batch, r"full", "enqueue --file on a full disk")
    assert single_sec < 10 and batch_sec < 10

    assert broker.proc.poll() is None, f"the broker died on a full disk: {broker.log()}"
    assert_absent(broker, ["while-full"] + [f"while-full-batch-{n}" for n in range(3)])
    assert_unchanged(broker, before)
    assert ns.integrity(broker.db) == "ok"

    # The in-flight job finishes while the disk is still full: the broker cannot
    # store its result, so the agent must keep it and deliver it later.
    wait_until(lambda: ledger_has(ledger, "end", "inflight"), 15, message="inflight to end")
    with broker.client() as qc:
        assert qc.get("inflight")["state"] == "processing", \
            "precondition: the result of a job that ended on a full disk cannot be stored yet"

    ns.unfill()
    after_id, recovery_sec, failed_after = enqueue_until_ok(broker, ledger, "after", 10)
    print(f"STORAGE-FAULT disk full: enqueue works again {recovery_sec:.2f}s after the disk "
          f"has room ({len(failed_after)} failed attempts first)")
    assert_absent(broker, failed_after)
    assert broker.starts == 1 and broker.proc.poll() is None, "the broker was restarted"

    with broker.client() as qc:
        qc.enqueue_many([ledger.job(f"after-run-{n}") for n in range(3)])
    for job_id in ["inflight", after_id] + [f"after-run-{n}" for n in range(3)]:
        finished_once(broker, job_id)
    assert_output(broker, "inflight")
    assert_unchanged(broker, before)
    assert_counts_agree(broker)
    assert ns.integrity(broker.db) == "ok"

    acknowledged = stored + ["inflight", after_id] + [f"after-run-{n}" for n in range(3)]
    result = audit(broker, acknowledged, ledger, settled=False)
    report("storage: disk full", result, "tmpfs filled to 0 bytes free under a running broker, "
           "then the filler deleted", recovery_sec, enqueue_exit=single.returncode,
           enqueue_fail_sec=round(single_sec, 2), batch_enqueue_fail_sec=round(batch_sec, 2),
           enqueue_error=single.stderr.strip())
    assert not result.problems(), result.problems()


@need_root
@pytest.mark.timeout(90)
def test_a_job_coming_due_on_a_full_disk_does_not_make_the_broker_spin(procs, tmpfs_broker,
                                                                       tmp_path):
    """A job becomes due (a scheduled job, or a retry after its backoff) while the
    store cannot write: the broker must retry at a sane pace, not burn a core and
    flood its log (which on a real machine sits on the same full disk)."""
    broker, ns = tmpfs_broker, tmpfs_broker.ns
    ledger = Ledger(tmp_path / "ledger")
    configure(broker)
    start_agent(procs, broker, count=1)
    with broker.client() as qc:
        qc.enqueue(ledger.job("due-soon", delay=1))
    due = time.time() + 1
    ns.fill()
    wait_until(lambda: time.time() > due + 0.5, 5, message="the job's run_at to pass")

    window = 3.0
    errors0, cpu0 = store_errors(broker), broker_cpu_seconds(broker.proc.pid)
    start = time.monotonic()
    time.sleep(window)  # a measurement window, not a wait for a condition
    elapsed = time.monotonic() - start
    error_rate = (store_errors(broker) - errors0) / elapsed
    cpu_share = (broker_cpu_seconds(broker.proc.pid) - cpu0) / elapsed
    print(f"STORAGE-FAULT due job on a full disk: {error_rate:.0f} 'store commit failed' "
          f"log lines/s, broker CPU {cpu_share:.0%} of a core")
    assert broker.proc.poll() is None

    ns.unfill()
    recovered_at = time.monotonic()
    finished_once(broker, "due-soon")
    recovery_sec = time.monotonic() - recovered_at
    result = audit(broker, ["due-soon"], ledger)
    report("storage: job due on a full disk", result, "a scheduled job came due while the "
           "tmpfs was full", recovery_sec, store_error_lines_per_sec=round(error_rate),
           broker_cpu_share=round(cpu_share, 2))
    assert not result.problems(), result.problems()
    assert error_rate <= 20, f"the broker logs {error_rate:.0f} store errors a second: it spins"
    assert cpu_share <= 0.5, f"the broker burns {cpu_share:.0%} of a core while the disk is full"


# --- 2. read-only ---------------------------------------------------------------------------

@need_strace
@pytest.mark.timeout(120)
def test_read_only_store_under_a_running_broker_enqueue_fails_clearly_and_it_recovers(
        procs, broker, tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    configure(broker)
    start_agent(procs, broker)
    stored, before = seed(broker, ledger)
    start_inflight(broker, ledger, "inflight", 3.0)

    # The kernel's answer to a write on a filesystem that went read-only, for
    # every write, sync and truncate of the broker's SQLite thread.
    tracer = procs.start(
        ["strace", "-qq", "-p", str(broker.proc.pid), "-o", str(tmp_path / "strace.out"),
         "-e", "trace=pwrite64,pwritev,fsync,fdatasync,ftruncate",
         "-e", "inject=pwrite64,pwritev,fsync,fdatasync,ftruncate:error=EROFS"], "strace.log")
    wait_until(lambda: tracer_of(broker.proc.pid) == tracer.pid or tracer.poll() is not None,
               10, message="strace to attach to the broker")
    if tracer.poll() is not None:
        pytest.skip(f"strace cannot attach here: {Path(tracer.log_path).read_text().strip()}")
    single, single_sec = timed_enqueue(broker, ledger.job("while-ro"))
    batch, batch_sec = timed_enqueue(broker, jobs=[ledger.job(f"while-ro-batch-{n}")
                                                   for n in range(3)])
    print(f"STORAGE-FAULT read-only: enqueue exit {single.returncode} in {single_sec:.2f}s: "
          f"{single.stderr.strip()!r}; batch of 3 exit {batch.returncode} in {batch_sec:.2f}s")
    assert_one_clear_line(single, r"store|read-only|disk", "enqueue on a read-only store")
    assert_one_clear_line(batch, r"store|read-only|disk", "enqueue --file on a read-only store")
    assert single_sec < 10 and batch_sec < 10
    assert broker.proc.poll() is None, f"the broker died on a read-only store: {broker.log()}"
    assert_absent(broker, ["while-ro", *(f"while-ro-batch-{n}" for n in range(3))])
    assert_unchanged(broker, before)
    assert read_only_integrity(broker.db) == "ok"

    wait_until(lambda: ledger_has(ledger, "end", "inflight"), 15, message="inflight to end")
    with broker.client() as qc:
        assert qc.get("inflight")["state"] == "processing", \
            "precondition: the result of a job that ended on a read-only store cannot be stored yet"

    tracer.send_signal(signal.SIGINT)  # strace detaches: writes work again
    tracer.wait(10)
    after_id, recovery_sec, failed_after = enqueue_until_ok(broker, ledger, "after", 10)
    print(f"STORAGE-FAULT read-only: enqueue works again {recovery_sec:.2f}s after the store "
          f"is writable ({len(failed_after)} failed attempts first)")
    assert_absent(broker, failed_after)
    assert broker.starts == 1 and broker.proc.poll() is None

    with broker.client() as qc:
        qc.enqueue_many([ledger.job(f"after-run-{n}") for n in range(3)])
    ran = ["inflight", after_id] + [f"after-run-{n}" for n in range(3)]
    for job_id in ran:
        finished_once(broker, job_id)
    assert_output(broker, "inflight")
    assert_unchanged(broker, before)
    assert_counts_agree(broker)
    assert read_only_integrity(broker.db) == "ok"

    acknowledged = stored + ran
    result = audit(broker, acknowledged, ledger, settled=False)
    report("storage: read-only (EROFS under a running broker)", result,
           "every store write/sync of the broker fails with EROFS (strace injection), then "
           "cleared", recovery_sec, enqueue_exit=single.returncode,
           enqueue_fail_sec=round(single_sec, 2), batch_enqueue_fail_sec=round(batch_sec, 2),
           enqueue_error=single.stderr.strip())
    assert not result.problems(), result.problems()


@need_root
@pytest.mark.timeout(90)
def test_broker_on_a_read_only_remounted_store_refuses_clearly_and_starts_after_remount_rw(
        procs, tmpfs_broker, tmp_path):
    broker, ns = tmpfs_broker, tmpfs_broker.ns
    ledger = Ledger(tmp_path / "ledger")
    configure(broker)
    agent = start_agent(procs, broker)
    stored, before = seed(broker, ledger)

    busy = ns.remount("ro")
    print(f"STORAGE-FAULT remount,ro under a running broker: exit {busy.returncode} "
          f"{busy.stderr.strip()!r} (Linux refuses while files are open for writing)")
    if busy.returncode == 0:
        ns.remount("rw")
    assert broker.stop() == 0, broker.log()
    assert ns.remount("ro").returncode == 0, "remount,ro of the idle tmpfs failed"

    start = time.monotonic()
    refused = procs.start(broker.argv(), "broker-ro.log", env=broker.env())
    try:
        code = refused.wait(15)
    except subprocess.TimeoutExpired:
        code = None
    refuse_sec = time.monotonic() - start
    output = Path(refused.log_path).read_text(errors="replace")
    print(f"STORAGE-FAULT broker start on a read-only store: exit {code} in {refuse_sec:.2f}s: "
          f"{output.strip()!r}")
    assert code == 1, f"a broker on a read-only store should refuse to start (exit 1): {output}"
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output and re.search(
        r"read-only|store", output, re.IGNORECASE), output

    assert ns.remount("rw").returncode == 0
    broker.start()
    recovered_at = time.monotonic()
    assert_unchanged(broker, before)
    assert ns.integrity(broker.db) == "ok"
    after, _ = timed_enqueue(broker, ledger.job("after"))
    assert after.returncode == 0, after.stderr
    finished_once(broker, "after")  # the agent that outlived both brokers ran it
    assert agent.proc.poll() is None
    assert_counts_agree(broker)
    result = audit(broker, stored + ["after"], ledger, settled=False)
    report("storage: read-only remount at broker start", result,
           "broker stopped, tmpfs remounted ro, broker start refused, remounted rw, restarted",
           time.monotonic() - recovered_at, refuse_exit=code, refuse_sec=round(refuse_sec, 2))
    assert not result.problems(), result.problems()


def tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("TracerPid:"))


def read_only_integrity(db: Path) -> str:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        verdict = conn.execute("PRAGMA integrity_check").fetchall()[0][0]
        assert isinstance(verdict, str), verdict  # "ok", or the problems
        return verdict
    finally:
        conn.close()


# --- 3. locked ------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_locked_store_enqueue_fails_clearly_or_waits_and_agents_are_not_lost(
        procs, broker, tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    configure(broker)
    agent = start_agent(procs, broker)
    stored, before = seed(broker, ledger)
    with broker.client() as qc:
        agent_id = next(a["id"] for a in qc.agents() if a["pid"] == agent.pid)
    # Both run while the store is locked: one ends inside the lock (its result
    # must be held and delivered), one outlives it (its agent must not be lost).
    start_inflight(broker, ledger, "ends-in-lock", 2.0)
    start_inflight(broker, ledger, "outlives-lock", LOCK_SEC + 2)

    holder = apsw.Connection(str(broker.db))
    holder.set_busy_timeout(5000)
    holder.execute("BEGIN EXCLUSIVE")
    locked_at = time.monotonic()
    try:
        locked, locked_sec = timed_enqueue(broker, ledger.job("while-locked"))
        returned_at = time.monotonic() - locked_at
        time.sleep(max(0.0, LOCK_SEC - returned_at))  # paces the fault: the lock's duration
        with broker.client(timeout=10) as qc:  # reads still work: the store is in WAL mode
            held = qc.get("ends-in-lock")["state"]
    finally:
        holder.execute("COMMIT")
        holder.close()
    released_at = time.monotonic()
    mode = ("failed" if locked.returncode != 0 else
            "waited and succeeded" if returned_at >= LOCK_SEC else "succeeded inside the lock")
    print(f"STORAGE-FAULT locked: enqueue exit {locked.returncode} in {locked_sec:.2f}s "
          f"({mode}): {locked.stderr.strip()!r}; lock held {released_at - locked_at:.1f}s")
    assert broker.proc.poll() is None, broker.log()
    assert ledger_has(ledger, "end", "ends-in-lock") and held == "processing", \
        "precondition: a job ended inside the lock and its result could not be stored then"

    after, after_sec = timed_enqueue(broker, ledger.job("after-lock"))
    print(f"STORAGE-FAULT locked: enqueue after the release exit {after.returncode} "
          f"in {after_sec:.2f}s")
    ran = ["ends-in-lock", "outlives-lock", "after-lock"] + \
        (["while-locked"] if locked.returncode == 0 else [])
    for job_id in ran:
        finished_once(broker, job_id, timeout=LOCK_SEC + REDELIVERY_DEADLINE)
    with broker.client() as qc:
        agents = [a["id"] for a in qc.agents()]
    lost = re.findall(r".*agent \S+ lost:.*", Path(broker.proc.log_path).read_text())
    assert_unchanged(broker, before)
    assert_counts_agree(broker)
    assert read_only_integrity(broker.db) == "ok"

    acknowledged = stored + ran
    result = audit(broker, acknowledged, ledger, settled=False)
    report("storage: locked store", result, f"another process held BEGIN EXCLUSIVE for "
           f"{LOCK_SEC:g}s while jobs ran and ended", after_sec, enqueue_exit=locked.returncode,
           enqueue_sec=round(locked_sec, 2), enqueue_outcome=mode,
           enqueue_error=locked.stderr.strip())
    assert not result.problems(), result.problems()
    assert agents == [agent_id], f"the agent was dropped or replaced: {agents} vs {agent_id}"
    assert not lost, f"the broker declared its agent lost while it was blocked: {lost}"
    assert after.returncode == 0, after.stderr
    # Fails clearly within a bounded time, or waits and succeeds after the release.
    assert locked_sec < ENQUEUE_DEADLINE
    if locked.returncode != 0:  # (when it succeeded, it ran once: checked above)
        assert_absent(broker, ["while-locked"])
        assert_one_clear_line(locked, r"lock", "enqueue while another process locks the store")


# --- 4. a batch larger than the room left on the disk --------------------------------------

SMALL_TMPFS = "8m"
# Each shape is one transaction that needs more room than the disk has left:
# the client sends the jobs in one request (10,000 at most), the CLI a file
# that fits one request (a bigger file is streamed: the next test).
TOO_BIG = {  # shape: (bytes left free, client's jobs, CLI's jobs)
    "10,000 jobs": (1536 * 1024, 10_000, 3_000),  # of 1 KiB each
    "one job with 900 KiB of env": (600 * 1024, 1, 1),
}


def too_big(shape: str, prefix: str, count: int) -> list[dict[str, Any]]:
    if shape == "10,000 jobs":
        return [{"id": f"{prefix}-{n}", "command": f"echo {n} {'x' * 1024}"} for n in range(count)]
    return [{"id": f"{prefix}-0", "command": "env",  # values of 100 KiB, 900 KiB in all
             "env": {f"VALUE_{n}": "v" * 100 * 1024 for n in range(9)}}]


@need_root
@pytest.mark.timeout(180)
@pytest.mark.parametrize("shape", list(TOO_BIG))
def test_a_batch_too_big_for_the_disk_fails_with_one_line_and_the_broker_goes_on(
        procs, tmp_path, shape):
    """SQLite rolls the whole transaction back on its own when a large statement
    fills the disk; the broker used to exit on the errors that follow."""
    from queuectl.client import Unavailable

    ns = MountNamespace(procs, tmp_path / "store", size=SMALL_TMPFS)
    broker = NamespacedBroker(procs, ns).start()
    with broker.client() as qc:
        qc.enqueue({"id": "kept", "command": "true"})
    before = snapshot(broker, ["kept"])
    # After a restart the store file holds every page (as it does on a broker
    # that has run a while), so the room a failed batch took can be given back.
    assert broker.stop() == 0, broker.log()
    broker.start()
    leave, client_count, cli_count = TOO_BIG[shape]
    ns.fill(leave=leave)
    free = ns.available_bytes()

    client_batch = too_big(shape, "client", client_count)
    cli_batch = too_big(shape, "cli", cli_count)
    start = time.monotonic()
    with broker.client(timeout=30) as qc, pytest.raises(Unavailable) as refused:
        qc.call("enqueue", jobs=client_batch)
    client_sec = time.monotonic() - start
    cli, cli_sec = timed_enqueue(broker, jobs=cli_batch)
    print(f"STORAGE-FAULT {shape} on a {SMALL_TMPFS} tmpfs: client {client_sec:.2f}s "
          f"{str(refused.value)!r}; CLI exit {cli.returncode} in {cli_sec:.2f}s; free bytes "
          f"{free} before, {ns.available_bytes()} after")
    assert re.search(r"could not write its store: .*full", str(refused.value)), refused.value
    assert_one_clear_line(cli, r"could not write its store: .*full", f"enqueue of {shape}")
    assert broker.proc is not None and broker.proc.poll() is None, \
        f"the broker died: {broker.log()}"
    assert ns.available_bytes() > free - 256 * 1024, "the failed batch left the disk full"

    status = run_cli(broker, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["counts"]["pending"] == 1
    small, _ = timed_enqueue(broker, {"id": "small", "command": "true"})
    assert small.returncode == 0, small.stderr
    failed_ids = [job["id"] for batch in (client_batch, cli_batch) for job in (batch[0], batch[-1])]
    assert_absent(broker, failed_ids)

    assert broker.stop() == 0, broker.log()
    assert ns.integrity(broker.db) == "ok"
    broker.start()
    assert_unchanged(broker, before)
    assert_absent(broker, failed_ids)
    assert_counts_agree(broker)


@need_root
@pytest.mark.timeout(180)
def test_a_streamed_file_too_big_for_the_disk_enqueues_nothing_and_the_broker_goes_on(
        procs, tmp_path):
    """A 50,000-line file is streamed in chunks, each its own transaction: the
    chunk that fills the disk fails, and the file with it. The chunks stored
    before it hold the disk: until there is room again the broker serves reads
    and refuses writes, and then it drops the batch and goes on by itself."""
    from queuectl.client import Unavailable

    ns = MountNamespace(procs, tmp_path / "store", size=SMALL_TMPFS)
    broker = NamespacedBroker(procs, ns).start()
    lines = [{"id": f"file-{n}", "command": f"echo {n} {'x' * 400}"} for n in range(50_000)]
    cli, cli_sec = timed_enqueue(broker, jobs=lines)
    print(f"STORAGE-FAULT a 50,000-line file on a {SMALL_TMPFS} tmpfs: CLI exit "
          f"{cli.returncode} in {cli_sec:.2f}s: {cli.stderr.strip()!r}")
    assert_one_clear_line(cli, r"could not write its store: .*full",
                          "enqueue of a 50,000-line file")
    assert broker.proc is not None and broker.proc.poll() is None, \
        f"the broker died: {broker.log()}"
    with broker.client() as qc:
        assert qc.status()["counts"]["pending"] == 0 and qc.list() == []  # reads go on
        ns.remount("size=32m")  # room again, as when an operator frees some

        def writes_again() -> bool:
            try:
                return qc.enqueue({"id": "after", "command": "true"})["id"] == "after"
            except Unavailable:
                return False

        wait_until(writes_again, 30, message="the broker to write again by itself")
        assert [job["id"] for job in qc.list()] == ["after"]
    assert_absent(broker, ["file-0", "file-49999"])
    assert broker.stop() == 0, broker.log()
    assert ns.integrity(broker.db) == "ok"
    broker.start()
    assert_absent(broker, ["file-0", "file-49999"])
    assert_counts_agree(broker)


# --- 5. the store's files deleted, renamed or replaced under a running broker --------------

NOTICE_DEADLINE = 1.0  # seconds from the change to the first refused write


def refuse_the_path(db: Path, how: str) -> None:
    if how == "deleted":
        db.unlink()
    elif how == "renamed":
        db.rename(db.with_name("queue.db.away"))
    else:  # another SQLite file moved over it, as a restore might do
        other = apsw.Connection(str(db.with_name("other.db")))
        other.execute("CREATE TABLE t (x)")
        other.close()
        os.replace(db.with_name("other.db"), db)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["deleted", "renamed", "replaced"])
def test_a_store_file_deleted_renamed_or_replaced_refuses_writes_within_a_second(broker, how):
    from queuectl.client import Unavailable

    with broker.client() as qc:
        qc.enqueue({"id": "before", "command": "true"})
        refuse_the_path(broker.db, how)
        changed_at = time.monotonic()
        probes: list[str] = []
        refused_ids: list[str] = []

        def refused() -> str | None:
            probes.append(f"probe-{len(probes)}")
            try:
                qc.enqueue({"id": probes[-1], "command": "true"})
            except Unavailable as exc:
                refused_ids.append(probes[-1])
                return str(exc)
            return None

        message = wait_until(refused, NOTICE_DEADLINE, interval=0.01,
                             message=f"writes to be refused after the store file was {how}")
        notice_sec = time.monotonic() - changed_at
        for _ in range(3):  # nothing is acknowledged after the broker noticed
            assert refused(), "an enqueue was acknowledged after the broker noticed"
    cli, _ = timed_enqueue(broker, {"id": "by-cli", "command": "true"})
    status = run_cli(broker, "status", "--json")
    print(f"STORAGE-FAULT store file {how}: writes refused after {notice_sec:.2f}s "
          f"({len(probes) - len(refused_ids)} enqueues acknowledged first); {message!r}")
    assert re.search(rf"store file {re.escape(str(broker.db))} was deleted, renamed or replaced",
                     message), message
    assert_one_clear_line(cli, r"deleted, renamed or replaced .*; writes are refused; restart "
                               r"the broker", f"enqueue after the store file was {how}")
    assert status.returncode == 0, "reads must still be answered"
    log = Path(broker.proc.log_path).read_text(errors="replace")
    assert log.count("ERROR queuectl.broker.storefile") == 1, "the reason is logged once"
    assert broker.proc.poll() is None

    if how == "renamed":  # back under its name: writes go on, nothing refused was stored
        broker.db.with_name("queue.db.away").rename(broker.db)
        with broker.client() as qc:
            wait_until(lambda: refused() is None, 2, message="writes to be accepted again")
        assert broker.stop() == 0
        broker.start()
        assert_absent(broker, refused_ids + ["by-cli"])
        with broker.client() as qc:
            assert [qc.get(job_id)["id"] for job_id in ("before", probes[-1])] == \
                ["before", probes[-1]]


@pytest.mark.timeout(60)
def test_a_deleted_wal_file_loses_no_acknowledged_job_when_the_broker_crashes(broker):
    """The WAL holds every commit since the last checkpoint: deleted, it lives on
    only in the broker's open file, and a crash used to lose every job in it."""
    acknowledged = []
    with broker.client() as qc:
        acknowledged += qc.enqueue_many([{"id": f"j{n}", "command": "true"}
                                         for n in range(20)])["ids"]
        Path(f"{broker.db}-wal").unlink()
        # Enqueues go on for longer than the broker may take to notice, about 50
        # a second: the WAL stays under SQLite's 1,000-page automatic checkpoint,
        # so no job is in the store file by chance.
        until = time.monotonic() + NOTICE_DEADLINE + 0.5
        while time.monotonic() < until:
            acknowledged.append(qc.enqueue({"command": "true"})["id"])
            time.sleep(0.02)  # paces the workload, as above
    broker.kill()  # SIGKILL: nothing is copied at exit
    broker.start()
    with broker.client() as qc:
        counts = qc.status()["counts"]
        kept = [job["id"] for job in qc.list(limit=len(acknowledged) + 10)]
    print(f"STORAGE-FAULT WAL file deleted, then SIGKILL: {len(set(acknowledged) & set(kept))} of "
          f"{len(acknowledged)} acknowledged jobs kept")
    assert counts["pending"] == len(acknowledged) and set(kept) == set(acknowledged), \
        f"{len(set(acknowledged) - set(kept))} acknowledged jobs were lost"
