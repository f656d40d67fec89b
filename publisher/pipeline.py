"""Envelope -> events: the publisher's pure logic in one place.

Holds the per-stream state (gap tracking, last full ticker) and turns each
envelope from ingest into the events to publish, in order. No I/O; problems
raise ``FrameError``/``UnknownTopic`` or are counted in ``counts``.
"""
from __future__ import annotations

from collections import Counter

import orjson

from common import envelope as envmod
from common.classify import UnknownTopic
from common.envelope import Envelope
from common.topics import PRIVATE
from publisher import events
from publisher.events import Event, FrameError
from publisher.gaps import GapTracker
from publisher.tickers import TickerMerger


class Pipeline:
    def __init__(self) -> None:
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
            out.append(events.envelope_system_event(env))
        elif env.kind == envmod.REST:
            out.extend(events.rest_events(env, _loads(env.payload)))
        else:
            self.counts[f"ignored_{env.kind}"] += 1
        return out

    def _gap_events(self, gaps: list[dict], env: Envelope) -> list[Event]:
        if gaps:
            self.counts["stream_gap"] += len(gaps)
        return [events.system_event("stream_gap", g, recv_ns=env.recv_ns, category=g.get("endpoint"),
                                    trace_id=env.trace_id) for g in gaps]

    def _frame(self, env: Envelope) -> list[Event]:
        frame = _loads(env.payload)
        if not isinstance(frame, dict) or not isinstance(frame.get("topic"), str):
            raise FrameError("frame is not a data push (no topic)")
        if env.endpoint == PRIVATE:
            return events.account_events(env, frame)
        if frame["topic"].startswith("tickers."):
            try:
                merged = self.tickers.apply(env.endpoint, frame)
            except ValueError as exc:
                raise FrameError(str(exc)) from None
            if merged is None:
                self.counts["ticker_delta_no_snapshot"] += 1
                return []
            return [events.market_event(env, frame, data=merged.data, type_=merged.type,
                                        changed_keys=merged.changed_keys)]
        return [events.market_event(env, frame)]


def _loads(payload: bytes):
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"payload is not JSON: {exc}") from None


__all__ = ["Pipeline", "FrameError", "UnknownTopic"]
