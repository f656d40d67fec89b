"""Ticker merge, gap detection and the bounded outbox: pure logic, no services."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from common.envelope import Envelope
from publisher.events import FrameError, system_event
from publisher.gaps import GapTracker
from publisher.metrics import LagWindow, LatencyCounts, percentile_ms
from publisher.outbox import EventSpool, Outbox
from publisher.pipeline import Pipeline

FRAMES = Path(__file__).resolve().parent.parent / "frames"
NS = 1_785_000_000_000_000_000


def frame_env(name: str, endpoint: str, seq: int, epoch: str = "ep1", ns: int = NS) -> Envelope:
    payload = (FRAMES / f"{name}.json").read_bytes()
    return Envelope("frame", payload, endpoint=endpoint, topic=orjson.loads(payload)["topic"], recv_ns=ns,
                    stream_seq=seq, epoch=epoch)


# -- tickers -------------------------------------------------------------------------
def test_ticker_delta_merged_into_snapshot():
    p = Pipeline()
    snap = orjson.loads((FRAMES / "ticker_linear_snapshot.json").read_bytes())["data"]
    delta = orjson.loads((FRAMES / "ticker_linear_delta.json").read_bytes())["data"]
    [first] = p.process(frame_env("ticker_linear_snapshot", "linear", 1))
    assert orjson.loads(first.body)["data"] == snap and "changed_keys" not in orjson.loads(first.body)
    [merged] = p.process(frame_env("ticker_linear_delta", "linear", 2))
    body = orjson.loads(merged.body)
    assert body["type"] == "delta"
    assert body["data"] == {**snap, **delta}
    assert set(body["data"]) == set(snap)                      # complete ticker
    assert body["changed_keys"] == [k for k in delta if k != "symbol"]
    assert merged.headers["changed_keys"] == ",".join(body["changed_keys"])


def test_ticker_delta_before_snapshot_is_not_published():
    p = Pipeline()
    assert p.process(frame_env("ticker_linear_delta", "linear", 1)) == []
    assert p.counts["ticker_delta_no_snapshot"] == 1
    # The same symbol on another category has its own state.
    p.process(frame_env("ticker_linear_snapshot", "linear", 2))
    assert p.process(frame_env("ticker_linear_delta", "inverse", 1)) == []
    assert len(p.process(frame_env("ticker_linear_delta", "linear", 3))) == 1


def test_a_frame_naming_another_topic_than_ingest_read_is_bad_input():
    """ingest routes most public pushes by the topic it reads first; a frame whose parsed topic
    differs (a second "topic" key) is rejected, not published under either."""
    p = Pipeline()
    env = frame_env("public_trade", "linear", 1)
    twice = env.payload.rstrip()[:-1] + b', "topic": "publicTrade.ETHUSDT"}'
    with pytest.raises(FrameError, match="not the one ingest read"):
        p.process(Envelope("frame", twice, endpoint="linear", topic=env.topic, recv_ns=NS, stream_seq=2,
                           epoch="ep1"))
    assert len(p.process(frame_env("public_trade", "linear", 3))) == 1


# -- gaps ----------------------------------------------------------------------------
def test_seq_jump_publishes_stream_gap():
    p = Pipeline()
    p.process(frame_env("public_trade", "linear", 1, ns=NS))
    p.process(frame_env("public_trade", "linear", 2, ns=NS + 1000))
    out = p.process(frame_env("public_trade", "linear", 6, ns=NS + 5_000_000))
    assert [e.routing_key for e in out] == ["system.stream_gap", "trades.linear.BTCUSDT"]
    gap = orjson.loads(out[0].body)["data"]
    assert gap["stream"] == "linear:publicTrade.BTCUSDT" and gap["reason"] == "seq_jump"
    assert (gap["missing_from"], gap["missing_to"], gap["missing"]) == (3, 5, 3)
    assert gap["from_time"] < gap["to_time"]
    # Other streams are independent; duplicates are counted, not gaps.
    assert len(p.process(frame_env("kline", "linear", 1))) == 1
    assert len(p.process(frame_env("public_trade", "linear", 6))) == 1
    assert p.gaps.out_of_order == 1


def test_new_epoch_reports_every_open_stream():
    p = Pipeline()
    p.process(frame_env("public_trade", "linear", 1))
    p.process(frame_env("kline", "linear", 1))
    out = p.process(frame_env("public_trade", "linear", 1, epoch="ep2", ns=NS + 10**9))
    gaps = [orjson.loads(e.body)["data"] for e in out if e.event_class == "system"]
    assert {g["stream"] for g in gaps} == {"linear:publicTrade.BTCUSDT", "linear:kline.5.BTCUSDT"}
    assert all(g["reason"] == "ingest_restarted" and g["old_epoch"] == "ep1" for g in gaps)
    # A late envelope of the old epoch is not a new epoch change.
    assert [e.event_class for e in p.process(frame_env("kline", "linear", 2, epoch="ep1"))] == ["klines"]
    assert p.gaps.stale == 1


def test_gap_state_survives_a_restart():
    g = GapTracker()
    g.observe("linear", "t", "ep1", 1, NS)
    g.observe("linear", "t", "ep1", 2, NS)
    g2 = GapTracker()
    g2.restore(orjson.loads(orjson.dumps(g.snapshot())))
    [gap] = g2.observe("linear", "t", "ep1", 10, NS + 1)
    assert gap["reason"] == "publisher_restarted" and (gap["missing_from"], gap["missing_to"]) == (3, 9)
    assert g2.observe("linear", "t", "ep1", 11, NS + 2) == []
    g3 = GapTracker()
    g3.restore(g.snapshot())
    [gap] = g3.observe("linear", "t", "ep2", 1, NS + 3)
    assert gap["reason"] == "publisher_restarted" and gap["last_seq"] == 2


# -- outbox --------------------------------------------------------------------------
def ev(cls: str, n: int):
    e = system_event("x", {"n": n}, recv_ns=NS + n)
    e.event_class, e.stream, e.stream_seq = cls, f"linear:{cls}", n
    return e


def test_outbox_drops_oldest_market_keeps_account(tmp_path):
    box = Outbox(bound=4, spool=EventSpool(tmp_path / "s"))
    for i in range(1, 4):
        box.add(ev("trades", i))
    box.add(ev("order_status", 100))
    box.add(ev("trades", 4))                      # over the bound: trades 1 goes
    box.add(ev("executions", 101))                # trades 2 goes
    assert dict(box.dropped) == {"trades": 2}
    assert box.drop_ranges == {"linear:trades": [1, 2, 2]}
    out = [box.pop() for _ in range(4)]
    # account events first (a market backlog never delays them), each stream in its order
    assert [(e.event_class, e.stream_seq) for e in out] == [
        ("order_status", 100), ("executions", 101), ("trades", 3), ("trades", 4)]
    assert box.pop() is None


def test_outbox_spools_account_events_in_order(tmp_path):
    spool = EventSpool(tmp_path / "s")
    box = Outbox(bound=100, spool=spool)
    for i in range(250):
        box.add(ev("order_status", i))
    assert box.in_memory == 100 and spool.depth == 150 and len(box) == 250
    seen = []
    while (e := box.pop()) is not None:
        seen.append(e.stream_seq)
    assert seen == list(range(250))
    spool.confirmed(150)
    assert spool.idle and (tmp_path / "s").stat().st_size == 0


def test_spool_replayed_after_restart(tmp_path):
    spool = EventSpool(tmp_path / "s")
    box = Outbox(bound=100, spool=spool)
    for i in range(130):
        box.add(ev("balances", i))
    first = [box.pop() for _ in range(50)]           # 50 of the in-memory ones published
    spool.rewrite_front([e for e in [box.pop() for _ in range(50)]])   # 50 left in memory at stop
    spool.close()
    box2 = Outbox(bound=100, spool=EventSpool(tmp_path / "s"))
    replay = []
    while (e := box2.pop()) is not None:
        replay.append(e.stream_seq)
    assert [e.stream_seq for e in first] == list(range(50))
    assert replay == list(range(50, 130))


def test_requeue_goes_before_newer_events(tmp_path):
    box = Outbox(bound=10)
    for i in range(5):
        box.add(ev("trades", i))
    taken = [box.pop() for _ in range(3)]
    box.add(ev("trades", 5))
    box.requeue(taken[::-1])
    assert [box.pop().stream_seq for _ in range(6)] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("n", [1, 3, 7, 1000])
def test_outbox_gives_a_pump_in_one_take_what_pop_would_one_by_one(tmp_path, n):
    """Spooled account events, those in memory, heals and market classes of different bounds:
    ``pop_many(n)`` takes them in ``pop``'s order, and the bytes held go down the same."""
    def fill(box):
        for i in range(12):
            box.add(ev("balances", i))          # 10 in memory, 2 in the spool
        box.bound = 50
        for i in range(30):
            box.add(ev(("trades", "orderbook", "tickers")[i % 3], 100 + i))
        box.heal(ev("orderbook", 200))
    bounds = {"trades": 5_000_000_000, "orderbook": 500_000_000, "tickers": 500_000_000}
    one = Outbox(bound=10, spool=EventSpool(tmp_path / "a"), max_age_ns=bounds)
    many = Outbox(bound=10, spool=EventSpool(tmp_path / "b"), max_age_ns=bounds)
    fill(one), fill(many)
    assert many.spool_depth == 2
    by_pop, by_take = [], []
    while (e := one.pop()) is not None:
        by_pop.append((e.event_class, e.stream_seq))
    while chunk := many.pop_many(n):
        assert len(chunk) <= n
        by_take += [(e.event_class, e.stream_seq) for e in chunk]
    assert by_take == by_pop and len(by_pop) == 12 + 30 - 10 + 1      # the heal superseded the 10 books
    assert many.bytes == one.bytes == 0


