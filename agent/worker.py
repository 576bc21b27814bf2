"""The agent loop: one thread polls the broker socket and every job's pipes and pidfd.

Per iteration, one named step per concern: signals, messages from the
broker, job output and exits, then timers (reconnect, heartbeat, lease loss,
timeouts, the stop grace period, output flush, redelivery). A finished job's
result is held until the broker acknowledges it, across reconnects, so a
broker restart loses nothing.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import zmq

from queuectl.keys import ClientKeys
from queuectl.proto import config as config_keys
from queuectl.proto import messages as m
from queuectl.proto.states import ErrorCode, Outcome

from .link import Link
from .output import StreamBuffer
from .process import RunningJob, protect_descriptors
from .watchdog import Watchdog

log = logging.getLogger(__name__)

CHUNK = 256 * 1024       # bytes of output per message
OUTPUT_WINDOW = 8 * CHUNK  # bytes of output sent and not yet acknowledged, at most
FLUSH_EVERY = 0.2        # seconds between output flushes of running jobs
ACK_WAIT = 10.0          # seconds a stopping agent waits to deliver its last results


@dataclass
class Held:
    """A finished attempt whose result the broker has not acknowledged yet."""

    stdout: StreamBuffer
    stderr: StreamBuffer
    result: m.Result
    sent_at: float | None = None


class Agent:
    def __init__(self, endpoint: str, slots: int, labels: dict[str, str] | None = None,
                 grace: float = 30.0, keys: ClientKeys | None = None):
        self.agent_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        # The socket identity: the id, shown to everyone, plus a secret part. The
        # broker's ROUTER gives an identity to the newest connection that claims
        # it, so a guessable one would let any peer take this agent's jobs.
        self.routing_id = f"{self.agent_id}/{secrets.token_hex(16)}"
        self.slots = slots
        self.labels = dict(labels or {})
        self.grace = grace
        defaults = config_keys.defaults()
        self.heartbeat = float(defaults["heartbeat_sec"])
        self.lease = float(defaults["lease_sec"])
        self.kill_grace = float(defaults["kill_grace_sec"])
        self.output_limit = int(defaults["output_limit"])
        self.link = Link(endpoint, self.routing_id, self._hello, keys)
        self.jobs: dict[int, RunningJob] = {}
        # Dispatches held until a slot frees (the broker's prefetch, see
        # broker/agents.py), oldest first; never started while the session
        # is in doubt, and given up at every Hello (the broker takes them back).
        self.ready: dict[int, m.Dispatch] = {}
        self.held: dict[int, Held] = {}
        self.fds: dict[int, tuple[RunningJob, bool]] = {}  # fd -> (job, is_pidfd)
        self.poller = zmq.Poller()
        self.base_env = dict(os.environ)
        self.draining_since: float | None = None
        self.idle_since: float | None = None
        self.forced = False
        self.fatal: str | None = None
        self.pending_signals: list[int] = []
        self._last_flush = 0.0
        self.output_inflight = 0  # bytes of Output the broker has not acknowledged
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.watchdog: Watchdog | None = None
        self.killed_by_watchdog: set[int] = set()  # pgids, until their job is reaped
        self.progress_at = time.monotonic()  # when the loop last made progress

    # --- the loop -------------------------------------------------------------

    def run(self) -> int:
        protect_descriptors()  # no job inherits what this process was started with
        self._open_link()  # first: a malformed endpoint fails before anything starts
        self.watchdog = Watchdog(self.cutoff)
        self.poller.register(self._wake_r, zmq.POLLIN)
        log.info("agent %s: %d slots, labels %s, broker %s", self.agent_id, self.slots,
                 self.labels or "none", self.link.endpoint)
        self.progress_at = time.monotonic()
        while not self._finished(time.monotonic()):
            self.link.flush()
            timeout = self._timeout_ms()
            events = self.poller.poll(timeout)
            self._progress(waited=timeout / 1000)
            for target, _ in events:
                self._on_event(target)
                self._progress()
            now = time.monotonic()
            self._handle_signals(now)
            self._timers(now)
            self._progress()
        return self._goodbye()

    def _progress(self, waited: float = 0.0) -> None:
        """End of one unit of work (a wait in poll, one event, one message, the
        timers). A unit that took longer than it should by more than the
        cut-off was a stop (SIGSTOP, a debugger, a stalled process): it is
        seen here, before the next unit acts on anything."""
        now = time.monotonic()
        self._check_frozen(now - self.progress_at - waited, now)
        self.progress_at = now

    @property
    def _watchdog(self) -> Watchdog:
        """The watchdog, which run() starts before the loop handles anything."""
        if self.watchdog is None:
            raise RuntimeError("the agent's watchdog is used before run() started it")
        return self.watchdog

    @property
    def cutoff(self) -> float:
        """Seconds without the broker after which running jobs must die: the broker
        judges the lease lost after ``lease`` seconds and runs the job elsewhere;
        two heartbeats of margin cover the last heartbeat's age and the broker's tick."""
        return max(self.lease - 2 * self.heartbeat, self.heartbeat)

    def _check_frozen(self, stalled: float, now: float) -> None:
        """After a stop longer than the cut-off, the broker may have judged this
        agent lost and given its jobs to others. Its running jobs are killed and
        count as lost (the watchdog killed those it knew already, see
        ``_job_exited``), and the agent says Hello again before it acts on
        anything sent before or during the stop, so a stale Dispatch is never
        started. ``stalled`` is how long one unit of work overran (see
        ``_progress``), never the sum of a busy iteration's work."""
        if stalled <= self.cutoff:
            return
        log.warning("agent %s was stopped or stalled for %.1fs, past its cut-off; its %d "
                    "running jobs are killed and count as lost; saying hello again before "
                    "taking any job", self.agent_id, stalled, len(self.jobs))
        for job in self.jobs.values():
            if not job.exited_by_itself():
                self._lost_by_freeze(job)
                job.kill(Outcome.LEASE_LOST, 0)
        self.link.rehello(now)

    @staticmethod
    def _lost_by_freeze(job: RunningJob) -> None:
        job.forced, job.forced_detail = Outcome.LEASE_LOST, "agent frozen past its lease"

    def signal(self, signum: int) -> None:
        """Record a signal (called from the handler) and wake the loop."""
        self.pending_signals.append(signum)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _on_event(self, target: Any) -> None:
        if target is self.link.socket:
            messages = self.link.receive()
            self._progress()
            for msg in messages:  # a stop can land while one is handled (a spawn)
                self._on_message(msg)
                self._progress()
        elif target is self.link.monitor:
            self.link.on_monitor(time.monotonic())
        elif target == self._wake_r:
            os.read(self._wake_r, 4096)
        elif target in self.fds:
            job, is_pidfd = self.fds[target]
            if is_pidfd:
                self._job_exited(job)
            elif not job.read(target):
                self._unwatch(target)
                job.pipe_closed(target)
            elif job.stdout.unsent() + job.stderr.unsent() >= CHUNK:
                self._send_output(job.token, job.stdout, job.stderr)

    def _timeout_ms(self) -> int:
        now = time.monotonic()
        wake = now + self.heartbeat / 2
        held = self.link.hold_until()
        if held is not None:
            wake = min(wake, held)
        if self.jobs:
            wake = min(wake, now + FLUSH_EVERY)
            for job in self.jobs.values():
                # A job being killed (kill() sets forced and kill_at) waits for its
                # SIGKILL time, not its past deadline.
                wake = min(wake, job.kill_at if job.kill_at is not None else job.deadline)
        return max(0, int((wake - now) * 1000) + 1)

    def _finished(self, now: float) -> bool:
        if self.fatal:
            return True
        if self.draining_since is None or self.jobs:
            return False
        if self.idle_since is None:
            self.idle_since = now
        if not self.held:
            return True
        return now - self.idle_since > (2.0 if self.forced else ACK_WAIT)

    def _goodbye(self) -> int:
        if self.held:
            log.warning("agent %s: results of attempts %s were not acknowledged; the broker "
                        "will run those jobs again", self.agent_id, sorted(self.held))
        if self.watchdog is not None:
            self.watchdog.close()
        # Bye comes last: the broker treats this agent as gone once Bye arrived
        # and the connection closed, which `worker stop` waits for.
        if not self.fatal:
            self.link.send(m.Bye())
        self.link.close()
        if self.fatal:
            log.error("agent %s stopped: %s", self.agent_id, self.fatal)
            return 1
        log.info("agent %s stopped", self.agent_id)
        return 0

    # --- the broker -----------------------------------------------------------

    def _hello(self, seq: int) -> m.Hello:
        self.ready.clear()  # not named below: the broker releases them
        return m.Hello(agent_id=self.agent_id, host=socket.gethostname(), pid=os.getpid(),
                       slots=self.slots, labels=self.labels,
                       tokens=sorted(set(self.jobs) | set(self.held)), seq=seq,
                       routing=self.routing_id)

    def _open_link(self) -> None:
        """(Re)open the broker socket with ZMTP heartbeats matching ``self.heartbeat``."""
        for sock in (self.link.socket, self.link.monitor):
            if sock is not None:
                self.poller.unregister(sock)
        self.link.open(self.heartbeat)
        self.poller.register(self.link.socket, zmq.POLLIN)
        self.poller.register(self.link.monitor, zmq.POLLIN)

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, m.Dispatch):
            self._start(msg)
        elif isinstance(msg, m.Ack):
            self.link.acked()
            self.output_inflight = max(0, self.output_inflight - msg.output_bytes)
            rewound = {self._rewind_stream(entry) for entry in msg.rewind}
            for token in msg.tokens:
                self.held.pop(token, None)
            for token in set(self.held) & rewound:  # output the broker lost, then the result
                self._deliver(token)
        elif isinstance(msg, m.Cancel):
            job = self.jobs.get(msg.token)
            if job is not None:
                log.info("job %s (attempt %d): canceled, killing it", job.job_id, job.token)
                job.kill(Outcome.CANCELED, self.kill_grace, msg.reason)
            elif msg.token in self.ready:
                self._cancel_ready(self.ready.pop(msg.token), msg.reason)
        elif isinstance(msg, m.Revoke):
            # A held job goes back; so does one this agent never got or gave back
            # already (a Reject the broker lost). One it runs or ran stays.
            held = self.ready.pop(msg.token, None) is not None
            if held or (msg.token not in self.jobs and msg.token not in self.held):
                self.link.send(m.Reject(token=msg.token))
        elif isinstance(msg, m.Welcome):
            self._welcome(msg)
        elif isinstance(msg, m.Stop):
            self._drain("asked to stop by the broker")
        elif isinstance(msg, m.Error):
            self._error(msg)

    def _welcome(self, msg: m.Welcome) -> None:
        if msg.hello_seq != self.link.hello_seq:
            log.debug("ignored a welcome for hello %d (the latest is %d)", msg.hello_seq,
                      self.link.hello_seq)
            return
        self.heartbeat, self.lease = msg.heartbeat_sec, msg.lease_sec
        self.kill_grace, self.output_limit = msg.kill_grace_sec, msg.output_limit
        if self.heartbeat != self.link.heartbeat:
            # Transport failure detection must follow heartbeat_sec (the lease
            # arithmetic depends on it): reconnect with the new ZMTP heartbeat.
            log.info("heartbeat is now %ss; reconnecting with it", self.heartbeat)
            self._open_link()
            return
        self.link.welcomed()
        self._watchdog.set_limit(self.cutoff)
        for token in msg.cancel:
            job = self.jobs.get(token)
            if job is not None:
                log.warning("job %s (attempt %d): the broker no longer leases it here; killing it",
                            job.job_id, token)
                job.kill(Outcome.LEASE_LOST, 0)
        self.output_inflight = 0  # what the last connection carried is gone or received
        self._rewind(msg.offsets)
        if self.draining_since is not None:
            self.link.send(m.Drain())
        for job in self.jobs.values():
            self._send_output(job.token, job.stdout, job.stderr)
        for token in list(self.held):
            self._deliver(token)

    def _error(self, msg: m.Error) -> None:
        if msg.code == ErrorCode.HELLO_FIRST:
            if self.link.up:
                log.info("the broker does not know this agent (it restarted?); saying hello "
                         "again")
            self.link.rehello(time.monotonic())
        elif msg.code in (ErrorCode.VERSION, ErrorCode.FORBIDDEN):  # nothing to retry: stop, loudly
            self.fatal = msg.message
        else:
            log.warning("broker error: %s", msg.message)

    # --- jobs -----------------------------------------------------------------

    def _start(self, dispatch: m.Dispatch) -> None:
        token = dispatch.token
        if not self.link.up:
            # Sent before the broker heard our latest Hello (a reconnect, a stop):
            # the Hello does not name it, so the broker takes the lease back.
            log.info("job %s (attempt %d): dispatched before the broker welcomed this agent "
                     "again; not started", dispatch.job_id, token)
            return
        if token in self.jobs or token in self.held or token in self.ready:
            log.warning("job %s (attempt %d): dispatched twice; ignored", dispatch.job_id, token)
        elif self.draining_since is None and len(self.jobs) + len(self.ready) < 3 * self.slots:
            self.ready[token] = dispatch  # the broker's prefetch: two per slot, at most
            self._start_ready()
        else:
            self.link.send(m.Reject(token=token))

    def _start_ready(self) -> None:
        """Start held dispatches while slots are free."""
        while self.ready and len(self.jobs) < self.slots and self.link.up:
            token = next(iter(self.ready))
            self._spawn(self.ready.pop(token))

    def _cancel_ready(self, dispatch: m.Dispatch, reason: str) -> None:
        """A held dispatch was canceled before it started: report it as canceled."""
        log.info("job %s (attempt %d): canceled before it started", dispatch.job_id,
                 dispatch.token)
        job = RunningJob(dispatch, self.output_limit)
        self.held[dispatch.token] = Held(job.stdout, job.stderr, job.not_started(
            Outcome.CANCELED, reason))
        self._deliver(dispatch.token)

    def _spawn(self, dispatch: m.Dispatch) -> None:
        token = dispatch.token
        job = RunningJob(dispatch, self.output_limit)
        try:
            job.spawn(self.base_env)
        except OSError as exc:
            log.info("job %s (attempt %d) could not start: %s", job.job_id, token, exc)
            self.held[token] = Held(job.stdout, job.stderr, job.spawn_failure(exc))
            self._deliver(token)
            return
        self.jobs[token] = job
        self._watchdog.watch(job.pgid)
        for fd in job.pipes:
            self._watch(fd, job, False)
        assert job.pidfd is not None  # spawn() opened it
        self._watch(job.pidfd, job, True)
        self.link.send(m.Started(token=token, pid=job.pid, started_at=job.started_at))
        self.link.flush()  # now, before the job can act (see link.URGENT)
        log.debug("job %s (attempt %d) started as pid %d", job.job_id, token, job.pid)

    def _job_exited(self, job: RunningJob) -> None:
        for fd in [fd for fd, (owner, _) in self.fds.items() if owner is job]:
            self._unwatch(fd)
        running = {other.pgid for other in self.jobs.values()}
        self.killed_by_watchdog = (self.killed_by_watchdog | self._watchdog.killed()) & running
        if job.pgid in self.killed_by_watchdog:
            self.killed_by_watchdog.discard(job.pgid)
            if not job.exited_by_itself():
                self._lost_by_freeze(job)  # a stall shorter than our own check saw
        returncode = job.reap()
        self._watchdog.forget(job.pgid)
        del self.jobs[job.token]
        result = job.result(returncode)
        log.debug("job %s (attempt %d) ended: %s", job.job_id, job.token, result.outcome)
        self.held[job.token] = Held(job.stdout, job.stderr, result)
        self._deliver(job.token)
        self._start_ready()

    def _deliver(self, token: int) -> None:
        """Send a finished attempt's unsent output, then its result. Held output
        passes the send window (it is bounded: at most ``output_limit`` per stream
        per finished job), so running jobs that print fast never delay a result."""
        held = self.held[token]
        if (self._send_output(token, held.stdout, held.stderr, windowed=False)
                and self.link.send(held.result)):
            held.sent_at = time.monotonic()

    def _send_output(self, token: int, *buffers: StreamBuffer, windowed: bool = True) -> bool:
        """Send what the buffers hold beyond what was sent; stops when the link refuses
        or the send window is full (the buffers then keep only the newest bytes)."""
        for stream, buffer in zip((m.STDOUT, m.STDERR), buffers, strict=True):
            while buffer.unsent():
                if windowed and self.output_inflight >= OUTPUT_WINDOW:
                    return False
                gap = buffer.dropped()
                offset, data = buffer.peek(CHUNK)
                if not self.link.send(m.Output(token=token, stream=stream, offset=offset,
                                               data=data, gap=gap)):
                    return False
                buffer.mark_sent(len(data))
                self.output_inflight += len(data)
        return True

    def _rewind_stream(self, entry: Any) -> int | None:
        """Apply one ``[token, stream, stored_end]`` from an Ack; returns the token."""
        try:
            token, stream, end = (int(value) for value in entry)
        except (TypeError, ValueError):
            return None
        owner = self.jobs.get(token) or self.held.get(token)
        if owner is not None and stream in (m.STDOUT, m.STDERR):
            (owner.stdout if stream == m.STDOUT else owner.stderr).rewind(end)
        return token

    def _rewind(self, offsets: Iterable[Any]) -> None:
        """Apply how far the broker stored each attempt's output (from Welcome,
        ``[token, stdout_end, stderr_end]``): a broker that crashed may have lost
        chunks it was sent."""
        for entry in offsets:
            if isinstance(entry, list) and len(entry) == 3:
                self._rewind_stream([entry[0], m.STDOUT, entry[1]])
                self._rewind_stream([entry[0], m.STDERR, entry[2]])

    def _watch(self, fd: int, job: RunningJob, is_pidfd: bool) -> None:
        self.fds[fd] = (job, is_pidfd)
        self.poller.register(fd, zmq.POLLIN)

    def _unwatch(self, fd: int) -> None:
        if self.fds.pop(fd, None) is not None:
            self.poller.unregister(fd)

    # --- timers and stopping -----------------------------------------------------

    def _timers(self, now: float) -> None:
        self.link.tick(now)
        if self.link.up and now - self.link.last_sent >= self.heartbeat:
            self.link.send(m.Heartbeat())
        self._watchdog.alive(now)
        silence = self.link.unheard_for(now)
        for job in list(self.jobs.values()):
            if job.forced is None and silence > self.cutoff:
                log.warning("job %s (attempt %d): cut off from the broker for %.1fs, past the "
                            "lease; killing it so it cannot run twice",
                            job.job_id, job.token, silence)
                job.kill(Outcome.LEASE_LOST, 0)
            elif job.forced is None and now >= job.deadline:
                log.info("job %s (attempt %d): timed out after %ss; killing its process group",
                         job.job_id, job.token, job.dispatch.timeout_sec)
                job.kill(Outcome.TIMEOUT, self.kill_grace)
            elif (self.draining_since is not None and job.forced is None
                  and now - self.draining_since >= self.grace):
                log.warning("job %s (attempt %d): still running after the %ss stop grace period; "
                            "killing it", job.job_id, job.token, self.grace)
                job.kill(Outcome.STOPPED, self.kill_grace)
            job.escalate(now)
        if now - self._last_flush >= FLUSH_EVERY:
            self._last_flush = now
            for job in self.jobs.values():
                self._send_output(job.token, job.stdout, job.stderr)
            for token, held in list(self.held.items()):
                if held.sent_at is None or now - held.sent_at > 5 * self.heartbeat:
                    if held.sent_at is not None:  # no Ack: the broker may have lost its output
                        held.stdout.rewind(0)
                        held.stderr.rewind(0)
                    self._deliver(token)

    def _handle_signals(self, now: float) -> None:
        while self.pending_signals:
            signum = self.pending_signals.pop(0)
            if self.draining_since is None:
                self._drain(f"received {signal.Signals(signum).name}")
            elif signum == signal.SIGINT and not self.forced:
                self.forced = True
                log.warning("second interrupt: killing %d running jobs now", len(self.jobs))
                for job in self.jobs.values():
                    job.kill(Outcome.STOPPED, 0)

    def _drain(self, why: str) -> None:
        if self.draining_since is not None:
            return
        self.draining_since = time.monotonic()
        for token in list(self.ready):  # held, never started: the broker takes them back
            del self.ready[token]
            self.link.send(m.Reject(token=token))
        running = ", ".join(job.job_id for job in self.jobs.values()) or "none"
        log.info("agent %s stopping (%s): taking no new jobs; waiting up to %ss for running "
                 "jobs: %s", self.agent_id, why, self.grace, running)
        self.link.send(m.Drain())
