"""The broker loop: one thread, one ROUTER socket, one ``zmq.Poller``.

Each iteration receives a batch of frames and handles them, plus the timed
work (``tick``), inside one SQLite transaction with a savepoint per message.
Replies and dispatches go to an outbox that is sent only after the commit, so
no peer ever hears of a change that a crash could undo (group commit). What
one iteration has for an agent leaves in one frame (acks, dispatches).
The loop sleeps in ``poll`` until a frame arrives, the next heartbeat or
lease check is due, or the earliest scheduled ``run_at`` comes. It never
polls the database for work.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from typing import Any

import zmq

from queuectl.keys import Principal
from queuectl.proto import (MAX_FRAME, ErrorCode, ProtocolError, VersionMismatch, batches,
                            decode_batch, encode, encode_batch)
from queuectl.proto import config as config_keys
from queuectl.proto import messages as m
from queuectl.proto.jobspec import SpecError
from queuectl.proto.states import Outcome

from . import admin, agent_handlers, lifecycle
from .agents import AgentConn, Registry
from .auth import Guard, forbidden
from .batches import Batches
from .inbox import STEP_SECONDS, Frame, Inbox
from .intake import Intake, peer_name
from .jobs import JobError, JobService
from .memory import Trimmer
from .metrics import Metrics
from .orphans import Orphans
from .parking import Parked, ParkingLot
from .queues import Gate, Queues
from .store import Job, StaleState, Store, StoreUnavailable
from .storefile import CHECK_EVERY, StoreFiles

log = logging.getLogger(__name__)

BATCH = 512  # frames handled per transaction
STORE_RETRY = (0.1, 2.0)  # backoff bounds (seconds) for timed writes while the store fails
STORE_LOG_EVERY = 10.0    # seconds between log lines about a store that keeps failing
DEPARTURE_WAIT = 5.0  # seconds a departing agent's connection may take to close
DEPARTURE_PROBE = 0.02  # seconds between two looks at a departing agent's connection
LINGER = 0.001  # seconds the loop may wait for more frames from busy agents (_linger)



class Broker:
    def __init__(self, store: Store, endpoint: str, guard: Guard | None = None):
        self.store = store
        self.endpoint = endpoint
        self.guard = guard
        self.config: dict[str, Any] = {**config_keys.defaults(), **store.config()}
        self.jobs = JobService(store, self.config, self._job_changed)
        self.agents = Registry()
        self.queues = Queues(store)
        self.batches = Batches(store)
        self.parking = ParkingLot()
        self.outbox: list[tuple[bytes, Any]] = []
        self.acks: dict[bytes, list[int]] = defaultdict(list)
        self.output_received: dict[bytes, int] = defaultdict(int)
        self.rewinds: dict[bytes, dict[tuple[int, int], int]] = defaultdict(dict)
        self.orphans = Orphans()
        self.intake = Intake()
        self.trimmer = Trimmer()
        self.undelivered: list[int] = []
        self.next_due: float | None = None
        self.dirty = True
        self.needs_resync = False
        self.stopping = False
        self.now = time.time()
        self.mono = time.monotonic()
        self.metrics = Metrics(started_at=self.now)
        self._next_maintenance = 0.0
        self.inbox = Inbox()
        self._read_all = True  # the last read emptied the socket's queue
        self._drained_at = 0.0  # when the inbox was last read and handled to the end
        self.store_failing_since: float | None = None
        self.store_retry_at = 0.0
        self._store_backoff = 0.0
        self._store_logged_at = 0.0
        self.files = StoreFiles(store)
        self._files_checked_at = 0.0
        self._batch_error: StoreUnavailable | None = None  # the store failed in this batch
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.socket: zmq.Socket | None = None

    # --- lifecycle of the process ----------------------------------------

    def bind(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished peer raises
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)   # a reconnecting agent takes its identity back
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        # Frames queued for one peer, and read ahead from one: a client waits for
        # its reply before the next request, an agent gets a frame or two per
        # iteration. A peer that does not read its replies makes the broker hold
        # at most SNDHWM of them (a review held 280 MiB of unread ones), and one
        # that sends faster than the broker reads is slowed down by TCP.
        sock.setsockopt(zmq.SNDHWM, 100)
        sock.setsockopt(zmq.RCVHWM, 1000)
        if "[" in self.endpoint:
            sock.setsockopt(zmq.IPV6, 1)
        if self.guard is not None:
            self.guard.secure(ctx, sock)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            if self.guard is not None:
                self.guard.stop()
            raise
        self.socket = sock

    def request_stop(self) -> None:
        """Safe to call from a signal handler."""
        self.stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def run(self) -> None:
        assert self.socket is not None
        self.now, self.mono = time.time(), time.monotonic()
        with self.store.transaction():
            self.batches.recover(self.now, self.mono)
            self.resync()
            self.metrics.seed(self.store.finished_since(self.now - 3600), self.now)
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        log.info("broker listening on %s (store %s)", self.endpoint, self.store.path)
        while not self.stopping:
            events = dict(poller.poll(self._poll_timeout_ms()))
            if self._wake_r in events:
                os.read(self._wake_r, 4096)
            if self.socket in events and not self.inbox.full():
                self._linger(self._read())
            self.step(self.inbox.take(), budget=STEP_SECONDS)
        self._shutdown()

    def _read(self) -> list[Frame]:
        """Move the frames waiting on the socket into the inbox (up to BATCH, and
        while it is not full); returns them."""
        # EVENTS says whether a frame waits: cheaper than ending on zmq.Again.
        sock, guard, frames = self.socket, self.guard, []
        self._read_all = False
        while len(frames) < BATCH and not self.inbox.full():
            if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                self._read_all = True
                break
            if guard is None:
                parts = sock.recv_multipart(zmq.NOBLOCK)
                principal = None
            else:  # the key behind the frame, as ZAP named it (its User-Id)
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                principal = guard.who(parts[-1].get("User-Id"))
                parts = [part.bytes for part in parts]
            if len(parts) != 2:
                self.intake.warn(peer_name(parts[0]), "dropped a message of %d frames (expected "
                                 "identity + 1) from peer %s", len(parts), peer_name(parts[0]))
                continue
            frame = (parts[0], parts[1], principal)
            self.trimmer.churned(len(parts[1]))
            self.inbox.put(frame)
            frames.append(frame)
        return frames

    def _linger(self, frames: list[Frame]) -> None:
        """Group commit over time: while every frame read so far comes from an agent
        that still holds jobs ready to start (so nothing waits on our answer), wait
        up to LINGER for more frames, so that one commit and one reply serve several
        results. A client's request, or an agent that may run dry, ends the wait."""
        deadline = time.monotonic() + LINGER
        start = 0
        while len(frames) < BATCH and self._can_wait(frames[start:]):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(max(1, int(remaining * 1000))):
                return
            start = len(frames)
            frames += self._read()

    def _can_wait(self, frames: list[Frame]) -> bool:
        if not frames:
            return False  # nothing read (a spurious wake-up): nothing to group
        for frame in frames:
            agent = self.agents.get(frame[0])
            if agent is None or agent.held_back() == 0:
                return False
        return True

    def _shutdown(self) -> None:
        for parked in self.parking.drop_all():
            self._send_reply(parked.ident, parked.req_id, None, ErrorCode.UNAVAILABLE,
                             "the broker is stopping")
        self._flush()
        leased = self.store.leased_jobs()
        if leased:
            names = ", ".join(job.id for job in leased[:20]) + (" ..." if len(leased) > 20 else "")
            log.info("broker stopped; %d jobs were still processing and stay leased to their "
                     "agents, which report them to the next broker: %s", len(leased), names)
        else:
            log.info("broker stopped; no job was processing")
        self.socket.close()
        if self.guard is not None:
            self.guard.stop()
        self.store.close()

    def _poll_timeout_ms(self) -> int:
        interval = min(0.25, self.config["heartbeat_sec"] / 2)
        backoff = self.store_retry_at - time.monotonic()
        if backoff > 0:  # the store failed: timed writes wait until then
            return int(min(backoff, interval) * 1000) + 1
        if self.undelivered or self.dirty or self.batches.work or self.inbox:
            return 0
        wait = self._next_maintenance - time.monotonic()
        wait = min(wait, interval)
        if self.next_due is not None:
            wait = min(wait, self.next_due - time.time())
        deadline = self.parking.next_deadline()
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        return max(0, int(wait * 1000) + 1)

    # --- one iteration -----------------------------------------------------

    def step(self, frames: list[Frame], budget: float | None = None) -> None:
        """Handle ``frames`` and the timed work in one transaction, then send. With a
        ``budget`` (seconds), frames not reached by then go back to the inbox."""
        self.now, self.mono = time.time(), time.monotonic()
        if self.mono - self._files_checked_at >= CHECK_EVERY:
            # Before the batch: nothing of it may be acknowledged into a file
            # that the store's path no longer names.
            self._files_checked_at = self.mono
            self.files.check()
        requests: list[tuple[bytes, m.Request]] = []  # answered again if the batch fails
        timed = self.mono >= self.store_retry_at
        writes = self.store.total_changes()
        self._batch_error = None
        try:
            with self.store.iteration():
                for done, frame in enumerate(frames):
                    if budget is not None and done and time.monotonic() - self.mono > budget:
                        self.inbox.put_back(frames[done:])
                        break
                    self._handle_frame(frame, requests)
                if self._batch_error is not None:  # every request of the batch was collected
                    raise self._batch_error
                if self._read_all and not self.inbox:
                    self._drained_at = self.mono
                if timed:
                    # Judge leases with an empty inbox: a heartbeat still queued
                    # behind a full batch must not count as missing. Under
                    # overload lasting a whole lease, judge anyway: ROUTER reads
                    # its peers in turn, so a live agent's heartbeat is in every
                    # full batch, and a dead agent must not go unnoticed forever.
                    self.tick(judge_leases=self.mono - self._drained_at < 1e-9
                              or self.mono - self._drained_at > self.config["lease_sec"])
                else:
                    self._expire_parked()
        except StoreUnavailable as exc:
            self._batch_failed(requests, exc, len(frames))
        else:
            self.parking.commit_step()
            if self.store_failing_since is not None and self.store.total_changes() > writes:
                self._store_recovered()
        if self.needs_resync:
            try:
                with self.store.iteration():
                    self.resync()
            except StoreUnavailable as exc:
                self.needs_resync = True
                log.error("could not read the store to resync (%s); retrying", exc)
        self._flush()
        self._discount_deafness(time.monotonic() - self.mono)

    def _discount_deafness(self, duration: float) -> None:
        """A long step (a huge batch) is time the broker could not hear anyone:
        move every lease clock forward by it, so no agent is lost for our delay."""
        if duration > self.config["heartbeat_sec"]:
            log.info("a loop iteration took %.1fs; lease clocks extended by that much", duration)
            for agent in self.agents:
                agent.last_seen += duration
            self.orphans.extend(duration)

    def _store_recovered(self) -> None:
        log.warning("the store accepts writes again after %.1fs of failures",
                    self.mono - self.store_failing_since)
        self.store_failing_since, self._store_backoff = None, 0.0

    def _batch_failed(self, requests: list[tuple[bytes, m.Request]], exc: StoreUnavailable,
                      frames: int) -> None:
        """Nothing of the batch was stored: take back every message it would send, and
        hold timed writes back (exponential backoff) so a full or locked store is
        retried calmly instead of in a busy loop. Requests that only read are
        answered again on their own; the others get a clear error."""
        if self.store_failing_since is None:
            self.store_failing_since = self._store_logged_at = self.mono
            log.error("store commit failed (%s); the batch of %d messages is rolled back; "
                      "retrying with backoff", exc, frames)
        elif self.mono - self._store_logged_at >= STORE_LOG_EVERY:
            self._store_logged_at = self.mono
            log.error("the store still fails (%s) after %.0fs; requests get an error until "
                      "it recovers", exc, self.mono - self.store_failing_since)
        self._store_backoff = min(max(self._store_backoff * 2, STORE_RETRY[0]), STORE_RETRY[1])
        self.store_retry_at = time.monotonic() + self._store_backoff
        self.outbox.clear()
        self.acks.clear()
        self.metrics.discard()
        self.parking.fail_step()
        self.store.reclaim_space(exc)
        for ident, req in requests:
            if req.op in admin.READ_ONLY:
                try:
                    with self.store.iteration():
                        self._handle_request(ident, req)
                    continue
                except StoreUnavailable as again:
                    exc = again
            self._send_reply(ident, req.req_id, None, ErrorCode.UNAVAILABLE,
                             f"the broker could not write its store: {exc}")
        self.needs_resync = True

    def _handle_frame(self, frame: Frame, requests: list[tuple[bytes, m.Request]]) -> None:
        ident, data, principal = frame
        try:
            msgs = decode_batch(data)
        except VersionMismatch as exc:
            self.send(ident, m.Error(code=ErrorCode.VERSION.value, message=f"broker: {exc}"))
            return
        except ProtocolError as exc:
            self.intake.warn(peer_name(ident), "dropped a malformed frame from peer %s: %s",
                             peer_name(ident), exc)
            self.send(ident, m.Error(code=ErrorCode.PROTOCOL.value, message=f"malformed frame: {exc}"))
            return
        except Exception:  # a decoder bug must not end the broker: drop the frame
            log.exception("bug while decoding a frame from peer %s; dropped", peer_name(ident))
            return
        agent = self.agents.get(ident)
        if self.guard is not None and not self._permitted(ident, agent, principal, msgs):
            return
        if agent is not None:
            agent.last_seen, agent.last_seen_wall = self.mono, self.now
            agent.reachable = True
        for msg in msgs:
            self._handle_message(ident, msg, requests, principal)

    def _permitted(self, ident: bytes, agent: AgentConn | None, principal: Principal | None,
                   msgs: list[Any]) -> bool:
        """With CURVE: may this key send these messages? A frame is handled whole
        or not at all. Each refused request gets its error reply; agent messages
        one Error. An agent is bound to the key it said Hello with, so no other
        key can speak in its name."""
        if agent is not None and principal is not None and principal.name != agent.key_name:
            why = f"the key {principal.name!r} is not the one agent {agent.agent_id} connected with"
            refusals: list[str | None] = [why] * len(msgs)
        else:
            refusals = [forbidden(principal, msg) for msg in msgs]
        if not any(refusals):
            return True
        first = next(why for why in refusals if why)
        agent_refusal = None
        for msg, why in zip(msgs, refusals):
            if isinstance(msg, m.Request):
                self._send_reply(ident, msg.req_id, None, ErrorCode.FORBIDDEN,
                                 why or f"refused with the rest of its frame: {first}")
            else:
                agent_refusal = agent_refusal or why or first
        if agent_refusal:
            self.intake.warn(peer_name(ident), "refused agent messages from peer %s: %s",
                             peer_name(ident), agent_refusal)
            self.send(ident, m.Error(code=ErrorCode.FORBIDDEN.value, message=agent_refusal))
        return False

    def _handle_message(self, ident: bytes, msg: Any, requests: list[tuple[bytes, m.Request]],
                        principal: Principal | None = None) -> None:
        if isinstance(msg, m.Request):
            requests.append((ident, msg))  # first: the store may fail while handling it
            if self._batch_error is None:  # else _batch_failed answers it
                try:
                    self._handle_request(ident, msg)
                except StoreUnavailable as exc:
                    self._batch_error = exc
            return
        if self._batch_error is not None:
            return  # the batch is lost: agents send their messages again
        handler = agent_handlers.HANDLERS.get(type(msg))
        if handler is None:
            self.send(ident, m.Error(code=ErrorCode.PROTOCOL.value,
                                     message=f"the broker does not accept {msg.TYPE} messages"))
            return
        mark = len(self.outbox)
        try:
            with self.store.transaction(), self.metrics.transaction():
                handler(self, ident, msg, principal.name if principal is not None else None)
        except Exception as exc:
            self._batch_error = self.store.failure(exc)
            if self._batch_error is not None:  # the store itself fails: the batch is lost
                return
            log.exception("bug while handling %s from %s", msg.TYPE, peer_name(ident))
            del self.outbox[mark:]
            self.needs_resync = True

    def _handle_request(self, ident: bytes, req: m.Request) -> None:
        mark = len(self.outbox)
        try:
            with self.store.transaction(), self.metrics.transaction():
                result = admin.handle(self, ident, req)
        except (SpecError, config_keys.ConfigError) as exc:
            self._send_reply(ident, req.req_id, None, ErrorCode.INVALID, str(exc))
        except JobError as exc:
            self._send_reply(ident, req.req_id, None, ErrorCode(exc.code), str(exc))
        except StaleState as exc:  # the job changed between two steps of the request
            self._send_reply(ident, req.req_id, None, ErrorCode.CONFLICT, str(exc))
        except Exception as exc:
            failed = self.store.failure(exc)
            if failed is not None:  # the store itself fails: abandon the batch
                raise failed from exc
            log.exception("bug while handling request %s", req.op)
            del self.outbox[mark:]
            self.needs_resync = True
            self._send_reply(ident, req.req_id, None, ErrorCode.INTERNAL,
                             f"internal error in the broker while handling {req.op!r}; see its log")
        else:
            if result is not admin.PARKED:
                self._send_reply(ident, req.req_id, result)

    # --- timed work ---------------------------------------------------------

    def tick(self, judge_leases: bool = True) -> None:
        """Timed work: expiries, heartbeats, released leases, due jobs, dispatch."""
        self._expire_parked()
        if self.mono >= self._next_maintenance:
            self._next_maintenance = self.mono + min(0.25, self.config["heartbeat_sec"] / 2)
            self._maintain(judge_leases)  # may want the next one sooner
        while self.undelivered:
            token = self.undelivered.pop()
            owner = self.agents.owner(token)
            if owner is not None:
                owner.forget(token)
            self.jobs.release(token, self.now)
        if self.batches.work:
            self._advance_batch()
        if self.next_due is not None and self.now >= self.next_due:
            promoted = self.store.promote_due(self.now)
            self.next_due = self.store.next_due()
            if promoted:
                self.dirty = True
        if self.dirty:
            self.dispatch()

    def _advance_batch(self) -> None:
        """One slice of a committed or aborted batch (broker/batches.py)."""
        visible, waiting, finished = self.batches.advance(self.now)
        if visible:
            self.metrics.enqueued(visible)
            self.dirty = True
        if waiting is not None:
            self.schedule(waiting)
        if finished is not None:
            self.notify(f"batch:{finished.id}")

    def _expire_parked(self) -> None:
        for parked, result in self.parking.expire(self.mono):
            self._send_reply(parked.ident, parked.req_id, result)

    def _maintain(self, judge_leases: bool) -> None:
        heartbeat, lease = self.config["heartbeat_sec"], self.config["lease_sec"]
        if self.guard is not None and self.guard.changed():
            self._drop_revoked()
        self.batches.expire(self.mono, self.config["batch_idle_sec"], self.now)
        for agent in self.agents:
            if agent.departing_since is not None:
                if not self._still_connected(agent) or \
                        self.mono - agent.departing_since > DEPARTURE_WAIT:
                    self.forget_agent(agent)
                else:  # it closes in a moment: look again soon (`worker stop` waits on it)
                    self._next_maintenance = min(self._next_maintenance, self.mono + DEPARTURE_PROBE)
            elif judge_leases and self.mono - agent.last_seen > lease:
                log.warning("agent %s lost: no heartbeat for %.1fs; %d jobs will run again",
                            agent.agent_id, self.mono - agent.last_seen, len(agent.inflight))
                self.drop_agent(agent, Outcome.LEASE_LOST)
            elif self.mono - agent.last_sent >= heartbeat:
                self.send(agent.ident, m.Heartbeat())
        for token in self.orphans.expired(self.mono):
            log.warning("attempt %d: no agent reclaimed it after the broker restarted", token)
            # Its agent never came back: it may have started it (counted).
            self.end_lease(token, Outcome.LEASE_LOST, may_release=False)
        self.trimmer.tick(self.mono)

    def _drop_revoked(self) -> None:
        """The allow-list changed: agents whose key is gone are lost at once (their
        jobs run again elsewhere) and hear why; their frames are refused from now on."""
        for agent in self.agents:
            if agent.key_name is not None and not self.guard.allows_agent(agent.key_name):
                log.warning("agent %s lost: its key %r was revoked; %d jobs will run again",
                            agent.agent_id, agent.key_name, len(agent.inflight))
                self.send(agent.ident, m.Error(code=ErrorCode.FORBIDDEN.value,
                                               message=f"the key {agent.key_name!r} was revoked"))
                self.drop_agent(agent, Outcome.LEASE_LOST)

    def dispatch(self) -> None:
        """Lease due jobs to agents, one per agent per round: first to free slots
        across all agents, then to agents that hold jobs ahead (see agents.py).

        Once an agent with some labels finds nothing to claim, no other agent
        with the same labels looks again this time: no job becomes claimable
        meanwhile. So a thousand idle agents cost one claim, not a thousand."""
        self.dirty = False
        dry: set[str | None] = set()  # label sets that found nothing to claim
        gate = self.queues.gate()
        holders: list[AgentConn] | None = None  # agents holding jobs ahead, found once
        asked = 0  # Revokes sent and not yet answered
        for prefetch in (False, True):
            agents = self.agents.with_credit(prefetch)
            while agents:
                next_round = []
                for agent in agents:
                    if agent.labels_json not in dry and self._dispatch_one(agent, gate):
                        if agent.free(prefetch) > 0:
                            next_round.append(agent)
                        continue
                    dry.add(agent.labels_json)
                    if not prefetch:
                        if holders is None:
                            holders = [a for a in self.agents if a.held_back() > 0]
                            asked = sum(len(a.revoked) for a in self.agents)
                        if holders:
                            asked = self._revoke_for(agent, holders, asked)
                agents = next_round

    def _dispatch_one(self, agent: AgentConn, gate: Gate) -> bool:
        claimed = self.store.claim(self.now, agent.agent_id, agent.owner, agent.labels_json,
                                   gate.closed)
        if claimed is None:
            return False
        job, token = claimed
        gate.took(job.queue)
        agent.inflight.add(token)
        agent.unstarted.add(token)
        self.send(agent.ident, m.Dispatch(
            token=token, job_id=job.id, attempt=job.attempts + 1, command=job.command,
            timeout_sec=job.timeout_sec, env=job.env, cwd=job.cwd))
        self._job_changed(job)
        return True

    def _revoke_for(self, idle: AgentConn, holders: list[AgentConn], asked: int) -> int:
        """``idle`` has free slots and nothing to claim: ask ``holders`` to give back
        jobs they hold ahead that it could run, so no job waits while it idles.
        ``asked`` counts Revokes not answered yet; returns it updated."""
        wanted = idle.free(prefetch=False) - asked
        for holder in holders:
            if wanted <= 0:
                break
            if holder is idle or holder.held_back() <= len(holder.revoked):
                continue
            for token in sorted(holder.unstarted - holder.revoked, reverse=True):
                if wanted <= 0 or holder.held_back() <= len(holder.revoked):
                    break
                job = self.store.job_by_lease(token)
                if job is None or not idle.can_run(job.requires):
                    continue
                holder.revoked.add(token)
                self.send(holder.ident, m.Revoke(token=token))
                wanted -= 1
                asked += 1
        return asked

    # --- shared helpers for handlers ------------------------------------------

    def _still_connected(self, agent: AgentConn) -> bool:
        """Probe a departing agent: ROUTER_MANDATORY refuses a closed connection."""
        try:
            self.socket.send_multipart([agent.ident, encode(m.Heartbeat())], zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def end_leases(self, agent: AgentConn, outcome: Outcome, said_bye: bool = False) -> None:
        """End every lease of ``agent``, which is gone. Its jobs start in the order
        they were dispatched (token order), so the oldest ones it was not heard to
        start, up to its slot count, may have started just before it went (a Started
        lost with it, or a job that killed it): they count as failed attempts, as a
        lease that started does. The others it can only have held: they go back
        as they were (``end_lease``). An agent that ``said_bye`` reported every job
        it started first, so none of those it was not heard to start did."""
        unheard = sorted(agent.unstarted & agent.inflight)
        held = set(unheard if said_bye else unheard[agent.slots:])
        for token in sorted(agent.inflight):
            self.end_lease(token, outcome, may_release=token in held)
        agent.inflight.clear()
        agent.unstarted.clear()
        agent.revoked.clear()
        self.dirty = True

    def drop_agent(self, agent: AgentConn, outcome: Outcome) -> None:
        """Forget an agent; its leases end as failed attempts with ``outcome``."""
        self.end_leases(agent, outcome)
        self.forget_agent(agent)

    def forget_agent(self, agent: AgentConn) -> None:
        """Forget an agent that is gone. It holds no lease by now, unless the batch of
        its Bye failed and the resync gave them back: those end as at a Bye."""
        if agent.inflight:
            self.end_leases(agent, Outcome.LEASE_LOST, said_bye=agent.departing_since is not None)
        self.agents.remove(agent)
        self.trimmer.departed()
        self.notify("agents")

    def depart(self, agent: AgentConn) -> None:
        """The agent said Bye: it counts as gone once its connection has closed."""
        agent.departing_since = self.mono
        self._next_maintenance = min(self._next_maintenance, self.mono + 0.02)

    def end_lease(self, token: int, outcome: Outcome, may_release: bool) -> None:
        """Attempt ``token`` will not report. With ``may_release``, an attempt that
        never started (a dispatch lost on the way, a job an agent held ready) gives
        its job back as it was; otherwise the attempt ends as failed with ``outcome``."""
        attempt = self.store.attempt(token)
        if (may_release and attempt is not None and attempt.started_at is None
                and attempt.finished_at is None):
            self.orphans.discard(token)
            self.jobs.release(token, self.now)
            self.dirty = True
        else:
            self.finish_attempt(token, outcome)

    def finish_attempt(self, token: int, outcome: Outcome, *, exit_code: int | None = None,
                       detail: str = "", started_at: float | None = None,
                       finished_at: float | None = None, pid: int | None = None) -> None:
        """End attempt ``token`` (from a result, or because its agent is gone)."""
        self.orphans.discard(token)
        self.jobs.finish(token, outcome, exit_code=exit_code, detail=detail, started_at=started_at,
                         finished_at=self.now if finished_at is None else finished_at, now=self.now,
                         pid=pid)
        self.notify(f"out:{token}")  # `logs --follow` learns the attempt ended
        self.dirty = True

    def resync(self) -> None:
        """Rebuild lease bookkeeping from the store (at start and after a failed batch)."""
        self.needs_resync = False
        by_owner: dict[bytes | None, set[int]] = defaultdict(set)
        unstarted: set[int] = set()
        agent_ids: dict[int, str | None] = {}
        for token, agent_id, owner, started in self.store.leases():
            by_owner[owner].add(token)
            agent_ids[token] = agent_id
            if not started:
                unstarted.add(token)
        for agent in self.agents:
            agent.inflight = by_owner.pop(agent.owner, set())
            # From the store: a Reject or a Started of the failed batch is gone, and
            # its Revoke was never sent; a held job is asked for again when needed.
            agent.unstarted = agent.inflight & unstarted
            agent.revoked.clear()
        self.orphans.keep_only(set(agent_ids))
        deadline = self.mono + self.config["lease_sec"]
        for owner, tokens in by_owner.items():
            for token in tokens:
                self.orphans.add(token, agent_ids[token], owner, deadline)
        self.next_due = self.store.next_due()
        self.queues.load()  # a rule changed in a batch that failed is gone
        self.batches.load(self.mono)
        self.dirty = True

    def _job_changed(self, job: Job) -> None:
        self.metrics.job_changed(job)
        if job.state in lifecycle.RUNNABLE:
            self.schedule(job.run_at)
        self.notify(f"job:{job.id}")

    def schedule(self, run_at: float) -> None:
        """A job becomes claimable at ``run_at``: dispatch now, or wake the loop then."""
        if run_at <= self.now:
            self.dirty = True
        elif self.next_due is None or run_at < self.next_due:
            self.next_due = run_at

    def notify(self, key: str) -> None:
        for parked, result in self.parking.notify(key):
            self._send_reply(parked.ident, parked.req_id, result)

    def park(self, ident: bytes, req_id: int, key: str, hold: float, check, on_timeout) -> Any:
        self.parking.park(Parked(ident, req_id, key, self.mono + hold, check, on_timeout))
        return admin.PARKED

    # --- sending --------------------------------------------------------------

    def send(self, ident: bytes, msg: Any) -> None:
        self.outbox.append((ident, msg))

    def ack(self, ident: bytes, token: int) -> None:
        self.acks[ident].append(token)

    def ack_output(self, ident: bytes, size: int) -> None:
        """Output received (stored or not): it frees the agent's send window. Kept
        apart from ``acks``, which a failed batch takes back."""
        self.output_received[ident] += size

    def rewind_output(self, ident: bytes, token: int, stream: int, stored_end: int) -> None:
        """A chunk came after one that was lost (its batch failed): ask for a resend."""
        self.rewinds[ident][(token, stream)] = stored_end

    def _send_reply(self, ident: bytes, req_id: int, result: Any,
                    code: ErrorCode | None = None, error: str | None = None) -> None:
        self.send(ident, m.Reply(req_id=req_id, ok=code is None, result=result,
                                 error_code=code.value if code else None, error=error))

    def _flush(self) -> None:
        self.metrics.commit()  # after the commit of everything staged so far
        for ident in self.acks.keys() | self.output_received.keys() | self.rewinds.keys():
            rewind = [[token, stream, end]
                      for (token, stream), end in self.rewinds.get(ident, {}).items()]
            self.outbox.append((ident, m.Ack(tokens=self.acks.get(ident, []),
                                             output_bytes=self.output_received.get(ident, 0),
                                             rewind=rewind)))
        self.acks.clear()
        self.output_received.clear()
        self.rewinds.clear()
        outbox, self.outbox = self.outbox, []
        by_peer: dict[bytes, list[Any]] = defaultdict(list)
        for ident, msg in outbox:
            by_peer[ident].append(msg)
        for ident, msgs in by_peer.items():
            agent = self.agents.get(ident)
            # An agent takes it in as few frames as fit; a client, one reply per frame.
            for batch in (batches(msgs) if agent is not None else [[msg] for msg in msgs]):
                self._send_frame(ident, agent, batch)

    def _send_frame(self, ident: bytes, agent: AgentConn | None, msgs: list[Any]) -> None:
        frame = encode_batch(msgs)
        self.trimmer.churned(len(frame))
        try:
            self.socket.send_multipart([ident, frame], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.undelivered.extend(msg.token for msg in msgs if isinstance(msg, m.Dispatch))
            if agent is not None:
                agent.revoked.difference_update(
                    msg.token for msg in msgs if isinstance(msg, m.Revoke))
            if agent is not None and agent.reachable:
                # Not connected right now: dispatch nothing more to it until
                # it speaks again (or its lease expires).
                agent.reachable = False
                log.info("agent %s is unreachable: %s", agent.agent_id, exc)
            return
        if agent is not None:
            agent.last_sent = self.mono
