"""ingest's copy of a linear/inverse ticker (``KeptTicker``) and the snapshot it hands off when
pushes of the ticker are dropped on the way to consumers. The oracles are a recorded snapshot and
delta read by hand, and the simulator's own ticker (the fields it holds after what it sent)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import orjson

from bybitsim.market import Market
from bybitsim.streams import make_stream
from ingest import parse
from ingest.handoff import Downstream
from ingest.tickers import KeptTicker

FRAMES = Path(__file__).resolve().parents[1] / "frames"


def _frame(name: str) -> dict:
    return parse.loads((FRAMES / name).read_bytes())


def test_a_delta_overwrites_only_the_fields_it_carries():
    kept = KeptTicker()
    kept.apply(_frame("ticker_linear_snapshot.json"), 10, "s1")
    kept.apply(_frame("ticker_linear_delta.json"), 20, "s2")
    snap = kept.snapshot()
    # read off the two recorded files: the delta's values where it has them, the snapshot's elsewhere
    assert snap["data"]["markPrice"] == "118249.10" and snap["data"]["ask1Size"] == "0.412"
    assert snap["data"]["lastPrice"] == "118250.40" and snap["data"]["fundingRate"] == "0.0001"
    assert len(snap["data"]) == len(json.loads((FRAMES / "ticker_linear_snapshot.json").read_text())["data"])
    assert (snap["topic"], snap["type"], snap["cs"], snap["ts"]) == ("tickers.BTCUSDT", "snapshot",
                                                                    412345679233, 1785000004100)
    assert (kept.recv_ns, kept.session) == (20, "s2")


def test_the_copy_equals_the_simulators_ticker_after_thousands_of_deltas():
    stream = make_stream(Market(5), "linear", "tickers.ETHUSDT", 5)
    kept = KeptTicker()
    ts = 1_796_000_000_000
    for i in range(3000):
        kept.apply(parse.loads(orjson.dumps(stream.next(ts + i * 40))), i, "s")
        if i % 600 == 0 or i == 2999:
            snap = kept.snapshot()
            assert snap["data"] == stream.fields
            assert (snap["type"], snap["topic"], snap["cs"]) == ("snapshot", "tickers.ETHUSDT", stream.seq)
    # the copy is what the publisher's ticker merging accepts as a snapshot
    assert parse.loads(orjson.dumps(kept.snapshot()))["type"] == "snapshot"


def test_a_delta_before_any_snapshot_or_a_push_without_data_leaves_no_copy():
    kept = KeptTicker()
    kept.apply(_frame("ticker_linear_delta.json"), 1, "s")
    assert not kept.valid
    kept.apply(_frame("ticker_linear_snapshot.json"), 2, "s")
    assert kept.valid
    kept.apply({"topic": "tickers.BTCUSDT", "type": "delta", "data": ["not", "an", "object"], "ts": 3}, 3, "s")
    assert not kept.valid and kept.data == {}
    kept.apply(_frame("ticker_linear_delta.json"), 4, "s")     # still no snapshot since
    assert not kept.valid


def test_dropped_linear_ticker_pushes_are_reported_for_healing_spot_ones_are_not(tmp_path):
    """The hand-off tells ingest which streams lost frames, so it can heal them from its copy:
    linear/inverse tickers (deltas) and plain books; never spot tickers (each push is whole)."""
    import zmq

    ctx = zmq.Context.instance()
    address = f"ipc://{tmp_path}/p"
    pull = ctx.socket(zmq.PULL)
    pull.bind(address)
    d = Downstream(ctx, "publisher", address, bound=4, bound_bytes=10**9)
    try:
        now = time.time_ns()
        for i in range(50):        # nothing reads: ZeroMQ fills up, then the bound of 4 drops
            d.send((b"1", b"{}", b"x" * 50_000), "tickers", now, "linear", "tickers.BTCUSDT", i + 1)
            d.send((b"1", b"{}", b"x" * 50_000), "tickers", now, "spot", "tickers.BTCUSDT", i + 1)
        assert d.dropped_by["buffer_full"]["tickers"] > 0
        assert set(d.lost) == {("linear", "tickers.BTCUSDT")}
        assert d.lost[("linear", "tickers.BTCUSDT")][1] == "buffer_full"
    finally:
        d.close()
        pull.close(0)
