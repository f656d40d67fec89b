"""Envelope -> events: the publisher's pure logic in one place.

Holds the per-stream state (gap tracking, last full ticker, the consumers' numbering per
routing key) and turns each envelope from ingest into the events to publish, in order.
No I/O; problems raise ``FrameError``/``UnknownTopic`` or are counted in ``counts``.

Frames ingest numbered but that never reached us (a ``seq_jump``) leave the same number
of unused ``stream_seq`` values in their routing key's stream, so a consumer bound to it
sees the gap where it happened; the ``stream_gap`` notice names that routing key.

A public frame older than its class's age bound (``max_age_ns``, common/freshness.py) is not
made into an event: its number is left unused and ``on_drop`` is told (the outbox counts it).
Books and linear/inverse tickers whose consumers' copy such losses break are tracked by
``healer`` (publisher/resync.py), which says when to ask ingest for a fresh snapshot.
"""
from __future__ import annotations

from collections import Counter

import orjson

from common import envelope as envmod
from common.classify import UnknownTopic, event_class
from common.envelope import Envelope
from common.freshness import BOOK_CLASSES, MERGED_TICKERS, TOO_OLD, needs_snapshot
from common.topics import PRIVATE
from publisher import events
from publisher.events import Event, FrameError, StreamNumbers
from publisher.gaps import GapTracker
from publisher.metrics import LatencyCounts
from publisher.resync import Healer
from publisher.tickers import TickerMerger


