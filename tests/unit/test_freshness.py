"""The age bound on market data and the books/tickers that heal: pure logic, no services.

A market event older than its class's bound since ingest received it is dropped (ingest's
hand-off, the publisher's intake and outbox), counted per class and stream; account and
system events never are. Waiting market data leaves the shortest bound's class first. A lost book
frame (or a ticker the publisher cannot complete) marks its stream for a fresh snapshot.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
import zmq

from api import status
from common.config import load_settings
from common.envelope import Envelope
from common.freshness import BUFFER_FULL, TOO_OLD, MarketQueues, age_bounds, needs_snapshot, too_old
from ingest.control import resync_topics
from ingest.handoff import HWM, Downstream
from publisher.events import StreamNumbers, system_event
from publisher.outbox import Outbox
from publisher.pipeline import Pipeline
from publisher.resync import BOOK_INTERVAL_S, MIN_INTERVAL_S, RETRY_S, Healer

pytestmark = pytest.mark.unit
FRAMES = Path(__file__).resolve().parent.parent / "frames"
NOW = 1_785_000_010_000_000_000
MS = 1_000_000
BOUNDS = age_bounds(books_ms=500, tickers_ms=500, trades_ms=5_000, liquidations_ms=30_000, other_ms=5_000)


def env(name: str, seq: int, age_ms: float, endpoint: str = "linear", epoch: str = "ep1") -> Envelope:
    payload = (FRAMES / f"{name}.json").read_bytes()
    return Envelope("frame", payload, endpoint=endpoint, topic=orjson.loads(payload)["topic"],
                    recv_ns=int(NOW - age_ms * MS), stream_seq=seq, epoch=epoch)


def pipeline(drops: list) -> Pipeline:
    p = Pipeline(StreamNumbers("e1"), max_age_ns=BOUNDS, clock=lambda: NOW)
    p.on_drop = lambda *a: drops.append(a)
    return p


# -- bounds ------------------------------------------------------------------------------
def test_bounds_per_class_and_never_for_account_or_system():
    assert BOUNDS["orderbook"] == BOUNDS["orderbook_rpi"] == BOUNDS["tickers"] == 500 * MS
    assert BOUNDS["trades"] == BOUNDS["klines"] == 5_000 * MS and BOUNDS["liquidations"] == 30_000 * MS
    assert too_old(BOUNDS, "orderbook", NOW - 501 * MS, NOW) and not too_old(BOUNDS, "orderbook", NOW - 499 * MS, NOW)
    for cls in ("executions", "order_status", "balances", "positions", "system"):
        assert not too_old(BOUNDS, cls, NOW - 3600_000 * MS, NOW)
    assert not too_old(BOUNDS, "trades", 0, NOW)        # receive time unknown (read back from the spool)


def test_settings_with_bounds():
    s = load_settings({"MARKET_MAX_AGE_MS_BOOKS": "250", "MARKET_MAX_AGE_MS_TRADES": "2000"})
    assert s.market_max_age_ns()["orderbook"] == 250 * MS and s.market_max_age_ns()["trades"] == 2000 * MS
    assert load_settings({}).market_max_age_ns() == BOUNDS
    for bad in ({"MARKET_MAX_AGE_MS_BOOKS": "10"}, {"MARKET_MAX_AGE_MS_TICKERS": "61000"},
                {"MARKET_MAX_AGE_MS_LIQUIDATIONS": "soon"}):
        with pytest.raises(Exception, match=next(iter(bad))):
            load_settings(bad)


def test_which_losses_need_a_snapshot():
    assert needs_snapshot("linear", "orderbook.50.BTCUSDT") and needs_snapshot("spot", "orderbook.200.BTCUSDT")
    assert not needs_snapshot("linear", "orderbook.1.BTCUSDT")          # snapshots only
    assert needs_snapshot("linear", "tickers.BTCUSDT") and needs_snapshot("inverse", "tickers.BTCUSD")
    assert not needs_snapshot("spot", "tickers.BTCUSDT") and not needs_snapshot("linear", "publicTrade.BTCUSDT")


# -- the queues --------------------------------------------------------------------------
def test_shorter_bound_first_so_fresh_books_pass_old_trades():
    q = MarketQueues(BOUNDS)
    for i in range(3):
        q.append("trades", NOW - (4000 - i) * MS, 10, f"t{i}")      # deadlines NOW+1000..
    q.append("orderbook", NOW - 100 * MS, 10, "b0")                  # deadline NOW+400: first
    assert [q.pop()[3] for _ in range(4)] == ["b0", "t0", "t1", "t2"]
    assert q.pop() is None and q.bytes == 0 and len(q) == 0


def test_books_pass_trades_about_to_expire_too():
    """Under overload the trades at the head are always about to expire; were they sent first
    (earliest deadline), a fresh book would wait behind them until it expired as well."""
    q = MarketQueues(BOUNDS)
    for i in range(3):
        q.append("trades", NOW - (4990 - i) * MS, 10, f"t{i}")      # deadlines NOW+10..12 ms
    q.append("tickers", NOW - 50 * MS, 10, "k0")                     # deadline NOW+450
    q.append("orderbook", NOW - 10 * MS, 10, "b0")                   # deadline NOW+490
    assert [q.pop()[3] for _ in range(5)] == ["k0", "b0", "t0", "t1", "t2"]   # equal bounds: older head first


def test_memory_full_drops_the_oldest_of_the_longest_bound():
    q = MarketQueues(BOUNDS)
    q.append("orderbook", NOW - 400 * MS, 10, "old book")
    q.append("trades", NOW - 10 * MS, 10, "new trade")
    q.append("trades", NOW - 5 * MS, 10, "newer trade")
    q.append("liquidations", NOW - 1 * MS, 10, "liq")                # 30 s bound: the first to give way
    assert [q.pop_victim()[3] for _ in range(4)] == ["liq", "new trade", "newer trade", "old book"]
    assert q.pop_victim() is None and q.bytes == 0


def test_runs_of_takes_and_drops_come_out_as_one_at_a_time():
    """``pop_many`` and ``trim`` (a queue picked once per run) against ``pop`` and ``pop_victim``
    called one entry at a time, over random mixes: equal bounds (books and tickers), a class with
    no bound, equal receive times and unknown ones (0)."""
    import random

    rng = random.Random(11)
    classes = ["orderbook", "tickers", "trades", "liquidations", "unbounded"]
    for trial in range(300):
        entries = []
        for i in range(rng.randint(0, 60)):
            cls = rng.choice(classes)
            recv = 0 if rng.random() < 0.1 else NOW - rng.choice([0, 1, 2, 50, 400, 3000]) * MS
            entries.append((cls, recv, rng.randint(1, 30), f"{cls}-{i}"))
        entries.sort(key=lambda e: (e[0], e[1] or NOW))      # within a class, in receive order

        def filled():
            q = MarketQueues(BOUNDS)
            for cls, recv, size, item in entries:
                q.append(cls, recv, size, item)
            return q
        one, run = filled(), filled()
        n = rng.randint(1, 40)
        singly = [one.pop() for _ in range(min(n, len(one)))]
        assert [e[3] for e in run.pop_many(n)] == [e[3] for e in singly], trial
        count, size = rng.randint(0, len(one)), rng.randint(0, one.bytes + 1)
        singly = []
        while len(one) > count or one.bytes > size:
            singly.append(one.pop_victim())
        assert [e[3] for e in run.trim(count, size)] == [e[3] for e in singly], trial
        assert (len(run), run.bytes) == (len(one), one.bytes)


def test_expired_heads_come_out_counted_by_class():
    q = MarketQueues(BOUNDS)
    q.append("orderbook", NOW - 600 * MS, 5, "old book")
    q.append("orderbook", NOW - 10 * MS, 5, "new book")
    q.append("trades", NOW - 6000 * MS, 5, "old trade")
    q.append("trades", NOW - 4000 * MS, 5, "trade within 5 s")
    gone = q.expired(NOW)
    assert sorted(e[3] for e in gone) == ["old book", "old trade"]
    assert len(q) == 2 and q.bytes == 10


# -- publisher: outbox -------------------------------------------------------------------
def ev(cls: str, n: int, age_ms: float):
    e = system_event("x", {"n": n}, recv_ns=int(NOW - age_ms * MS))
    e.event_class, e.stream, e.stream_seq = cls, f"{cls}.linear.BTCUSDT", n
    return e


def test_outbox_drops_too_old_market_never_account():
    box = Outbox(bound=1000, max_age_ns=BOUNDS)
    seen = []
    box.on_drop = lambda *a: seen.append(a)
    for n in range(1, 4):
        box.add(ev("orderbook", n, 900))          # past 500 ms
    box.add(ev("orderbook", 4, 100))
    box.add(ev("trades", 1, 900))                 # within 5 s
    box.add(ev("executions", 1, 3_600_000))       # an hour old: account, kept
    box.add(ev("system", 1, 3_600_000))
    assert box.expire(NOW) == 3
    assert dict(box.dropped_by[TOO_OLD]) == {"orderbook": 3} and dict(box.dropped) == {"orderbook": 3}
    assert box.take_age_ranges() == {"orderbook.linear.BTCUSDT": [1, 3, 3]} and box.take_age_ranges() == {}
    assert seen == [("orderbook", "orderbook.linear.BTCUSDT", TOO_OLD)] * 3
    out = [(e.event_class, e.stream_seq) for e in iter(box.pop, None)]
    assert out == [("executions", 1), ("system", 1), ("orderbook", 4), ("trades", 1)]


def test_outbox_full_is_still_buffer_full():
    box = Outbox(bound=2, max_age_ns=BOUNDS)
    for n in range(1, 5):
        box.add(ev("trades", n, 0))
    assert dict(box.dropped_by[BUFFER_FULL]) == {"trades": 2} and box.drop_ranges == {"trades.linear.BTCUSDT": [1, 2, 2]}


# -- publisher: intake -------------------------------------------------------------------
def test_too_old_at_intake_leaves_its_number_unused_and_counts_it():
    drops = []
    p = pipeline(drops)
    [first] = p.process(env("public_trade", 1, 10))
    assert p.process(env("public_trade", 2, 6_000)) == []                  # 6 s old trade
    [third] = p.process(env("public_trade", 3, 4_000))                     # 4 s: within the bound
    assert (first.stream_seq, third.stream_seq) == (1, 3)                  # the consumer sees the gap
    assert drops == [("trades", "trades.linear.BTCUSDT", 2, TOO_OLD)]


def test_too_old_ticker_is_still_merged_so_the_next_is_complete():
    drops = []
    p = pipeline(drops)
    snap = orjson.loads((FRAMES / "ticker_linear_snapshot.json").read_bytes())["data"]
    delta = orjson.loads((FRAMES / "ticker_linear_delta.json").read_bytes())["data"]
    p.process(env("ticker_linear_snapshot", 1, 10))
    assert p.process(env("ticker_linear_delta", 2, 800)) == []
    [nxt] = p.process(env("ticker_linear_delta", 3, 10))
    assert orjson.loads(nxt.body)["data"] == {**snap, **delta}
    assert [d[3] for d in drops] == [TOO_OLD] and not p.healer.broken       # nothing to heal


def test_too_old_book_delta_asks_for_a_snapshot_which_heals_it():
    drops = []
    p = pipeline(drops)
    p.process(env("orderbook_snapshot", 1, 10))
    assert not p.healer.broken
    assert p.process(env("orderbook_delta", 2, 700)) == []
    assert p.healer.due(NOW / 1e9) == [("linear:orderbook.50.BTCUSDT", "too_old in the publisher")]
    p.process(env("orderbook_snapshot", 3, 10))
    assert not p.healer.broken and p.healer.healed == 1


def test_only_the_snapshot_that_heals_a_broken_book_is_marked_to_go_first():
    p = pipeline([])
    [first] = p.process(env("orderbook_snapshot", 1, 10))
    assert not first.heals
    assert p.process(env("orderbook_delta", 2, 700)) == []                 # too old: the book breaks
    [healing] = p.process(env("orderbook_snapshot", 3, 10))
    [later] = p.process(env("orderbook_snapshot", 4, 10))
    assert healing.heals and not later.heals


def test_a_healing_snapshot_replaces_its_books_waiting_events_and_goes_before_the_market():
    box = Outbox(bound=1000, max_age_ns=BOUNDS)
    seen = []
    box.on_drop = lambda *a: seen.append(a)
    other = ev("orderbook", 1, 10)
    other.stream = other.routing_key = "orderbook.linear.ETHUSDT"
    for n in range(1, 4):
        e = ev("orderbook", n, 10)
        e.routing_key = e.stream
        box.add(e)
    box.add(other)
    box.add(ev("tickers", 1, 10))
    box.add(ev("executions", 1, 10))
    snap = ev("orderbook", 4, 0)
    snap.routing_key, snap.heals = snap.stream, True
    box.heal(snap)
    assert dict(box.dropped_by["superseded"]) == {"orderbook": 3} and not seen       # no loss to heal again
    out = [(e.event_class, e.stream, e.stream_seq) for e in iter(box.pop, None)]
    assert out == [("executions", "executions.linear.BTCUSDT", 1), ("orderbook", "orderbook.linear.BTCUSDT", 4),
                   ("orderbook", "orderbook.linear.ETHUSDT", 1), ("tickers", "tickers.linear.BTCUSDT", 1)]
    assert box.bytes == 0 and len(box) == 0


def test_frames_lost_before_the_publisher_break_the_book_and_the_ticker():
    p = pipeline([])
    p.process(env("orderbook_snapshot", 1, 10))
    p.process(env("ticker_linear_snapshot", 1, 10))
    p.process(env("orderbook_delta", 5, 10))                 # 2-4 dropped by ingest's hand-off
    out = p.process(env("ticker_linear_delta", 7, 10))         # merged state incomplete: not published
    assert [e.routing_key for e in out] == ["system.stream_gap"]
    due = dict(p.healer.due(NOW / 1e9))
    assert due == {"linear:orderbook.50.BTCUSDT": "seq_jump between ingest and the publisher",
                   "linear:tickers.BTCUSDT": "seq_jump between ingest and the publisher"}


def test_after_a_publisher_restart_a_delta_without_snapshot_asks_for_one():
    p = pipeline([])
    p.process(env("orderbook_delta", 40, 10))
    assert p.process(env("ticker_linear_delta", 41, 10)) == []
    assert set(dict(p.healer.due(NOW / 1e9))) == {"linear:orderbook.50.BTCUSDT", "linear:tickers.BTCUSDT"}


def test_requests_are_rate_limited_per_topic_and_repeated_until_healed():
    h = Healer()
    h.lost("linear:orderbook.rpi.A", "too_old in the publisher", 100.0)
    assert h.due(100.0) == [("linear:orderbook.rpi.A", "too_old in the publisher")]
    h.lost("linear:orderbook.rpi.A", "again", 100.1)
    assert h.due(100.1) == [] and h.due(100.0 + RETRY_S - 0.01) == []
    assert len(h.due(100.0 + RETRY_S)) == 1                   # no snapshot came: asked again
    h.frame("linear:orderbook.rpi.A", True, 103.0)            # the snapshot came
    h.lost("linear:orderbook.rpi.A", "too_old in the publisher", 103.0)
    assert len(h.due(103.0)) == 1                             # a new loss: asked at once
    h.frame("linear:orderbook.rpi.A", True, 103.1)
    h.lost("linear:orderbook.rpi.A", "too_old in the publisher", 103.2)
    assert h.due(103.2) == []                                 # but not twice within MIN_INTERVAL_S
    assert len(h.due(103.0 + MIN_INTERVAL_S)) == 1
    h.unasked(["linear:orderbook.rpi.A"])                     # the request could not be sent
    assert len(h.due(103.6)) == 1 and h.requests == 5 and h.healed == 2



def test_a_plain_book_or_a_ticker_may_be_asked_for_more_often_than_a_resubscribed_stream():
    """ingest answers a plain order book or a linear/inverse ticker from its own copy (no request
    to Bybit); an RPI book is resubscribed."""
    h = Healer()
    for stream in ("linear:orderbook.50.A", "linear:orderbook.rpi.A", "linear:tickers.A"):
        h.lost(stream, "too_old in the publisher", 100.0)
    assert len(h.due(100.0)) == 3
    for stream in ("linear:orderbook.50.A", "linear:orderbook.rpi.A", "linear:tickers.A"):
        h.frame(stream, True, 100.01)
        h.lost(stream, "too_old in the publisher", 100.02)
    assert {s for s, _ in h.due(100.001 + BOOK_INTERVAL_S)} == {"linear:orderbook.50.A", "linear:tickers.A"}
    assert h.due(100.001 + MIN_INTERVAL_S) == [("linear:orderbook.rpi.A", "too_old in the publisher")]


# -- ingest: hand-off ----------------------------------------------------------------------
def test_handoff_drops_frames_past_their_bound_and_announces_them(short_tmp):
    ctx = zmq.Context()
    try:
        d = Downstream(ctx, "publisher", f"ipc://{short_tmp}/nobody", bound=10 ** 9, bound_bytes=10 ** 9,
                       max_age_ns=BOUNDS)
        frame = [b"gw1", b"{}", b"x" * 100]
        for i in range(HWM):                       # ZeroMQ takes these; nobody reads
            d.send(frame, "trades", NOW, "linear", "publicTrade.X", i)
        for seq in range(1, 11):
            d.send(frame, "orderbook", NOW - 10 * MS, "linear", "orderbook.50.BTCUSDT", seq)
        d.send(frame, "executions", NOW - 3600_000 * MS)
        d.flush(NOW + 600 * MS)                    # the books are 610 ms old now
        assert dict(d.dropped_by[TOO_OLD]) == {"orderbook": 10} and len(d.market) == 0 and len(d.account) == 1
        [notice] = d.take_drop_notices()
        assert notice["reason"] == TOO_OLD and notice["where"] == "ingest"
        assert notice["dropped_frames"] == {"linear:orderbook.50.BTCUSDT": {
            "routing_key": "orderbook.linear.BTCUSDT", "ingest_seq_from": 1, "ingest_seq_to": 10, "count": 10}}
        d.sock.close(0)
    finally:
        ctx.term()


# -- ingest: control op ------------------------------------------------------------------
def test_resync_request_parsed_or_refused():
    req = {"op": "resync", "where": "publisher",
           "topics": [{"endpoint": "linear", "topic": "orderbook.50.BTCUSDT", "reason": "too_old in the publisher"}]}
    assert resync_topics(req) == [("linear", "orderbook.50.BTCUSDT", "dropped in the publisher: too_old in the publisher")]
    for bad in ({"op": "resync"}, {"op": "resync", "topics": [{"endpoint": 1}]}, {"op": "resync", "topics": "x"}):
        with pytest.raises(ValueError):
            resync_topics(bad)


# -- /api/v1/status: freshness on what reached RabbitMQ -------------------------------------
def test_freshness_follows_what_reached_rabbitmq():
    now = datetime.fromtimestamp(1_785_000_100, timezone.utc)
    t = now.timestamp()
    row = {"id": "x", "endpoint": "linear", "topic": "tickers.BTCUSDT", "channel": "tickers", "depth": None,
           "status": "active", "last_event_at": now}
    files = {"ingest": {"age_s": 0.5, "data": {"topics": {"linear:tickers.BTCUSDT": {"last_event_ms": t * 1000}}}}}
    # ingest reads it, but the publisher has confirmed nothing of it for 30 s
    files["publisher"] = {"age_s": 0.5, "data": {"started_at": t - 100, "delivered": {"linear:tickers.BTCUSDT": t - 30}}}
    [judged] = status.subscription_list([row], now, files)
    assert judged["freshness"] == "stale" and judged["last_event_age_s"] == 30
    # taken in since the restart 20 s ago, never confirmed: stale too
    files["publisher"]["data"] = {"started_at": t - 20, "delivered": {"linear:tickers.BTCUSDT": None}}
    assert status.subscription_list([row], now, files)[0]["freshness"] == "stale"
    files["publisher"]["data"]["delivered"]["linear:tickers.BTCUSDT"] = t - 0.2
    assert status.subscription_list([row], now, files)[0]["freshness"] == "fresh"
    # not taken in by the publisher yet (just subscribed), or no publisher file: what ingest read
    files["publisher"]["data"]["delivered"] = {}
    assert status.subscription_list([row], now, files)[0]["freshness"] == "fresh"
    del files["publisher"]
    assert status.subscription_list([row], now, files)[0]["freshness"] == "fresh"