def test_system_envelopes_without_epoch_do_not_end_an_epoch():
    from common.envelope import json_envelope
    p = Pipeline()
    p.process(frame_env("public_trade", "linear", 1))
    ops = json_envelope("system", {"program": "ingest", "state": "EXITED"}, topic="process_crashed",
                        recv_ns=NS, conn_id="ops")
    assert [e.routing_key for e in p.process(ops)] == ["system.process_crashed"]
    assert [e.event_class for e in p.process(frame_env("public_trade", "linear", 2))] == ["trades"]


def test_outbox_is_bounded_in_bytes_too(tmp_path):
    spool = EventSpool(tmp_path / "s")
    box = Outbox(bound=1_000_000, spool=spool, bound_bytes=200_000)
    for i in range(1000):
        box.add(ev("trades", i))
    assert box.bytes <= 200_000 and box.dropped["trades"] > 0
    assert box.in_memory + box.dropped["trades"] == 1000
    for i in range(1000):
        box.add(ev("executions", i))      # account: never dropped, spooled once memory is full
    assert box.dropped.get("executions", 0) == 0 and spool.depth > 0
    assert box.bytes <= 200_000 + 2_000
    drained = 0
    while box.pop() is not None:
        drained += 1
    assert box.bytes == 0 and drained == box.in_memory + drained


