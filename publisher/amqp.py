"""RabbitMQ transport: one pika AsyncioConnection, one confirm-mode channel.

Runs in the publisher's event loop (pika is single-threaded; its heartbeats
are serviced by the same loop). Declares the topology on every connect, and
again on request when a queue or binding went missing (idempotent: no
x-arguments, retention is a policy), tracks
publisher confirms by delivery tag (``multiple`` acks included), and
reconnects with capped, jittered backoff. It does not build or buffer events:
the service hands it ``Event`` records and gets them back when confirmed,
nacked, or left unconfirmed by a lost connection.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from typing import Callable

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from common import classify
from common.logs import get_logger
from common.runtime import backoff_s
from publisher.events import Event
from publisher.pika_fast import _MAX_ITEMS, CorkedConnection, EventProperties, confirm_of, fast_path, \
    message_parts, publish_frames

log = get_logger("publisher.amqp")

DOWN, CONNECTING, READY, CLOSING = "down", "connecting", "ready", "closing"


def backoff_delay(attempt: int, cap: float, rng=random.random) -> float:
    """The broker reconnect's delay: ``common.runtime.backoff_s`` from 0.5 s, jittered."""
    return backoff_s(attempt, cap, 0.5, jitter=rng())


class Broker:
    """Connection state machine + confirm tracking. Callbacks run in the event loop."""

    def __init__(self, url: str, *, on_ready: Callable[[], None],
                 on_confirm: Callable[[list[tuple[Event, float]], bool, float], None],
                 on_lost: Callable[[list[Event], str], None],
                 on_return: Callable[[str, str, str, str], None],
                 backoff_max_s: float = 30.0, heartbeat_s: int = 20, fast_path_enabled: bool = True):
        self.fast, why = fast_path(fast_path_enabled)
        self.path = "fast" if self.fast else f"pika public API: {why}"
        if not self.fast:
            log.warning("publishing through pika's public API (slower)", reason=why)
        self.params = pika.URLParameters(url)
        self.params.heartbeat = heartbeat_s
        self.params.connection_attempts = 1
        self.params.socket_timeout = 5
        self.params.blocked_connection_timeout = 60
        self._on_ready, self._on_confirm, self._on_lost, self._on_return = on_ready, on_confirm, on_lost, on_return
        self.backoff_max_s = backoff_max_s
        self.state = DOWN
        self.since = time.time()
        self.last_error = ""
        self.connects = 0
        self._conn: AsyncioConnection | None = None
        self._ch = None
        self._tag = 0
        self._return_tag = 0          # delivery tag of the last returned event found
        self._method_frames: dict[str, bytes] = {}   # routing key -> Basic.Publish frame (this channel)
        self.inflight: OrderedDict[int, tuple[Event, float]] = OrderedDict()
        self._probe = None            # channel for depth checks: a missing queue closes it, not ours
        self._probe_opening = False
        self._probe_pending: list[str] = []
        self._attempt = 0
        self._retry: asyncio.TimerHandle | None = None
        self._closed = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        self._connect()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()

    def _connect(self) -> None:
        self._retry = None
        if self.state == CLOSING:
            return
        self._set_state(CONNECTING)
        self._conn = (CorkedConnection if self.fast else AsyncioConnection)(
            self.params, on_open_callback=self._on_conn_open, on_open_error_callback=self._on_conn_error,
            on_close_callback=self._on_conn_closed, custom_ioloop=asyncio.get_running_loop())

    def _schedule_reconnect(self) -> None:
        if self.state == CLOSING:
            self._closed.set()
            return
        self._set_state(DOWN)
        delay = backoff_delay(self._attempt, self.backoff_max_s)
        self._attempt += 1
        log.info("broker reconnect scheduled", delay_s=round(delay, 2), attempt=self._attempt)
        self._retry = asyncio.get_running_loop().call_later(delay, self._connect)

    def _lost(self, reason: str) -> None:
        was_ready = self.state == READY
        self._ch = None
        self._probe, self._probe_opening, self._probe_pending = None, False, []
        pending = [ev for ev, _ in self.inflight.values()]
        self.inflight.clear()
        self.last_error = reason
        if was_ready:
            log.warning("broker connection lost", reason=reason, unconfirmed=len(pending))
        self._on_lost(pending, reason)
        self._schedule_reconnect()

    def _on_conn_error(self, _conn, exc) -> None:
        log.warning("broker connect failed", error=str(exc) or type(exc).__name__)
        self._lost(f"connect failed: {exc!r}")

    def _on_conn_closed(self, _conn, exc) -> None:
        self._conn = None
        if self.state == CLOSING:
            self._set_state(DOWN)
            self._closed.set()
            return
        self._lost(f"connection closed: {exc!r}")

    def _on_conn_open(self, conn) -> None:
        conn.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, ch) -> None:
        self._ch = ch
        self._method_frames = {}
        self._tag = 0
        self._return_tag = 0
        ch.add_on_close_callback(self._on_channel_closed)
        ch.add_on_return_callback(self._on_returned)
        if self.fast:
            self._conn.on_confirm_frames(ch.channel_number, self._on_acks)
        ch.confirm_delivery(ack_nack_callback=self._on_delivery, callback=lambda _f: self._declare(ch))

    def _on_channel_closed(self, ch, exc) -> None:
        if ch is not self._ch or self.state == CLOSING:
            return
        # A channel error (e.g. 406 on a queue declared elsewhere with other arguments) is
        # fatal for this channel only; close the connection and start again from scratch.
        log.error("broker channel closed", reason=str(exc))
        self.last_error = f"channel closed: {exc!r}"
        self._ch = None
        conn = self._conn
        if conn is not None and conn.is_open:
            conn.close()

    # -- topology -------------------------------------------------------------
    def _topology_steps(self, ch) -> list[Callable[[Callable], None]]:
        steps: list[Callable[[Callable], None]] = [
            lambda cb: ch.exchange_declare(classify.EXCHANGE, exchange_type="topic", durable=True, callback=cb)]
        for cls in classify.EVENT_CLASSES:
            q = classify.queue_name(cls)
            steps.append(lambda cb, q=q: ch.queue_declare(q, durable=True, callback=cb))
            steps.append(lambda cb, q=q, c=cls: ch.queue_bind(q, classify.EXCHANGE, routing_key=f"{c}.#", callback=cb))
        return steps

    def _run_steps(self, ch, steps: list[Callable[[Callable], None]], done: Callable[[], None]) -> None:
        """Run the RPCs one after the other; stops silently if the channel is replaced meanwhile."""
        def run(i: int) -> None:
            if ch is not self._ch:
                return
            if i == len(steps):
                done()
                return
            steps[i](lambda _frame: run(i + 1))

        run(0)

    def _declare(self, ch) -> None:
        def ready() -> None:
            self._attempt = 0
            self.connects += 1
            self._set_state(READY)
            log.info("broker ready", connects=self.connects)
            self._on_ready()

        self._run_steps(ch, self._topology_steps(ch), ready)

    def restore_topology(self, on_done: Callable[[], None]) -> bool:
        """Declare the exchange, queues and bindings again on the open channel (a queue or
        binding was deleted under us). The channel runs them in order with the publishes,
        so everything published after ``on_done`` is routed by the restored topology.
        False when no channel is open: the next connect declares everything anyway."""
        if not self.ready:
            return False
        self._run_steps(self._ch, self._topology_steps(self._ch), on_done)
        return True

    # -- publishing -----------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state == READY and self._ch is not None and self._ch.is_open

    def cork(self) -> None:
        if self.fast and self._conn is not None:
            self._conn.cork()

    def uncork(self) -> None:
        if self.fast and self._conn is not None:
            self._conn.uncork()

    def publish(self, ev: Event) -> None:
        """basic_publish(exchange, routing key, body, properties, mandatory=True), marshalled here.

        pika builds three frame objects, a Basic.Publish object and a list of pieces per
        message; this writes the same bytes (tests/publisher/test_amqp_encoding.py
        compares them with pika's) with the method frame cached per routing key, and
        hands them to the connection as pieces that the batch's one write joins (the body is
        copied once), keeping pika's byte and frame counts.
        """
        ch, conn = self._ch, self._conn
        if not self.fast:
            ch.basic_publish(classify.EXCHANGE, ev.routing_key, ev.body, pika.BasicProperties(
                content_type="application/json", headers=ev.headers, delivery_mode=2 if ev.persistent else 1,
                message_id=ev.event_id, timestamp=ev.timestamp), mandatory=True)
            self._tag += 1
            self.inflight[self._tag] = (ev, time.perf_counter())
            return
        if not ch.is_open:
            ch._raise_if_not_open()   # pika's error for the channel's state
        methods = self._method_frames
        method = methods.get(ev.routing_key)
        if method is None:
            if len(methods) >= _MAX_ITEMS:
                methods.clear()
            method = methods[ev.routing_key] = publish_frames(ch.channel_number, classify.EXCHANGE,
                                                              ev.routing_key, True)
        props = EventProperties(ev.event_id, ev.timestamp, ev.headers, 2 if ev.persistent else 1).encode_bytes()
        parts, n = message_parts(method, ch.channel_number, props, ev.body, conn._body_max_length)
        # 8 bytes of framing per body frame, 20 around the header's properties
        conn.bytes_sent += len(method) + 20 + len(props) + len(ev.body) + 8 * (n - 2)
        conn.frames_sent += n
        conn.emit_parts(parts)
        self._tag += 1
        self.inflight[self._tag] = (ev, time.perf_counter())

    def _on_delivery(self, frame) -> None:
        """pika's public confirm callback (the fast path off)."""
        self._on_acks([confirm_of(frame.method)])

    def _on_acks(self, acks: list[tuple[int, bool, bool]]) -> None:
        """``(delivery_tag, multiple, ack?)`` in the order received: each run of acks (or
        of nacks) settles as one batch."""
        inflight, settled, run_ok = self.inflight, [], True
        for tag, multiple, ok in acks:
            if ok is not run_ok and settled:
                self._on_confirm(settled, run_ok, time.perf_counter())
                settled = []
            run_ok = ok
            if multiple:
                while inflight:
                    first = next(iter(inflight))
                    if first > tag:
                        break
                    settled.append(inflight.pop(first))
            else:
                item = inflight.pop(tag, None)
                if item is not None:
                    settled.append(item)
        if settled:
            self._on_confirm(settled, run_ok, time.perf_counter())

    def find_inflight(self, message_id: str) -> Event | None:
        """The unconfirmed event a Basic.Return is about (it names the message, not its
        delivery tag, and comes before that message's ack). Returns come in publish order,
        so the search resumes after the last one found: a burst of returns costs one pass
        over the window, not one per return."""
        inflight = self.inflight
        if not inflight:
            return None
        start = max(self._return_tag + 1, next(iter(inflight)))
        for tag in range(start, self._tag + 1):
            item = inflight.get(tag)
            if item is not None and item[0].event_id == message_id:
                self._return_tag = tag
                return item[0]
        for tag, (ev, _t0) in inflight.items():     # out of order after all: any unmarked one
            if ev.event_id == message_id and not ev.extra.get("returned"):
                return ev
        return None

    def check_depths(self, queues, on_depth: Callable[[str, int], None],
                     on_missing: Callable[[str], None] | None = None) -> None:
        """Ask the broker how many messages wait in each queue (passive declare).

        On a channel of its own: a passive declare of a missing queue closes its channel
        (404), which on the publishing channel would cost a reconnect. A 404 reports the
        queue to ``on_missing``; the channel is opened again at the next check."""
        if not self.ready:
            return
        ch = self._probe
        if ch is None or not ch.is_open:
            if not self._probe_opening:
                self._probe_opening = True
                self._conn.channel(on_open_callback=lambda c: self._on_probe_open(c, queues, on_depth, on_missing))
            return
        self._probe_queues(ch, list(queues), on_depth, on_missing)

    def _on_probe_open(self, ch, queues, on_depth, on_missing) -> None:
        self._probe_opening = False
        if not self.ready:
            ch.close()
            return
        self._probe = ch
        ch.add_on_close_callback(lambda c, exc: self._on_probe_closed(c, exc, on_missing))
        self._probe_queues(ch, list(queues), on_depth, on_missing)

    def _probe_queues(self, ch, queues: list[str], on_depth, on_missing) -> None:
        if self._probe_pending:
            return            # the previous round is still being answered
        self._probe_pending = queues   # answered in order: a 404 is about the first one left

        def step() -> None:
            if ch is self._probe and queues:
                ch.queue_declare(queues[0], passive=True, callback=answered)

        def answered(frame) -> None:
            on_depth(queues.pop(0), frame.method.message_count)
            step()

        step()

    def _on_probe_closed(self, ch, exc, on_missing) -> None:
        if ch is not self._probe:
            return
        pending, self._probe, self._probe_pending = self._probe_pending, None, []
        if getattr(exc, "reply_code", None) == 404 and on_missing is not None and pending and self.ready:
            on_missing(pending[0])

    def _on_returned(self, _ch, method, props, _body) -> None:
        cls = (props.headers or {}).get("event_class", "unknown")
        self._on_return(str(cls), method.routing_key, method.reply_text, props.message_id or "")

    # -- shutdown -------------------------------------------------------------
    async def close(self, timeout: float = 5.0) -> None:
        prev = self.state
        self._set_state(CLOSING)
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        conn = self._conn
        if conn is not None and not (conn.is_closed or conn.is_closing) and prev != DOWN:
            try:
                conn.close()
            except Exception as exc:  # already closing: nothing more to do
                log.debug("broker close", error=repr(exc))
            try:
                await asyncio.wait_for(self._closed.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("broker close timed out")
        self._set_state(DOWN)
