"""The broker loop: one thread, one ROUTER socket, one ``zmq.Poller``.

Each iteration receives a batch of frames and handles them, plus the timed
work (``tick``), inside one SQLite transaction with a savepoint per message.
Replies and dispatches go to an outbox that is sent only after the commit, so
no peer ever hears of a change that a crash could undo (group commit). What
one iteration has for an agent leaves in one frame (acks, dispatches).
The loop sleeps in ``poll`` until a frame arrives, the next heartbeat or
lease check is due, or the earliest scheduled ``run_at`` comes. It never
polls the database for work.

The loop owns the socket, the inbox and the store's failure state. What the
handlers work with (store, services, agents, leases, outbox, clock) is the
``Context`` (broker/context.py); ``step`` can be driven one iteration at a
time with any clock (``now``), as the unit tests do.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import zmq

from queuectl.keys import Principal
from queuectl.proto import (
    MAX_FRAME,
    ErrorCode,
    ProtocolError,
    VersionMismatch,
    batches,
    decode_batch,
    encode,
    encode_batch,
    ops,
)
from queuectl.proto import config as config_keys
from queuectl.proto import messages as m
from queuectl.proto.jobspec import SpecError
from queuectl.proto.states import Outcome

from . import admin, agent_handlers
from .agents import AgentConn, Registry
from .auth import Guard, forbidden
from .context import Clock, Context
from .dispatch import dispatch
from .inbox import STEP_SECONDS, Frame, Inbox
from .intake import peer_name
from .jobs import JobError
from .memory import Trimmer
from .parking import PARKED
from .store import StaleState, Store, StoreUnavailable
from .storefile import CHECK_EVERY, StoreFiles

log = logging.getLogger(__name__)

BATCH = 512  # frames handled per transaction
STORE_RETRY = (0.1, 2.0)  # backoff bounds (seconds) for timed writes while the store fails
STORE_LOG_EVERY = 10.0    # seconds between log lines about a store that keeps failing
DEPARTURE_WAIT = 5.0  # seconds a departing agent's connection may take to close
DEPARTURE_PROBE = 0.02  # seconds between two looks at a departing agent's connection
LINGER = 0.001  # seconds the loop may wait for more frames from busy agents (_linger)



class Broker:
    """The loop. Handlers and the lease table see only ``ctx`` (broker/context.py)."""

    def __init__(self, store: Store, endpoint: str, guard: Guard | None = None):
        self.store = store
        self.endpoint = endpoint
        self.guard = guard
        self.config: dict[str, Any] = {**config_keys.defaults(), **store.config()}
        self.trimmer = Trimmer()
        self.clock = Clock(time.time(), time.monotonic())
        self.ctx = Context(store, self.config, self.clock, on_departed=self.trimmer.departed)
        self.needs_resync = False
        self.stopping = False
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
        self.socket: Any = None  # the ROUTER once bound (a test may put a stand-in)

    @property
    def agents(self) -> Registry:
        return self.ctx.agents

    # --- lifecycle of the process ----------------------------------------

    def bind(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
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
        self._set_clock(None)
        ctx = self.ctx
        with self.store.transaction():
            ctx.batches.recover(ctx.now, ctx.mono)
            self.resync()
            ctx.metrics.seed(self.store.finished_since(ctx.now - 3600), ctx.now)
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
        sock, guard = self.socket, self.guard
        frames: list[Frame] = []
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
                self.ctx.intake.warn(peer_name(parts[0]), "dropped a message of %d frames "
                                     "(expected identity + 1) from peer %s", len(parts),
                                     peer_name(parts[0]))
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
        for parked in self.ctx.parking.drop_all():
            self.ctx.outbox.reply(parked.ident, parked.req_id, None, ErrorCode.UNAVAILABLE,
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
        ctx = self.ctx
        interval = min(0.25, self.config["heartbeat_sec"] / 2)
        backoff = self.store_retry_at - time.monotonic()
        if backoff > 0:  # the store failed: timed writes wait until then
            return int(min(backoff, interval) * 1000) + 1
        if ctx.leases.undelivered or ctx.dirty or ctx.batches.work or self.inbox:
            return 0
        wait = ctx.next_maintenance - time.monotonic()
        wait = min(wait, interval)
        if ctx.next_due is not None:
            wait = min(wait, ctx.next_due - time.time())
        deadline = ctx.parking.next_deadline()
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        return max(0, int(wait * 1000) + 1)

    # --- one iteration -----------------------------------------------------

    def _set_clock(self, now: tuple[float, float] | None) -> None:
        self.clock.now, self.clock.mono = now if now is not None else (time.time(),
                                                                       time.monotonic())

    def step(self, frames: list[Frame], budget: float | None = None,
             now: tuple[float, float] | None = None) -> None:
        """Handle ``frames`` and the timed work in one transaction, then send. With a
        ``budget`` (seconds), frames not reached by then go back to the inbox.
        ``now`` is the iteration's (wall, monotonic) time; by default the clocks'."""
        self._set_clock(now)
        ctx, mono = self.ctx, self.clock.mono
        started = time.monotonic()
        if mono - self._files_checked_at >= CHECK_EVERY:
            # Before the batch: nothing of it may be acknowledged into a file
            # that the store's path no longer names.
            self._files_checked_at = mono
            self.files.check()
        requests: list[tuple[bytes, m.Request]] = []  # answered again if the batch fails
        timed = mono >= self.store_retry_at
        writes = self.store.total_changes()
        self._batch_error = None
        try:
            with self.store.iteration():
                for done, frame in enumerate(frames):
                    if budget is not None and done and time.monotonic() - started > budget:
                        self.inbox.put_back(frames[done:])
                        break
                    self._handle_frame(frame, requests)
                if self._batch_error is not None:  # every request of the batch was collected
                    raise self._batch_error
                if self._read_all and not self.inbox:
                    self._drained_at = mono
                if timed:
                    # Judge leases with an empty inbox: a heartbeat still queued
                    # behind a full batch must not count as missing. Under
                    # overload lasting a whole lease, judge anyway: ROUTER reads
                    # its peers in turn, so a live agent's heartbeat is in every
                    # full batch, and a dead agent must not go unnoticed forever.
                    self.tick(judge_leases=mono - self._drained_at < 1e-9
                              or mono - self._drained_at > self.config["lease_sec"])
                else:
                    self._expire_parked()
        except StoreUnavailable as exc:
            self._batch_failed(requests, exc, len(frames))
        else:
            ctx.parking.commit_step()
            if self.store_failing_since is not None and self.store.total_changes() > writes:
                self._store_recovered(self.store_failing_since)
        if self.needs_resync:
            try:
                with self.store.iteration():
                    self.resync()
            except StoreUnavailable as exc:
                self.needs_resync = True
                log.error("could not read the store to resync (%s); retrying", exc)
        self._flush()
        self._discount_deafness(time.monotonic() - started)

    def _discount_deafness(self, duration: float) -> None:
        """A long step (a huge batch) is time the broker could not hear anyone:
        move every lease clock forward by it, so no agent is lost for our delay."""
        if duration > self.config["heartbeat_sec"]:
            log.info("a loop iteration took %.1fs; lease clocks extended by that much", duration)
            self.ctx.leases.extend(duration)

    def _store_recovered(self, failing_since: float) -> None:
        log.warning("the store accepts writes again after %.1fs of failures",
                    self.clock.mono - failing_since)
        self.store_failing_since, self._store_backoff = None, 0.0

    def _batch_failed(self, requests: list[tuple[bytes, m.Request]], exc: StoreUnavailable,
                      frames: int) -> None:
        """Nothing of the batch was stored: take back every message it would send, and
        hold timed writes back (exponential backoff) so a full or locked store is
        retried calmly instead of in a busy loop. Requests that only read are
        answered again on their own; the others get a clear error."""
        ctx, mono = self.ctx, self.clock.mono
        if self.store_failing_since is None:
            self.store_failing_since = self._store_logged_at = mono
            log.error("store commit failed (%s); the batch of %d messages is rolled back; "
                      "retrying with backoff", exc, frames)
        elif mono - self._store_logged_at >= STORE_LOG_EVERY:
            self._store_logged_at = mono
            log.error("the store still fails (%s) after %.0fs; requests get an error until "
                      "it recovers", exc, mono - self.store_failing_since)
        self._store_backoff = min(max(self._store_backoff * 2, STORE_RETRY[0]), STORE_RETRY[1])
        self.store_retry_at = time.monotonic() + self._store_backoff
        ctx.outbox.discard()
        ctx.metrics.discard()
        ctx.parking.fail_step()
        self.store.reclaim_space(exc)
        for ident, req in requests:
            op = ops.OPS.get(req.op)
            if op is not None and op.read_only:
                try:
                    with self.store.iteration():
                        self._handle_request(ident, req)
                    continue
                except StoreUnavailable as again:
                    exc = again
            ctx.outbox.reply(ident, req.req_id, None, ErrorCode.UNAVAILABLE,
                             f"the broker could not write its store: {exc}")
        self.needs_resync = True

    def _handle_frame(self, frame: Frame, requests: list[tuple[bytes, m.Request]]) -> None:
        ident, data, principal = frame
        ctx = self.ctx
        try:
            msgs = decode_batch(data)
        except VersionMismatch as exc:
            ctx.send(ident, m.Error(code=ErrorCode.VERSION.value, message=f"broker: {exc}"))
            return
        except ProtocolError as exc:
            ctx.intake.warn(peer_name(ident), "dropped a malformed frame from peer %s: %s",
                            peer_name(ident), exc)
            ctx.send(ident, m.Error(code=ErrorCode.PROTOCOL.value,
                                    message=f"malformed frame: {exc}"))
            return
        except Exception:  # a decoder bug must not end the broker: drop the frame
            log.exception("bug while decoding a frame from peer %s; dropped", peer_name(ident))
            return
        agent = ctx.agents.get(ident)
        if self.guard is not None and not self._permitted(ident, agent, principal, msgs):
            return
        if agent is not None:
            agent.last_seen, agent.last_seen_wall = ctx.mono, ctx.now
            agent.reachable = True
        for msg in msgs:
            self._handle_message(ident, msg, requests, principal)

    def _permitted(self, ident: bytes, agent: AgentConn | None, principal: Principal | None,
                   msgs: list[Any]) -> bool:
        """With CURVE: may this key send these messages? A frame is handled whole
        or not at all. Each refused request gets its error reply; agent messages
        one Error. An agent is bound to the key it said Hello with, so no other
        key can speak in its name."""
        ctx = self.ctx
        if agent is not None and principal is not None and principal.name != agent.key_name:
            why = f"the key {principal.name!r} is not the one agent {agent.agent_id} connected with"
            refusals: list[str | None] = [why] * len(msgs)
        else:
            refusals = [forbidden(principal, msg) for msg in msgs]
        if not any(refusals):
            return True
        first = next(why for why in refusals if why)
        agent_refusal = None
        for msg, refusal in zip(msgs, refusals, strict=True):
            if isinstance(msg, m.Request):
                ctx.outbox.reply(ident, msg.req_id, None, ErrorCode.FORBIDDEN,
                                 refusal or f"refused with the rest of its frame: {first}")
            else:
                agent_refusal = agent_refusal or refusal or first
        if agent_refusal:
            ctx.intake.warn(peer_name(ident), "refused agent messages from peer %s: %s",
                            peer_name(ident), agent_refusal)
            ctx.send(ident, m.Error(code=ErrorCode.FORBIDDEN.value, message=agent_refusal))
        return False

    def _handle_message(self, ident: bytes, msg: Any, requests: list[tuple[bytes, m.Request]],
                        principal: Principal | None = None) -> None:
        ctx = self.ctx
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
            ctx.send(ident, m.Error(code=ErrorCode.PROTOCOL.value,
                                    message=f"the broker does not accept {msg.TYPE} messages"))
            return
        mark = ctx.outbox.mark()
        try:
            with self.store.transaction(), ctx.metrics.transaction():
                handler(ctx, ident, msg, principal.name if principal is not None else None)
        except Exception as exc:
            self._batch_error = self.store.failure(exc)
            if self._batch_error is not None:  # the store itself fails: the batch is lost
                return
            log.exception("bug while handling %s from %s", msg.TYPE, peer_name(ident))
            ctx.outbox.rollback(mark)
            self.needs_resync = True

    def _handle_request(self, ident: bytes, req: m.Request) -> None:
        ctx = self.ctx
        reply = ctx.outbox.reply
        mark = ctx.outbox.mark()
        try:
            with self.store.transaction(), ctx.metrics.transaction():
                result = admin.handle(ctx, ident, req)
        except (SpecError, config_keys.ConfigError) as exc:
            reply(ident, req.req_id, None, ErrorCode.INVALID, str(exc))
        except JobError as exc:
            reply(ident, req.req_id, None, ErrorCode(exc.code), str(exc))
        except StaleState as exc:  # the job changed between two steps of the request
            reply(ident, req.req_id, None, ErrorCode.CONFLICT, str(exc))
        except Exception as exc:
            failed = self.store.failure(exc)
            if failed is not None:  # the store itself fails: abandon the batch
                raise failed from exc
            log.exception("bug while handling request %s", req.op)
            ctx.outbox.rollback(mark)
            self.needs_resync = True
            reply(ident, req.req_id, None, ErrorCode.INTERNAL,
                  f"internal error in the broker while handling {req.op!r}; see its log")
        else:
            if result is not PARKED:
                reply(ident, req.req_id, result)

    # --- timed work ---------------------------------------------------------

    def tick(self, judge_leases: bool = True) -> None:
        """Timed work: expiries, heartbeats, released leases, due jobs, dispatch."""
        ctx = self.ctx
        self._expire_parked()
        if ctx.mono >= ctx.next_maintenance:
            ctx.next_maintenance = ctx.mono + min(0.25, self.config["heartbeat_sec"] / 2)
            self._maintain(judge_leases)  # may want the next one sooner
        ctx.leases.release_undelivered()
        if ctx.batches.work:
            self._advance_batch()
        if ctx.next_due is not None and ctx.now >= ctx.next_due:
            promoted = self.store.promote_due(ctx.now)
            ctx.next_due = self.store.next_due()
            if promoted:
                ctx.wake()
        if ctx.dirty:
            dispatch(ctx)

    def _advance_batch(self) -> None:
        """One slice of a committed or aborted batch (broker/batches.py)."""
        ctx = self.ctx
        visible, waiting, finished = ctx.batches.advance(ctx.now)
        if visible:
            ctx.metrics.enqueued(visible)
            ctx.wake()
        if waiting is not None:
            ctx.schedule(waiting)
        if finished is not None:
            ctx.notify(f"batch:{finished.id}")

    def _expire_parked(self) -> None:
        for parked, result in self.ctx.parking.expire(self.clock.mono):
            self.ctx.outbox.reply(parked.ident, parked.req_id, result)

    def _maintain(self, judge_leases: bool) -> None:
        ctx, mono = self.ctx, self.clock.mono
        heartbeat, lease = self.config["heartbeat_sec"], self.config["lease_sec"]
        if self.guard is not None and self.guard.changed():
            self._drop_revoked(self.guard)
        ctx.batches.expire(mono, self.config["batch_idle_sec"], ctx.now)
        for agent in ctx.agents:
            if agent.departing_since is not None:
                if not self._still_connected(agent) or \
                        mono - agent.departing_since > DEPARTURE_WAIT:
                    ctx.leases.forget_agent(agent)
                else:  # it closes in a moment: look again soon (`worker stop` waits on it)
                    ctx.maintain_by(mono + DEPARTURE_PROBE)
            elif judge_leases and mono - agent.last_seen > lease:
                log.warning("agent %s lost: no heartbeat for %.1fs; %d jobs will run again",
                            agent.agent_id, mono - agent.last_seen, len(agent.inflight))
                ctx.leases.drop_agent(agent, Outcome.LEASE_LOST)
            elif mono - agent.last_sent >= heartbeat:
                ctx.send(agent.ident, m.Heartbeat())
        ctx.leases.expire_orphans()
        self.trimmer.tick(mono)

    def _drop_revoked(self, guard: Guard) -> None:
        """The allow-list changed: agents whose key is gone are lost at once (their
        jobs run again elsewhere) and hear why; their frames are refused from now on."""
        for agent in self.ctx.agents:
            if agent.key_name is not None and not guard.allows_agent(agent.key_name):
                log.warning("agent %s lost: its key %r was revoked; %d jobs will run again",
                            agent.agent_id, agent.key_name, len(agent.inflight))
                revoked = f"the key {agent.key_name!r} was revoked"
                self.ctx.send(agent.ident, m.Error(code=ErrorCode.FORBIDDEN.value, message=revoked))
                self.ctx.leases.drop_agent(agent, Outcome.LEASE_LOST)

    def _still_connected(self, agent: AgentConn) -> bool:
        """Probe a departing agent: ROUTER_MANDATORY refuses a closed connection."""
        try:
            self.socket.send_multipart([agent.ident, encode(m.Heartbeat())], zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def resync(self) -> None:
        """Rebuild what the loop keeps in memory from the store (at start and
        after a failed batch): leases, the next due time, queue rules, batches."""
        ctx = self.ctx
        self.needs_resync = False
        ctx.leases.resync()
        ctx.next_due = self.store.next_due()
        ctx.queues.load()  # a rule changed in a batch that failed is gone
        ctx.batches.load(ctx.mono)
        ctx.wake()

    # --- sending --------------------------------------------------------------

    def _flush(self) -> None:
        ctx = self.ctx
        ctx.metrics.commit()  # after the commit of everything staged so far
        for ident, msgs in ctx.outbox.take().items():
            agent = ctx.agents.get(ident)
            # An agent takes it in as few frames as fit; a client, one reply per frame.
            for batch in (batches(msgs) if agent is not None else [[msg] for msg in msgs]):
                self._send_frame(ident, agent, batch)

    def _send_frame(self, ident: bytes, agent: AgentConn | None, msgs: list[Any]) -> None:
        frame = encode_batch(msgs)
        self.trimmer.churned(len(frame))
        try:
            self.socket.send_multipart([ident, frame], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.ctx.leases.undelivered.extend(
                msg.token for msg in msgs if isinstance(msg, m.Dispatch))
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
            agent.last_sent = self.clock.mono