class Pipeline:
    def __init__(self, numbers: StreamNumbers | None = None, max_age_ns: dict[str, int] | None = None,
                 clock=None) -> None:
        """``clock``: the time in ns, read once per frame when ``max_age_ns`` is given (tests pass
        their own)."""
        self.numbers = events.NUMBERS if numbers is None else numbers
        self.gaps = GapTracker()
        self.tickers = TickerMerger()
        self.healer = Healer()
        self.max_age_ns = max_age_ns or {}
        self.clock = clock
        self.on_drop = None      # (class, routing key, stream_seq, reason) for a frame dropped here
        self.counts: Counter[str] = Counter()   # ticker_delta_no_snapshot, ignored_kind, ...
        # Bybit's ts -> ingest's receive time of each public push made into an event: what the age
        # bounds (which start at the receive time) cannot see, a socket read late
        self.exchange_to_received = LatencyCounts()

    def process(self, env: Envelope) -> list[Event]:
        """Events for one envelope (gap notices first). Raises FrameError / UnknownTopic."""
        if env.kind == envmod.FRAME:
            now_ns = self.clock() if self.clock is not None else 0
            gaps = self.gaps.observe(env.endpoint, env.topic, env.epoch, env.stream_seq, env.recv_ns)
            out = self._gap_events(gaps, env, now_ns)
            out.extend(self._frame(env, now_ns))
            return out
        out = self._gap_events(self.gaps.observe_epoch(env.epoch, env.recv_ns), env)
        if env.kind == envmod.SYSTEM:
            out.append(events.envelope_system_event(env, self.numbers))
        elif env.kind == envmod.REST:
            out.extend(events.rest_events(env, _loads(env.payload), self.numbers))
        else:
            self.counts[f"ignored_{env.kind}"] += 1
        return out

    def system(self, kind: str, details: dict, *, recv_ns: int, category: str | None = None,
               trace_id: str = "") -> Event:
        """A gateway event numbered in this pipeline's streams."""
        return events.system_event(kind, details, recv_ns=recv_ns, category=category, trace_id=trace_id,
                                   numbers=self.numbers)

    def _gap_events(self, gaps: list[dict], env: Envelope, now_ns: int = 0) -> list[Event]:
        if not gaps:
            return []
        self.counts["stream_gap"] += len(gaps)
        for g in gaps:
            self._name_stream(g)
            self._broken_by_gap(g, now_ns)
        return [self.system("stream_gap", g, recv_ns=env.recv_ns, category=g.get("endpoint"),
                            trace_id=env.trace_id) for g in gaps]

    def _name_stream(self, gap: dict) -> None:
        """Say which routing key a gap is in, and (for a counted jump) the numbers it left unused."""
        endpoint, topic = gap.get("endpoint"), gap.get("topic")
        if endpoint == PRIVATE or not isinstance(topic, str):
            return      # a private frame fans out to records of any category: no one key to name
        try:
            key = events.market_routing_key(endpoint, topic)
        except (UnknownTopic, FrameError):
            return
        gap["routing_key"] = key
        missing = gap.get("missing")
        if gap.get("reason") == "seq_jump" and isinstance(missing, int) and missing > 0:
            first, last = self.numbers.skip(key, missing)
            gap["stream_seq_from"], gap["stream_seq_to"] = first, last
            gap["stream_epoch"] = self.numbers.epoch

    def _broken_by_gap(self, gap: dict, now_ns: int) -> None:
        """Frames of a book or ticker stream went missing before they reached us: consumers'
        copy (and our merged ticker) is wrong until a snapshot. An ingest restart is not such
        a gap: its new subscriptions start with a snapshot."""
        endpoint, topic = gap.get("endpoint"), gap.get("topic")
        if (gap.get("reason") not in ("seq_jump", "publisher_restarted") or not isinstance(topic, str)
                or not isinstance(endpoint, str) or not needs_snapshot(endpoint, topic)):
            return
        if topic.startswith("tickers."):
            self.tickers.forget(endpoint, topic.rsplit(".", 1)[-1])
        self.healer.lost(f"{endpoint}:{topic}", f"{gap['reason']} between ingest and the publisher", now_ns / 1e9)

    def _frame(self, env: Envelope, now_ns: int = 0) -> list[Event]:
        endpoint = env.endpoint
        if now_ns and endpoint != PRIVATE and self.max_age_ns:
            bound = self.max_age_ns.get(event_class(env.topic))
            if bound is not None and env.recv_ns and now_ns - env.recv_ns > bound:
                return self._too_old(env, now_ns)
        frame = _loads(env.payload)
        if not isinstance(frame, dict) or not isinstance(frame.get("topic"), str):
            raise FrameError("frame is not a data push (no topic)")
        if endpoint == PRIVATE:
            return events.account_events(env, frame, self.numbers)
        topic = frame["topic"]
        if topic != env.topic:
            # ingest routed it by the topic it read first: a frame naming two is not Bybit's
            raise FrameError(f"frame topic {topic!r} is not the one ingest read ({env.topic!r})")
        ts = frame.get("ts")
        if ts.__class__ is int and env.recv_ns:
            self.exchange_to_received.add(env.recv_ns / 1e6 - ts)
        if topic.startswith("tickers."):
            merged = self._merge(env, frame)
            if merged is None:
                # Lost to consumers like a dropped event: their numbering shows it.
                self.counts["ticker_delta_no_snapshot"] += 1
                self.numbers.skip(events.market_routing_key(endpoint, topic), 1)
                if endpoint in MERGED_TICKERS:
                    self.healer.lost(f"{endpoint}:{topic}", "ticker delta without a snapshot in the publisher",
                                     now_ns / 1e9)
                return []
            healed = merged.type == "snapshot" and endpoint in MERGED_TICKERS and \
                self.healer.frame(f"{endpoint}:{topic}", True, now_ns / 1e9)
            ev = events.market_event(env, frame, data=merged.data, type_=merged.type,
                                     changed_keys=merged.changed_keys, numbers=self.numbers)
            ev.heals = healed       # goes first, in place of the ticker's waiting events
            return [ev]
        ev = events.market_event(env, frame, numbers=self.numbers)
        if ev.event_class in BOOK_CLASSES and needs_snapshot(endpoint, topic):
            stream = f"{endpoint}:{topic}"
            self.healer.register(stream, ev.routing_key)
            healed = self.healer.frame(stream, frame.get("type") == "snapshot", now_ns / 1e9)
            # goes first in place of the key's waiting events, unless another depth shares the key
            ev.heals = healed and len(self.healer.by_key.get(ev.routing_key, ())) <= 1
        return [ev]

    def _merge(self, env: Envelope, frame: dict):
        try:
            return self.tickers.apply(env.endpoint, frame)
        except ValueError as exc:
            raise FrameError(str(exc)) from None

    def _too_old(self, env: Envelope, now_ns: int) -> list[Event]:
        """A public frame past its age bound: its number left unused, counted, and the book or
        ticker it belongs to marked for a snapshot where its loss breaks consumers' copy."""
        endpoint, topic = env.endpoint, env.topic
        cls = event_class(topic)
        key = events.market_routing_key(endpoint, topic)
        if topic.startswith("tickers."):
            # merged all the same, so the next ticker published is complete: nothing to heal
            frame = _loads(env.payload)
            if isinstance(frame, dict) and self._merge(env, frame) is None and needs_snapshot(endpoint, topic):
                self.healer.lost(f"{endpoint}:{topic}", "ticker delta without a snapshot in the publisher",
                                 now_ns / 1e9)
        elif needs_snapshot(endpoint, topic):
            stream = f"{endpoint}:{topic}"
            self.healer.register(stream, key)
            self.healer.lost(stream, f"{TOO_OLD} in the publisher", now_ns / 1e9)
        seq = self.numbers.skip(key, 1)[0]
        if self.on_drop is not None:
            self.on_drop(cls, key, seq, TOO_OLD)
        return []


def _loads(payload: bytes):
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"payload is not JSON: {exc}") from None


__all__ = ["Pipeline", "FrameError", "UnknownTopic"]
