"""Envelope -> events: the publisher's pure logic in one place.

Holds the per-stream state (gap tracking, last full ticker, the consumers' numbering per
routing key) and turns each envelope from ingest into the events to publish, in order.
No I/O; problems raise ``FrameError``/``UnknownTopic`` or are counted in ``counts``.

Frames ingest numbered but that never reached us (a ``seq_jump``) leave the same number
of unused ``stream_seq`` values in their routing key's stream, so a consumer bound to it
sees the gap where it happened; the ``stream_gap`` notice names that routing key.
"""
from __future__ import annotations

from collections import Counter

import orjson

from common import envelope as envmod
from common.classify import UnknownTopic
from common.envelope import Envelope
from common.topics import PRIVATE
from publisher import events
from publisher.events import Event, FrameError, StreamNumbers
from publisher.gaps import GapTracker
from publisher.tickers import TickerMerger


class Pipeline:
    def __init__(self, numbers: StreamNumbers | None = None) -> None:
        self.numbers = events.NUMBERS if numbers is None else numbers
        self.gaps = GapTracker()
        self.tickers = TickerMerger()
        self.counts: Counter[str] = Counter()   # ticker_delta_no_snapshot, ignored_kind, ...

    def process(self, env: Envelope) -> list[Event]:
        """Events for one envelope (gap notices first). Raises FrameError / UnknownTopic."""
        if env.kind == envmod.FRAME:
            gaps = self.gaps.observe(env.endpoint, env.topic, env.epoch, env.stream_seq, env.recv_ns)
            out = self._gap_events(gaps, env)
            out.extend(self._frame(env))
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

    def _gap_events(self, gaps: list[dict], env: Envelope) -> list[Event]:
        if not gaps:
            return []
        self.counts["stream_gap"] += len(gaps)
        for g in gaps:
            self._name_stream(g)
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

    def _frame(self, env: Envelope) -> list[Event]:
        frame = _loads(env.payload)
        if not isinstance(frame, dict) or not isinstance(frame.get("topic"), str):
            raise FrameError("frame is not a data push (no topic)")
        if env.endpoint == PRIVATE:
            return events.account_events(env, frame, self.numbers)
        if frame["topic"].startswith("tickers."):
            try:
                merged = self.tickers.apply(env.endpoint, frame)
            except ValueError as exc:
                raise FrameError(str(exc)) from None
            if merged is None:
                # Lost to consumers like a dropped event: their numbering shows it.
                self.counts["ticker_delta_no_snapshot"] += 1
                self.numbers.skip(events.market_routing_key(env.endpoint, frame["topic"]), 1)
                return []
            return [events.market_event(env, frame, data=merged.data, type_=merged.type,
                                        changed_keys=merged.changed_keys, numbers=self.numbers)]
        return [events.market_event(env, frame, numbers=self.numbers)]


def _loads(payload: bytes):
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"payload is not JSON: {exc}") from None


__all__ = ["Pipeline", "FrameError", "UnknownTopic"]