def test_latency_counts_percentiles_over_a_window():
    lat = LatencyCounts()
    for ms in (0.2, 0.5, 3.0, 3.5):          # an edge belongs to the bucket it closes
        lat.add(ms)
    before = lat.doc()
    assert before["counts"][:2] == [2, 0] and sum(before["counts"]) == 4
    for ms in [0.7] * 97 + [9.0, 11.0, 60_000.0]:
        lat.add(ms)
    after = lat.doc()
    assert percentile_ms(before, after, 50) == 1        # only the window between the snapshots
    assert percentile_ms(before, after, 98) == 9
    assert percentile_ms(before, after, 99) == 12.5
    assert percentile_ms(before, after, 100) == float("inf")
    assert percentile_ms(after, after, 99) is None
    assert percentile_ms(None, before, 100) == 4


def test_bybits_ts_to_ingests_receive_time_is_counted_for_public_pushes_only():
    """What the age bounds cannot see: a push ingest read 1.5 s after Bybit stamped it."""
    p = Pipeline()
    ts_ms = orjson.loads((FRAMES / "public_trade.json").read_bytes())["ts"]
    p.process(frame_env("public_trade", "linear", 1, ns=(ts_ms + 1500) * 1_000_000))
    ts_ms = orjson.loads((FRAMES / "ticker_linear_snapshot.json").read_bytes())["ts"]
    p.process(frame_env("ticker_linear_snapshot", "linear", 1, ns=(ts_ms + 3) * 1_000_000))
    p.process(frame_env("order", "private", 1, ns=NS * 2))          # an account push: not counted
    lag = p.exchange_to_received.doc()
    assert sum(lag["counts"]) == 2
    assert (percentile_ms(None, lag, 50), percentile_ms(None, lag, 100)) == (3, 2000)


def test_the_read_lag_p99_is_of_the_last_window_only():
    counts = LatencyCounts()
    win = LagWindow(counts, window_s=10)
    assert win.p99_ms(100.0) is None                 # the first window starts here
    for ms in [5.0] * 99 + [1200.0]:
        counts.add(ms)
    assert win.p99_ms(105.0) is None                 # not over yet
    assert win.p99_ms(110.0) == 5
    counts.add(1200.0)
    assert win.p99_ms(119.0) == 5                    # the last whole window's, until the next ends
    assert win.p99_ms(120.0) == 2000
    assert win.p99_ms(130.0) is None                 # nothing published in it


def test_outbox_never_drops_bybit_status_notices(tmp_path):
    """exchange_status is published persistent, so it is kept like account data, never dropped."""
    box = Outbox(bound=2, spool=EventSpool(tmp_path / "s"))
    box.add(ev("exchange_status", 1))
    for i in range(1, 6):
        box.add(ev("trades", i))
    box.add(ev("exchange_status", 2))
    assert box.dropped["exchange_status"] == 0 and box.dropped["trades"] >= 3
    out = []
    while (e := box.pop()) is not None:
        out.append(e.event_class)
    assert out.count("exchange_status") == 2


def test_spool_skips_a_line_a_crash_cut_short_and_keeps_the_rest(tmp_path):
    path = tmp_path / "s"
    spool = EventSpool(path)
    spool.append(ev("order_status", 1))
    spool.close()
    with open(path, "ab") as f:
        f.write(b'{"i": "torn')                     # the process died in the middle of a write
    spool = EventSpool(path)
    spool.append(ev("order_status", 2))
    got = spool.read(10)
    assert [e.stream_seq for e in got] == [1, 2] and spool.corrupt == 1
