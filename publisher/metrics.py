"""Prometheus metrics of the publisher (multiprocess mode: PROMETHEUS_MULTIPROC_DIR).

The hot path counts in plain dicts; ``flush`` moves the increments into these
metrics about once a second, so a busy publisher does not take a lock and
write an mmap'd file several times per event.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter

from prometheus_client import Counter as PCounter, Gauge, Histogram

EVENTS_IN = PCounter("wsgw_publisher_events_in_total", "Envelopes received from ingest", ["kind"])
PUBLISHED = PCounter("wsgw_publisher_published_total", "Events handed to RabbitMQ", ["event_class"])
CONFIRMED = PCounter("wsgw_publisher_confirmed_total", "Events confirmed (acked) by RabbitMQ", ["event_class"])
NACKED = PCounter("wsgw_publisher_nacked_total", "Events nacked by RabbitMQ (re-published)", ["event_class"])
RETURNED = PCounter("wsgw_publisher_returned_total", "Events returned unroutable (mandatory)", ["event_class"])
DROPPED = PCounter("wsgw_publisher_dropped_total", "Market events dropped, buffer full", ["event_class"])
BAD_INPUT = PCounter("wsgw_publisher_bad_input_total", "Envelopes or frames that could not be published",
                     ["reason"])
STREAM_GAPS = PCounter("wsgw_publisher_stream_gaps_total", "stream_gap events emitted")
TICKER_NO_SNAPSHOT = PCounter("wsgw_publisher_ticker_delta_without_snapshot_total",
                              "Ticker deltas not published: no snapshot yet")
REPUBLISHED = PCounter("wsgw_publisher_republished_total", "Unconfirmed events re-published after a reconnect")
TOPOLOGY_RESTORED = PCounter("wsgw_publisher_topology_restored_total",
                             "Exchange, queues and bindings declared again after an account or system event came "
                             "back unroutable (or an account queue was found missing)")
RETENTION_NOT_APPLIED = Gauge("wsgw_publisher_retention_not_applied",
                              "1 while the queue retention policies could not be set (queues keep every message)",
                              multiprocess_mode="livemax")
BUFFER_DEPTH = Gauge("wsgw_publisher_buffer_depth", "Events waiting for the broker (memory + spool)",
                     multiprocess_mode="livesum")
SPOOL_DEPTH = Gauge("wsgw_publisher_spool_depth", "Account events in the spool file", multiprocess_mode="livesum")
UNCONFIRMED = Gauge("wsgw_publisher_unconfirmed", "Events published, not yet confirmed", multiprocess_mode="livesum")
BROKER_UP = Gauge("wsgw_publisher_broker_up", "1 when the RabbitMQ channel is ready", multiprocess_mode="livemax")
CONFIRM_LATENCY = Histogram("wsgw_publisher_confirm_latency_seconds", "basic.publish -> confirm",
                            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
EXCHANGE_TO_RECEIVED_P99 = Gauge(
    "wsgw_publisher_exchange_to_received_p99_seconds",
    "p99 of Bybit's ts -> ingest's receive time of the public pushes published in the last 10 s (includes "
    "the network and the two clocks' difference): high when ingest reads Bybit's sockets late",
    multiprocess_mode="livemax")
RECEIVED_TO_CONFIRMED = Histogram(
    "wsgw_publisher_received_to_confirmed_seconds",
    "Bybit frame received by ingest -> confirmed by RabbitMQ (the latency target of docs/performance.md)",
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


class LatencyCounts:
    """Received -> confirmed latency of every confirmed event, counted in fixed millisecond
    buckets (the status file shows them; a benchmark takes two snapshots and reads any
    percentile of the window between them, to the bucket). ``counts[i]`` holds events with
    latency <= ``EDGES_MS[i]`` and above the previous edge; the last bucket is everything slower."""

    EDGES_MS = (0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9, 10, 12.5, 15, 20, 25, 30, 40, 50, 75, 100, 150,
                200, 300, 500, 750, 1000, 2000, 5000, 10000)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.EDGES_MS) + 1)

    def add(self, ms: float) -> None:
        self.counts[bisect_left(self.EDGES_MS, ms)] += 1

    def doc(self) -> dict:
        return {"edges_ms": list(self.EDGES_MS), "counts": list(self.counts)}


class LagWindow:
    """The p99 of a ``LatencyCounts`` over the last ``window_s`` (read with ``p99_ms``)."""

    def __init__(self, counts: LatencyCounts, window_s: float = 10.0) -> None:
        self.counts, self.window_s = counts, window_s
        self._at, self._before = 0.0, None
        self.last: float | None = None

    def p99_ms(self, now: float) -> float | None:
        """The p99 of the window that ended at ``now``, computed once per window (None: no events)."""
        if now - self._at >= self.window_s:
            after = self.counts.doc()
            self.last = percentile_ms(self._before, after, 99) if self._before is not None else None
            self._at, self._before = now, after
        return self.last


def percentile_ms(before: dict | None, after: dict, p: float) -> float | None:
    """The bucket edge under which ``p`` % of the events between two ``LatencyCounts.doc()``
    snapshots were confirmed (an upper bound; None without events, inf past the last edge)."""
    counts = [a - (before["counts"][i] if before else 0) for i, a in enumerate(after["counts"])]
    total = sum(counts)
    if not total:
        return None
    seen = 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= p / 100 * total:
            return after["edges_ms"][i] if i < len(after["edges_ms"]) else float("inf")
    return float("inf")


class Tally:
    """Per-process counts (also shown in the status file), flushed into Prometheus."""

    FIELDS = ("events_in", "published", "confirmed", "nacked", "returned", "dropped", "bad_input")

    def __init__(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, Counter())
        self.gaps = 0
        self.ticker_no_snapshot = 0
        self.republished = 0
        self._flushed: dict[str, Counter] = {name: Counter() for name in self.FIELDS}
        self._flushed_scalars = {"gaps": 0, "ticker_no_snapshot": 0, "republished": 0}

    def flush(self) -> None:
        metric = {"events_in": EVENTS_IN, "published": PUBLISHED, "confirmed": CONFIRMED, "nacked": NACKED,
                  "returned": RETURNED, "dropped": DROPPED, "bad_input": BAD_INPUT}
        for name, m in metric.items():
            now, before = getattr(self, name), self._flushed[name]
            for label, value in now.items():
                delta = value - before[label]
                if delta:
                    m.labels(label).inc(delta)
                    before[label] = value
        for name, m in (("gaps", STREAM_GAPS), ("ticker_no_snapshot", TICKER_NO_SNAPSHOT),
                        ("republished", REPUBLISHED)):
            delta = getattr(self, name) - self._flushed_scalars[name]
            if delta:
                m.inc(delta)
                self._flushed_scalars[name] += delta


def _zero_series() -> None:
    """Zero series for drops and bad input, so dashboards and alerts see 0 rather than no data."""
    from common.classify import MARKET_CLASSES

    for cls in sorted(MARKET_CLASSES):
        DROPPED.labels(cls)
    for reason in ("envelope", "unknown_topic", "bad_frame", "unpublishable", "internal_error"):   # service.py
        BAD_INPUT.labels(reason)


_zero_series()
