"""The publisher process: ZeroMQ PULL in, RabbitMQ (publisher confirms) out.

One asyncio loop holds everything: the PULL socket (drained in batches with
NOBLOCK, the loop watching its FD: zmq.asyncio's futures cost more per wake-up
than handling an envelope, see ``_on_readable``), the pika connection
(``publisher.amqp``), the pure pipeline (``publisher.pipeline``), the bounded
outbox (``publisher.outbox``), and a once-a-second housekeeping task (status
file, metrics, gap state). The first SIGTERM stops intake, waits (bounded) for
outstanding confirms and spools unpublished account events; a second exits.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import orjson
import pika.exceptions
import zmq

from common import addresses, classify
from common.classify import UnknownTopic
from common.config import Settings, settings_or_exit
from common.envelope import BATCH, Envelope, EnvelopeError, Socket, unpack
from common.freshness import BOOK_CLASSES, TOO_OLD
from common.logs import RateLimited, get_logger, setup_logging
from common.runtime import StopSignals, lower_priority, tune_gc
from publisher import events as evmod, metrics
from publisher.amqp import READY, Broker, backoff_delay
from publisher.events import Event, FrameError
from publisher.outbox import EventSpool, Outbox
from publisher.pipeline import Pipeline
from publisher.status import status_doc, write_json
from publisher import retention

log = get_logger("publisher")

DRAIN_BATCH = 1000
RCVHWM = 8        # messages: ingest sends up to 32 frames in one (ingest/handoff.py HWM, MAX_BATCH)
INTAKE_HIGH_MIN = 500
STOP_DRAIN_S = 15.0          # under supervisord's stopwaitsecs=20
# `supervisorctl stop all` signals ingest at the same moment: keep taking envelopes until it
# has been quiet this long (its last flush included), at most STOP_INTAKE_MAX_S.
STOP_QUIET_S = 0.5
STOP_INTAKE_MAX_S = 3.0
DROP_NOTICE_EVERY_S = 5.0
DEPTH_CHECK_S = 10.0
LATENCY_SAMPLE = 8
# ... and at most this many sampled events a second: an observation (two histograms, a lock and
# mmap writes each) cost ~10 us, 5% of the publisher's CPU in a flood at every 8th event. The
# status file's latency counts still see every event.
OBSERVE_PER_S = 200
# A restoration needed again this soon after the last one waits (backoff up to the cap)
# instead of looping declare -> publish -> return as fast as the broker answers.
RESTORE_AGAIN_S = 10.0
RESTORE_BACKOFF_MAX_S = 5.0
RETENTION_RETRY_MIN_S = 5.0     # retention not applied: retry after 5, 10, 20 ... s
RETENTION_RETRY_MAX_S = 300.0
RESYNC_CHECK_S = 0.1          # how often streams awaiting a snapshot are looked at
MAX_DELIVERED_KEYS = 20_000   # routing keys whose last confirm time is kept (freshness)


class Service:
    def __init__(self, settings: Settings, *, max_envelopes: int | None = None):
        self.s = settings
        self.max_envelopes = max_envelopes
        self.tally = metrics.Tally()
        self.latency = metrics.LatencyCounts()   # received -> confirmed, every event
        max_age = settings.market_max_age_ns()
        self.pipeline = Pipeline(max_age_ns=max_age, clock=time.time_ns)
        self.read_lag = metrics.LagWindow(self.pipeline.exchange_to_received)
        self.spool_dir = settings.run_dir / "spool"
        self.spool = EventSpool(self.spool_dir / "publisher.spool")
        self.outbox = Outbox(settings.publisher_buffer, self.spool, bound_bytes=settings.publisher_buffer_mb << 20,
                             max_age_ns=max_age)
        self.pipeline.on_drop = self.outbox.note_drop
        self.outbox.on_drop = self._on_market_drop
        self.started_at = time.time()
        self.delivered: dict[str, float] = {}     # routing key -> last confirmed by RabbitMQ (epoch s)
        self._control: zmq.Socket | None = None   # to ingest's control socket: resync requests
        self.resync_sent = 0
        self.tally.dropped = self.outbox.dropped
        self.state_file = self.spool_dir / "publisher-streams.json"
        self.status_file = addresses.status_file(settings.run_dir, "publisher")
        self.rl = RateLimited(log)
        self.broker: Broker | None = None
        self.window = settings.confirm_window
        self.retention = "pending"
        self.retention_state = {"applied": False, "how": "pending", "error": None, "attempts": 0,
                                "applied_at": None, "next_attempt_at": None, "ttl_ms": settings.retention_ttl_ms,
                                "max_length": settings.retention_max_length,
                                "account_max_length": settings.retention_account_max_length}
        # An account or system event the broker returned unroutable (its queue or binding was
        # deleted) is held, not counted as delivered, while the topology is declared again;
        # publishing pauses meanwhile so the held events go out again ahead of newer ones.
        self._restore: dict | None = None
        self._restore_cut: dict | None = None      # a restoration the connection loss cut short
        self._held: list[Event] = []
        self._restore_streak = 0
        self._last_restored = -RESTORE_AGAIN_S
        self.topology = {"restorations": 0, "last": None}
        self.outage_since: float | None = None
        self._outage_dropped = self.outbox.dropped.copy()
        self._last_drop_notice = time.monotonic()
        self.queue_depths: dict[str, int] = {}
        self._confirm_n = 0
        self._observe_left, self._observe_until = OBSERVE_PER_S, 0.0
        self._last_depth_check = 0.0
        self._stop = asyncio.Event()
        self._force = False
        self.intake_open = True
        self._handled = 0
        self._sock: zmq.Socket | None = None
        self._psock: zmq.Socket | None = None    # ingest's account frames and system events
        self._pmore: asyncio.Handle | None = None
        self._more: asyncio.Handle | None = None
        # Market events waiting in the outbox beyond which intake pauses while the broker is
        # up: past it we only read (and parse, and build) events to see them expire here. A
        # quarter of the window keeps the window full (acks free it a few dozen at a time) and
        # the wait short: at a full window of 2,000 a saturated publisher held books ~200 ms
        # here on top of the window's own ~200 ms, and most expired on the way.
        self.intake_high = max(self.window // 4, INTAKE_HIGH_MIN)
        self.intake_paused = False
        self.pump_min = max(1, min(64, self.window // 8))   # free window slots worth a pump after acks
        self._last_rx = 0.0

    # -- intake -----------------------------------------------------------------
    def handle(self, parts: list[bytes]) -> None:
        self._handled += 1
        try:
            env = Envelope.decode(parts)
        except EnvelopeError as exc:
            self.tally.bad_input["envelope"] += 1
            self.rl("warning", "bad envelope", error=str(exc))
            return
        self.tally.events_in[env.kind] += 1
        try:
            out = self.pipeline.process(env)
        except UnknownTopic as exc:
            self.tally.bad_input["unknown_topic"] += 1
            self.rl("warning", "no event class for topic", topic=env.topic, endpoint=env.endpoint, error=str(exc))
            return
        except (FrameError, KeyError, TypeError, ValueError) as exc:
            self.tally.bad_input["bad_frame"] += 1
            self.rl("warning", "frame not publishable", topic=env.topic, endpoint=env.endpoint,
                    kind=env.kind, error=str(exc))
            return
        for ev in out:
            if ev.heals:
                self.outbox.heal(ev)
            else:
                self.outbox.add(ev)

    def _on_readable(self) -> None:
        """The frames socket has input: take up to DRAIN_BATCH envelopes, then publish.

        A plain ZeroMQ socket watched by the loop (``add_reader`` on its FD), not
        zmq.asyncio: its futures cost more per wake-up than handling the envelope does,
        which at a few thousand frames/s (one or two per wake-up) was most of the
        publisher's CPU. The FD only signals a change of state, so the socket is read
        until it is empty; when the batch limit stops us first, we come back on the
        next loop turn (after pika's reads, writes and timers) instead of waiting for it.
        """
        self._more = None
        self._on_priority()
        room = self._intake_room()
        if room <= 0:
            self.intake_paused = True
            return
        # Counted in envelopes, not messages: a message from ingest carries up to 32, and a turn
        # that read DRAIN_BATCH of those held the loop (and every event it made) for ~0.5 s.
        recv, take, n, first = self._sock.recv_multipart, self._take, 0, self._handled
        limit, more = min(DRAIN_BATCH, room), True     # more: stopped by a limit, not by an empty socket
        try:
            while n < DRAIN_BATCH and self._handled - first < limit:
                take(recv(zmq.NOBLOCK))
                n += 1
        except zmq.Again:
            more = False
        if n:
            self._last_rx = time.monotonic()
            self.pump()
            if self.pipeline.healer.broken:
                self._ask_resync()
            if self.max_envelopes is not None and self._handled >= self.max_envelopes:
                self.request_stop()
        if more and self._more is None:
            self._more = asyncio.get_running_loop().call_soon(self._on_readable)

    def _on_priority(self) -> None:
        """The priority socket (ingest's account frames and system events): read whenever it has
        input, even while market intake is paused, so a fill never waits behind market frames
        in ZeroMQ's queues; these events go first in the outbox as well."""
        self._pmore = None
        sock = self._psock
        if sock is None:
            return
        recv, take, n, more = sock.recv_multipart, self._take, 0, True
        try:
            while n < DRAIN_BATCH:
                take(recv(zmq.NOBLOCK))
                n += 1
        except zmq.Again:
            more = False
        if n:
            self._last_rx = time.monotonic()
            self.pump()
        if more and self._pmore is None:
            self._pmore = asyncio.get_running_loop().call_soon(self._on_priority)

    def _intake_room(self) -> int:
        """How many envelopes to take now. While the broker takes events, no more than keep
        ``intake_high`` market events waiting here: the rest wait in ingest's buffer, which sends
        books and tickers first and drops what grew too old before anyone parsed it again
        (a saturated publisher otherwise spent its CPU on trades that expired in its outbox).
        While the broker is away, everything is taken as before: account events go to the
        spool and market events are bounded here."""
        b = self.broker
        if b is None or not b.ready or self._restore is not None or not self.intake_open:
            return DRAIN_BATCH
        return self.intake_high - self.outbox.market_waiting

    def _resume_intake(self) -> None:
        """Read again once the market backlog is down to half the mark (or the broker left)."""
        if not self.intake_paused or self._sock is None or self._more is not None or not self.intake_open:
            return
        if self._intake_room() >= min(DRAIN_BATCH, self.intake_high // 2):
            self.intake_paused = False
            self._more = asyncio.get_running_loop().call_soon(self._on_readable)

    async def _drain_until_quiet(self) -> None:
        """At stop: take envelopes until none came for STOP_QUIET_S (bounded), publishing meanwhile."""
        self._on_readable()
        start = time.monotonic()
        end = start + STOP_INTAKE_MAX_S
        while not self._force and time.monotonic() < min(end, max(start, self._last_rx) + STOP_QUIET_S):
            await asyncio.sleep(0.02)
            self.pump()

    def _drain_socket(self) -> None:
        """Take what already sits in our receive queues before closing (it would be lost)."""
        for sock in (self._psock, self._sock):
            while sock is not None:
                try:
                    self._take(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break

    def _take(self, parts: list[bytes]) -> None:
        if parts and parts[0] == BATCH:      # several envelopes in one message
            try:
                envelopes = unpack(parts)
            except EnvelopeError as exc:
                self.tally.bad_input["envelope"] += 1
                self.rl("warning", "bad envelope", error=str(exc))
                return
            for one in envelopes:
                self._take_one(one)
        else:
            self._take_one(parts)

    def _take_one(self, parts: list[bytes]) -> None:
        try:
            self.handle(parts)
        except Exception as exc:    # a bug must cost one envelope, never the intake (or the stop)
            self.tally.bad_input["internal_error"] += 1
            self.rl("error", "envelope not handled", error=repr(exc), exc_info=True)

    # -- output -----------------------------------------------------------------
    def pump(self) -> None:
        b = self.broker
        if b is None or not b.ready or self._restore is not None:
            return
        publish, published = b.publish, self.tally.published
        self.outbox.expire(time.time_ns())
        b.cork()
        try:
            events = self.outbox.pop_many(self.window - len(b.inflight))
            for i, ev in enumerate(events):
                try:
                    publish(ev)
                except pika.exceptions.AMQPError as exc:
                    # the channel or connection is going away (its close callback follows): keep the
                    # event and those after it, first in line for the next channel
                    self.outbox.requeue(events[i:])
                    self.rl("warning", "publish refused by a closing channel; event kept", error=repr(exc))
                    break
                except (TypeError, ValueError) as exc:
                    # can never be encoded (a bug upstream): retrying would block every event behind it
                    self.tally.bad_input["unpublishable"] += 1
                    self.rl("error", "event cannot be encoded; not published", event_id=ev.event_id,
                            event_class=ev.event_class, error=repr(exc))
                    continue
                except BaseException:
                    self.outbox.requeue(events[i + 1:])     # taken out with it, never tried
                    raise
                published[ev.event_class] += 1
        finally:
            b.uncork()
        if self.intake_paused:
            self._resume_intake()

    def _on_ready(self) -> None:
        if self.outage_since is not None:
            self._announce_outage()
        if self._restore_cut is not None:
            # the reconnect declared the whole topology; the held events were requeued at the loss
            r, self._restore_cut = self._restore_cut, None
            self._restored(r, republished=sum(r["returned"].values()))
        self.pump()

    def _announce_outage(self) -> None:
        """Tell consumers (ws-gateway.system) that we could not publish for a while."""
        now = time.time()
        dropped = {c: n - self._outage_dropped[c] for c, n in self.outbox.dropped.items()
                   if n - self._outage_dropped[c]}
        ranges = self.outbox.take_drop_ranges()
        details = {"since": evmod.iso_utc(int(self.outage_since * 1e9)), "until": evmod.iso_utc(int(now * 1e9)),
                   "duration_s": round(now - self.outage_since, 3), "dropped": dropped,
                   "dropped_streams": {k: {"from_seq": a, "to_seq": z, "count": n} for k, (a, z, n) in ranges.items()},
                   "buffered": len(self.outbox), "spooled": self.outbox.spool_depth}
        self.outage_since = None
        log.warning("broker outage over", **{k: v for k, v in details.items() if k != "dropped_streams"})
        self.outbox.add(evmod.system_event("broker_outage", details, recv_ns=time.time_ns()), front=True)

    def _on_confirm(self, settled: list[tuple[Event, float]], ok: bool, now: float) -> None:
        spooled = 0
        if self._restore is not None:
            if ok:
                settled = self._hold_returned(settled)
            else:
                for ev, _ in settled:
                    ev.extra.pop("returned", None)
        if ok:
            confirmed, add, now_ns = self.tally.confirmed, self.latency.add, time.time_ns()
            delivered, now_s = self.delivered, now_ns / 1e9
            if len(delivered) > MAX_DELIVERED_KEYS:
                delivered.clear()
            for ev, _t0 in settled:
                confirmed[ev.event_class] += 1
                delivered[ev.routing_key] = now_s
                if ev.recv_ns:
                    add((now_ns - ev.recv_ns) / 1e6)
                if ev.extra and ev.extra.get("spool"):
                    spooled += 1
            # Every LATENCY_SAMPLE-th confirmed event feeds the Prometheus histograms: an
            # observation costs more than the rest of the confirm handling.
            observe, k = metrics.CONFIRM_LATENCY.observe, LATENCY_SAMPLE
            observe_rc = metrics.RECEIVED_TO_CONFIRMED.observe
            base = self._confirm_n
            if now >= self._observe_until:
                self._observe_left, self._observe_until = OBSERVE_PER_S, now + 1.0
            for i in range((-base) % k, len(settled), k):
                if self._observe_left <= 0:
                    break
                self._observe_left -= 1
                ev, t0 = settled[i]
                observe(now - t0)
                if ev.recv_ns:
                    observe_rc((now_ns - ev.recv_ns) / 1e9)
            self._confirm_n = base + len(settled)
        else:
            for ev, _ in settled:
                self.tally.nacked[ev.event_class] += 1
            self.rl("warning", "broker nacked events", count=len(settled))
            self.outbox.requeue([ev for ev, _ in settled])
        if spooled:
            self.spool.confirmed(spooled)
        if self._restore is not None:
            self._maybe_resume()
        # pika hands over each ack frame of a socket read on its own, RabbitMQ acking a few
        # messages at a time: pumping after each cost a send(2) for a handful of events (the
        # largest single item of a profile under load). While the window is nearly full, the
        # next ack frames free more room first; nothing waits longer than the acks already due.
        b = self.broker
        if b is None or not b.inflight or self.window - len(b.inflight) >= self.pump_min:
            self.pump()

    def _on_lost(self, pending: list[Event], reason: str) -> None:
        self._resume_intake()     # the broker is away: intake takes everything again
        if self.outage_since is None:
            self.outage_since = time.time()
            self._outage_dropped = self.outbox.dropped.copy()
            self.outbox.take_drop_ranges()
        if self._restore is not None:
            self._restore_cut, self._restore = self._restore, None
        if self._held:
            pending, self._held = pending + self._held, []
        if pending:
            for ev in pending:
                ev.extra.pop("returned", None)
            self.tally.republished += len(pending)
            self.outbox.requeue(pending)

    # -- topology restoration -------------------------------------------------------
    def _on_return(self, cls: str, routing_key: str, reply: str, message_id: str) -> None:
        self.tally.returned[cls] += 1
        if cls not in classify.ACCOUNT_CLASSES and cls != "system":
            # no queue bound for market data: nobody wants it
            self.rl("warning", "event returned unroutable", event_class=cls, routing_key=routing_key, reply=reply)
            return
        ev = self.broker.find_inflight(message_id) if self.broker is not None else None
        if ev is None:    # a return comes before its message's confirm: only a bug leads here
            self.rl("error", "returned event not among the unconfirmed; not published again", event_class=cls,
                    routing_key=routing_key, event_id=message_id)
            return
        ev.extra["returned"] = True
        self._begin_restore({"reason": "returned_unroutable", "event_class": cls, "routing_key": routing_key,
                             "reply": reply})
        self._restore["returned"][cls] += 1

    def _on_missing(self, queue: str) -> None:
        """A depth check found an account queue gone (nothing returned yet: no event sent since)."""
        self._begin_restore({"reason": "queue_missing", "queue": queue})

    def _begin_restore(self, trigger: dict) -> None:
        if self._restore is not None:
            return
        now = time.monotonic()
        self._restore_streak = self._restore_streak + 1 if now - self._last_restored < RESTORE_AGAIN_S else 0
        r = self._restore = {"since": time.time(), "trigger": trigger, "returned": Counter(), "declared": False}
        delay = backoff_delay(self._restore_streak, RESTORE_BACKOFF_MAX_S)
        log.warning("broker topology missing: declaring it again; account events held until then",
                    delay_s=round(delay, 3), **trigger)
        if delay:
            asyncio.get_running_loop().call_later(delay, self._declare_again, r)
        else:
            self._declare_again(r)

    def _declare_again(self, r: dict) -> None:
        if self._restore is r:     # else the connection was lost meanwhile: its reconnect declares
            self.broker.restore_topology(lambda: self._on_declared(r))

    def _on_declared(self, r: dict) -> None:
        r["declared"] = True
        self._maybe_resume()

    def _hold_returned(self, settled: list[tuple[Event, float]]) -> list[tuple[Event, float]]:
        """Acked but returned: not delivered anywhere. Keep those to publish again."""
        keep = []
        for item in settled:
            if item[0].extra.get("returned"):
                self._held.append(item[0])
            else:
                keep.append(item)
        return keep

    def _maybe_resume(self) -> None:
        """Topology declared and every publish before it settled: the held events go out
        again first, in their original order, then publishing resumes."""
        r = self._restore
        if r is None or not r["declared"] or self.broker.inflight:
            return
        self._restore = None
        self._last_restored = time.monotonic()
        held, self._held = self._held, []
        for ev in held:
            ev.extra.pop("returned", None)
        self.outbox.requeue(held)
        self._restored(r, republished=len(held))
        self.pump()

    def _restored(self, r: dict, republished: int) -> None:
        """The alert: a warning, the counter, the status file and a ``system.topology_restored`` event."""
        now = time.time()
        details = {"trigger": r["trigger"], "since": evmod.iso_utc(int(r["since"] * 1e9)),
                   "until": evmod.iso_utc(int(now * 1e9)), "duration_s": round(now - r["since"], 3),
                   "returned": dict(r["returned"]), "republished": republished}
        self.topology["restorations"] += 1
        self.topology["last"] = details
        metrics.TOPOLOGY_RESTORED.inc()
        log.warning("broker topology restored; returned events published again",
                    reason=r["trigger"]["reason"], returned=dict(r["returned"]), republished=republished,
                    duration_s=details["duration_s"])
        self.outbox.add(evmod.system_event("topology_restored", details, recv_ns=time.time_ns()), front=True)

    # -- books and tickers that heal ---------------------------------------------------
    def _on_market_drop(self, cls: str, stream: str, reason: str) -> None:
        """A market event will never reach consumers: a book's loss breaks their copy. (A ticker
        event dropped here was merged already: the next one published is complete.)"""
        if cls in BOOK_CLASSES:
            self.pipeline.healer.lost_key(stream, f"{reason} in the publisher", time.time())

    def _ask_resync(self) -> None:
        """Ask ingest (control op ``resync``, fire-and-forget) for a fresh snapshot of each broken
        book/ticker stream that is due. Not while the broker is away: a snapshot would only wait
        here and grow old; they are asked for once it is back."""
        b = self.broker
        if self._control is None or b is None or not b.ready:
            return
        due = self.pipeline.healer.due(time.time())
        if not due:
            return
        topics = []
        for stream, reason in due:
            endpoint, _, topic = stream.partition(":")
            topics.append({"endpoint": endpoint, "topic": topic, "reason": reason})
        try:
            self._control.send(orjson.dumps({"op": "resync", "where": "publisher", "topics": topics}), zmq.NOBLOCK)
        except zmq.ZMQError as exc:      # ingest not there (yet): asked again at the next check
            self.pipeline.healer.unasked([s for s, _ in due])
            self.rl("warning", "resync request not sent", topics=len(due), error=str(exc))
            return
        self.resync_sent += len(due)
        self.rl("info", "asked ingest for fresh snapshots", topics=[t["endpoint"] + ":" + t["topic"] for t in topics][:10],
                count=len(topics), reason=topics[0]["reason"])
        try:
            while True:                  # ingest's answers: not needed, but not left to pile up
                self._control.recv(zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_CHECK_S)
            if self.pipeline.healer.broken:
                try:
                    self._ask_resync()
                except Exception as exc:     # never the end of the loop
                    self.rl("error", "resync check failed", error=repr(exc), exc_info=True)

    def delivered_topics(self) -> dict[str, float]:
        """{"endpoint:topic": last time RabbitMQ confirmed one of its events, None if none yet}
        for the public streams taken in (books of several depths share a routing key, hence a
        time)."""
        out: dict[str, float | None] = {}
        for stream, state in self.pipeline.gaps._streams.items():
            endpoint, topic = state[2], state[3]
            if endpoint == "private":
                continue
            try:
                at = self.delivered.get(evmod.market_routing_key(endpoint, topic))
            except (classify.UnknownTopic, FrameError):
                continue
            out[stream] = None if at is None else round(at, 3)
        return out

    # -- housekeeping -------------------------------------------------------------
    def status(self) -> dict:
        return status_doc(self)

    def _on_depth(self, queue: str, depth: int) -> None:
        self.queue_depths[queue] = depth
        bound = self.s.retention_account_max_length
        if depth >= 0.8 * bound:
            self.rl("warning", "account queue filling: oldest events will be dropped at the bound",
                    queue=queue, depth=depth, bound=bound)

    def housekeeping(self) -> None:
        if self.intake_paused:
            self._resume_intake()
        t = self.tally
        b = self.broker
        if b is not None and b.ready and time.monotonic() - self._last_depth_check >= DEPTH_CHECK_S:
            self._last_depth_check = time.monotonic()
            b.check_depths([classify.queue_name(c) for c in sorted(classify.ACCOUNT_CLASSES)], self._on_depth,
                           self._on_missing)
        t.gaps = self.pipeline.counts["stream_gap"]
        t.ticker_no_snapshot = self.pipeline.counts["ticker_delta_no_snapshot"]
        t.flush()
        b = self.broker
        metrics.BUFFER_DEPTH.set(len(self.outbox))
        metrics.SPOOL_DEPTH.set(self.outbox.spool_depth)
        metrics.UNCONFIRMED.set(len(b.inflight) if b else 0)
        metrics.BROKER_UP.set(1 if b is not None and b.state == READY else 0)
        metrics.RETENTION_NOT_APPLIED.set(1 if self.retention_state["how"] == "none" else 0)   # not while pending
        lag = self.read_lag.p99_ms(time.monotonic())
        metrics.EXCHANGE_TO_RECEIVED_P99.set(0.0 if lag is None else min(lag, 1e6) / 1000)
        if ((self.outbox.age_ranges or (self.outage_since is None and self.outbox.drop_ranges))
                and time.monotonic() - self._last_drop_notice >= DROP_NOTICE_EVERY_S):
            self._last_drop_notice = time.monotonic()
            if self.outage_since is None and self.outbox.drop_ranges:
                ranges = self.outbox.take_drop_ranges()
                self.outbox.add(evmod.system_event("events_dropped", {
                    "where": "publisher", "reason": "publisher buffer full", "dropped_total": dict(self.outbox.dropped),
                    "dropped_streams": {k: {"from_seq": a, "to_seq": z, "count": n} for k, (a, z, n) in ranges.items()},
                }, recv_ns=time.time_ns()), front=True)
            if self.outbox.age_ranges:
                ranges = self.outbox.take_age_ranges()
                self.outbox.add(evmod.system_event("events_dropped", {
                    "where": "publisher", "reason": TOO_OLD, "dropped_total": dict(self.outbox.dropped_by[TOO_OLD]),
                    "max_age_ms": {c: b // 1_000_000 for c, b in sorted(self.s.market_max_age_ns().items())},
                    "dropped_streams": {k: {"from_seq": a, "to_seq": z, "count": n} for k, (a, z, n) in ranges.items()},
                }, recv_ns=time.time_ns()), front=True)
            self.pump()
        try:
            write_json(self.status_file, self.status())
            write_json(self.state_file, self.pipeline.gaps.snapshot())
        except OSError as exc:
            self.rl("warning", "status file not written", error=str(exc))

    async def _housekeeping_loop(self) -> None:
        while True:
            self.housekeeping()
            try:
                await asyncio.wait_for(self._stop.wait(), 1.0)
                return
            except asyncio.TimeoutError:
                pass

    # -- lifecycle ------------------------------------------------------------------
    def request_stop(self) -> None:
        if self._stop.is_set():
            self._force = True
            log.warning("second stop signal: exiting without waiting for confirms")
        self._stop.set()

    def _restore_gaps(self) -> None:
        try:
            self.pipeline.gaps.restore(orjson.loads(self.state_file.read_bytes()))
        except FileNotFoundError:
            return
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
            log.warning("stream state not restored", error=str(exc))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # the first signal stops intake and drains; the second stops waiting for confirms
        StopSignals(lambda _sig: self.request_stop(), lambda _sig: self.request_stop()).install(loop)
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        self._restore_gaps()
        ctx = zmq.Context()
        sock = self._sock = ctx.socket(zmq.PULL, socket_class=Socket)
        # bounded memory, and little of it: a flood waits in ingest's buffer, where it is sent
        # books and tickers first and dropped by class, not in this FIFO (see ingest/handoff.py HWM)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        sock.setsockopt(zmq.LINGER, 0)
        address = addresses.publisher_frames(self.s.run_dir)
        # ingest's account frames and system events come on a socket of their own, read first and
        # even while market intake is paused: they never wait behind market frames here
        psock = self._psock = ctx.socket(zmq.PULL, socket_class=Socket)
        psock.setsockopt(zmq.RCVHWM, RCVHWM)
        psock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(address)
            psock.bind(addresses.publisher_priority(self.s.run_dir))
        except zmq.ZMQError as exc:
            log.error("cannot bind frames socket", address=address, error=str(exc))
            sock.close(0)
            psock.close(0)
            ctx.term()
            return 1
        self.broker = Broker(self.s.rabbitmq_url, on_ready=self._on_ready, on_confirm=self._on_confirm,
                             on_lost=self._on_lost, on_return=self._on_return, backoff_max_s=self.s.publisher_backoff_max_s,
                             fast_path_enabled=self.s.publisher_fast_path)
        log.info("publisher started", address=address, window=self.window, buffer=self.s.publisher_buffer,
                 spooled=self.outbox.spool_depth, settings=self.s.describe())
        self.broker.start()
        self._control = ctx.socket(zmq.DEALER)
        self._control.setsockopt(zmq.SNDHWM, 100)
        self._control.setsockopt(zmq.RCVHWM, 100)
        self._control.setsockopt(zmq.LINGER, 0)
        self._control.connect(addresses.ingest_control(self.s.run_dir))
        resync_task = asyncio.create_task(self._resync_loop())
        retention_task = asyncio.create_task(self._apply_retention())
        fd, pfd = sock.getsockopt(zmq.FD), psock.getsockopt(zmq.FD)
        loop.add_reader(fd, self._on_readable)
        loop.add_reader(pfd, self._on_priority)
        loop.call_soon(self._on_readable)    # anything queued before the readers were added
        house_task = asyncio.create_task(self._housekeeping_loop())
        try:
            await self._stop.wait()
        finally:
            self.intake_open = False
            drained = self._handled
            await self._drain_until_quiet()
            loop.remove_reader(fd)
            loop.remove_reader(pfd)
            for handle in (self._more, self._pmore):
                if handle is not None:
                    handle.cancel()
            self._drain_socket()
            drained = self._handled - drained
            resync_task.cancel()
            self._control.close(0)
            sock.close(0)
            psock.close(0)
            ctx.term()
            self.pump()
            await self._finish(drained)
            retention_task.cancel()
            await asyncio.gather(retention_task, house_task, resync_task, return_exceptions=True)
            await self.broker.close()
            self._spool_leftovers()
            self.housekeeping()
            self.spool.close()
        log.info("publisher stopped", **{k: self.status()[k] for k in ("published", "confirmed", "dropped", "buffered")})
        return 0

    async def _apply_retention(self) -> None:
        """Set the retention policies; while that fails, alert once and retry with backoff."""
        s, st = self.s, self.retention_state
        failures = 0
        while True:
            st["attempts"] += 1
            how, error = await retention.apply(s.rabbitmq_url, s.rabbitmq_management_url, s.retention_ttl_ms,
                                               s.retention_max_length, s.retention_account_max_length)
            self.retention = st["how"] = how
            st["error"] = error or None
            if how != "none":
                st.update(applied=True, applied_at=time.time(), next_attempt_at=None)
                if failures:
                    log.warning("retention applied after failed attempts", how=how, failed_attempts=failures)
                    self.outbox.add(evmod.system_event("retention_applied", {
                        "how": how, "failed_attempts": failures, "vhost": retention.vhost_of(s.rabbitmq_url),
                    }, recv_ns=time.time_ns()))
                    self.pump()
                return
            failures += 1
            delay = min(RETENTION_RETRY_MIN_S * 2 ** (failures - 1), RETENTION_RETRY_MAX_S)
            st["next_attempt_at"] = time.time() + delay
            if failures == 1:
                log.warning("queues have no retention (every message is kept): alert raised, retrying",
                            error=error, retry_in_s=delay)
                self.outbox.add(evmod.system_event("retention_not_applied", {
                    "error": error, "vhost": retention.vhost_of(s.rabbitmq_url),
                    "policies": [retention.POLICY, retention.ACCOUNT_POLICY], "ttl_ms": s.retention_ttl_ms,
                    "max_length": s.retention_max_length, "account_max_length": s.retention_account_max_length,
                    "retry_in_s": delay,
                }, recv_ns=time.time_ns()))
                self.pump()
            await asyncio.sleep(delay)

    async def _finish(self, drained: int) -> None:
        """Wait (bounded) until every waiting event is published and confirmed."""
        started = time.monotonic()
        b = self.broker
        log.info("stopping: waiting for confirms", drained=drained, buffered=len(self.outbox),
                 unconfirmed=len(b.inflight))
        while not self._force and time.monotonic() - started < STOP_DRAIN_S:
            if (not b.inflight and self.outbox.in_memory == 0 and self.outbox.spool_depth == 0
                    and not self._held and self._restore is None):
                return
            if b.state != READY and time.monotonic() - started > 3:
                return   # broker away: spool account events rather than wait out the deadline
            self.pump()
            await asyncio.sleep(0.02)

    def _spool_leftovers(self) -> None:
        """Unconfirmed and unpublished account events survive a stop in the spool file."""
        b = self.broker
        left = sorted([ev for ev, _ in (b.inflight.values() if b else [])] + self._held, key=lambda e: e.seq)
        self._held = []
        if b:
            b.inflight.clear()
        while (ev := self.outbox.pop()) is not None:
            left.append(ev)
        keep = [ev for ev in left if ev.durable]
        lost = len(left) - len(keep)
        if keep:
            self.spool.rewrite_front(keep)
        if keep or lost:
            log.warning("stopped with events not confirmed", spooled=len(keep), market_dropped=lost)
            for ev in left:
                if not ev.durable:
                    self.outbox.dropped[ev.event_class] += 1


def main() -> int:
    settings = settings_or_exit("publisher")
    setup_logging("publisher", settings.log_level)
    settings.warn_unknown_env(log)
    log.info("priority", nice=lower_priority(settings.nice_behind_ingest))     # ingest reads first
    # pika logs each failed connect three times at ERROR; our own "broker connect failed" line suffices.
    for name in ("pika.adapters.utils.connection_workflow", "pika.adapters.base_connection"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    tune_gc()
    try:
        return asyncio.run(Service(settings).run())
    except KeyboardInterrupt:
        return 130
