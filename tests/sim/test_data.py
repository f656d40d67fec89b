"""Public data frames: shapes match the recorded frames, books stay consistent, hooks."""
from __future__ import annotations

from decimal import Decimal

import pytest

from bybitsim.market import Market
from bybitsim.streams import make_stream
from tests.sim.conftest import frame

OPTION = "BTC-31JUL26-120000-C"
DECIMAL_STRIKE = "XRP-30OCT26-0.4-P-USDT"      # option strikes can have decimals


def item_keys(f: dict) -> set:
    data = f["data"]
    return set(data[0] if isinstance(data, list) else data)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("endpoint,topic,recorded,drop_keys", [
    ("linear", "publicTrade.BTCUSDT", "public_trade", set()),
    ("inverse", "publicTrade.BTCUSD", "public_trade", set()),
    ("spot", "publicTrade.BTCUSDT", "public_trade", {"L"}),          # tick direction: derivatives only
    ("option", "publicTrade.BTC", "public_trade_option", set()),
    ("linear", "orderbook.50.BTCUSDT", "orderbook_snapshot", set()),
    ("spot", "orderbook.200.BTCUSDT", "orderbook_snapshot", set()),
    ("option", f"orderbook.25.{OPTION}", "orderbook_snapshot", set()),
    ("linear", "orderbook.1.BTCUSDT", "orderbook_l1_snapshot", set()),
    ("linear", "tickers.BTCUSDT", "ticker_linear_snapshot", set()),
    ("inverse", "tickers.BTCUSD", "ticker_linear_snapshot", set()),
    ("spot", "tickers.BTCUSDT", "ticker_spot", set()),
    ("option", f"tickers.{OPTION}", "ticker_option", set()),
    ("linear", "kline.5.BTCUSDT", "kline", set()),
    ("spot", "kline.D.BTCUSDT", "kline", set()),
    ("linear", "allLiquidation.BTCUSDT", "all_liquidation", set()),
    ("inverse", "allLiquidation.BTCUSD", "all_liquidation", set()),
    ("linear", "insurance.USDT", "insurance", set()),
    ("inverse", "insurance.inverse", "insurance", set()),
    ("linear", "priceLimit.BTCUSDT", "price_limit", set()),
    ("spot", "priceLimit.ETHUSDT", "price_limit", set()),
    ("option", f"tickers.{DECIMAL_STRIKE}", "ticker_option", set()),
    ("option", f"orderbook.100.{DECIMAL_STRIKE}", "orderbook_snapshot", set()),
])
def test_first_frame_matches_the_recorded_shape(client, endpoint, topic, recorded, drop_keys):
    c = client(endpoint)
    assert c.subscribe(topic)["success"] is True
    got, want = c.data(topic), frame(recorded)
    assert set(got) == set(want)
    assert item_keys(got) == item_keys(want) - drop_keys
    assert got["topic"] == topic and isinstance(got["ts"], int)
    if ("s" in item_keys(got) or "symbol" in item_keys(got)) and topic != "publicTrade.BTC":
        data = got["data"][0] if isinstance(got["data"], list) else got["data"]
        assert topic.endswith("." + data.get("s", data.get("symbol")))
    if isinstance(got["data"], list):
        for item in got["data"]:
            for key in ("p", "v", "open", "close", "volume"):
                if key in item:
                    assert isinstance(item[key], str) and Decimal(item[key]) > 0


@pytest.mark.timeout(20)
def test_linear_ticker_deltas_carry_only_changed_fields(client):
    c = client("linear")
    c.subscribe("tickers.BTCUSDT")
    snap = c.data("tickers.BTCUSDT")
    assert snap["type"] == "snapshot"
    merged = dict(snap["data"])
    for _ in range(5):
        delta = c.data("tickers.BTCUSDT")
        assert delta["type"] == "delta" and delta["data"]["symbol"] == "BTCUSDT"
        assert set(delta["data"]) <= set(frame("ticker_linear_snapshot")["data"])
        changed = {k: v for k, v in delta["data"].items() if k != "symbol"}
        assert all(merged[k] != v for k, v in changed.items())
        merged.update(changed)
    spot = client("spot")
    spot.subscribe("tickers.BTCUSDT")
    assert all(spot.data("tickers.BTCUSDT")["type"] == "snapshot" for _ in range(3))


def apply(book: dict, levels) -> None:
    for price, size in levels:
        if size == "0":
            assert price in book, "delete of a level that is not in the book"
            del book[price]
        else:
            book[price] = size


@pytest.mark.timeout(20)
def test_book_snapshot_then_contiguous_deltas_build_a_sane_book(client):
    c = client("linear")
    c.subscribe("orderbook.50.BTCUSDT")
    snap = c.data("orderbook.50.BTCUSDT")
    assert snap["type"] == "snapshot" and len(snap["data"]["b"]) == 50 == len(snap["data"]["a"])
    bids, asks = dict(snap["data"]["b"]), dict(snap["data"]["a"])
    u, seq = snap["data"]["u"], snap["data"]["seq"]
    for _ in range(40):
        d = c.data("orderbook.50.BTCUSDT")
        assert d["type"] == "delta" and d["data"]["u"] == u + 1 and d["data"]["seq"] > seq
        u, seq = d["data"]["u"], d["data"]["seq"]
        apply(bids, d["data"]["b"])
        apply(asks, d["data"]["a"])
        assert len(bids) == 50 == len(asks)
        assert max(map(Decimal, bids)) < min(map(Decimal, asks))


@pytest.mark.timeout(20)
def test_book_gap_and_reset_hooks(client, sim):
    topic = "orderbook.50.BTCUSDT"
    c = client("linear")
    c.subscribe(topic)
    u = c.data(topic)["data"]["u"]
    u = c.data(topic)["data"]["u"]
    sim.book_gap(topic, "linear")
    gap = c.data(topic)
    assert gap["type"] == "delta" and gap["data"]["u"] == u + 2
    assert c.data(topic)["data"]["u"] == u + 3
    sim.book_reset(topic, "linear")
    reset = c.data(topic)
    assert reset["type"] == "snapshot" and reset["data"]["u"] == 1
    nxt = c.data(topic)
    assert nxt["type"] == "delta" and nxt["data"]["u"] == 2
    assert sim.state()["faults"]["book_gap"] == []


@pytest.mark.timeout(20)
def test_level_one_is_snapshot_only_and_repeats_u(client):
    c = client("linear")
    c.subscribe("orderbook.1.BTCUSDT")
    frames = [c.data("orderbook.1.BTCUSDT") for _ in range(30)]
    assert {f["type"] for f in frames} == {"snapshot"}
    us = [f["data"]["u"] for f in frames]
    assert all(b in (a, a + 1) for a, b in zip(us, us[1:]))
    assert len(set(us)) < len(us)          # some re-sends with the same u


@pytest.mark.timeout(20)
def test_rate_hook_silences_and_restores(client, sim):
    from tests.support import wait_for
    c = client("linear")
    c.subscribe("publicTrade.BTCUSDT")
    c.data("publicTrade.BTCUSDT")
    sim.rate(rate=0)
    wait_for(lambda: _quiet(c), 3, message="no frames at rate 0")
    sim.rate(rate=100)
    c.data("publicTrade.BTCUSDT")
    before = sim.state()["frames_sent"]["linear:publicTrade.BTCUSDT"]
    wait_for(lambda: sim.state()["frames_sent"]["linear:publicTrade.BTCUSDT"] >= before + 20, 3)


def _quiet(c) -> bool:
    try:
        c.recv(0.25)
    except TimeoutError:
        return True
    return False


def test_streams_are_deterministic_given_the_seed():
    def run(seed):
        m = Market(seed)
        streams = [make_stream(m, "linear", t, seed) for t in
                   ("orderbook.50.BTCUSDT", "publicTrade.BTCUSDT", "tickers.BTCUSDT", "kline.1.BTCUSDT")]
        return [s.next(1785000000000 + i * 20) for i in range(20) for s in streams]
    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize("endpoint,topic", [
    ("linear", "publicTrade.BTCUSDT"), ("inverse", "publicTrade.BTCUSD"), ("spot", "publicTrade.ETHUSDT"),
    ("option", "publicTrade.BTC"), ("linear", "orderbook.50.BTCUSDT"), ("linear", "tickers.BTCUSDT"),
    ("linear", "insurance.USDT")])
def test_what_a_stream_sends_is_its_frame_as_json(endpoint, topic):
    """The socket carries ``encoded`` (trades write their JSON from templates): the same bytes as
    serialising the frame, draw for draw."""
    import orjson

    a, b = make_stream(Market(3), endpoint, topic, 11), make_stream(Market(3), endpoint, topic, 11)
    ts = 1785000000000
    for i in range(3000):
        ts += i % 3           # several frames in one ms, as in a publisher pass
        assert b.encoded(ts) == orjson.dumps(a.next(ts))


def test_kline_confirms_a_closed_candle():
    s = make_stream(Market(1), "linear", "kline.1.BTCUSDT", 1)
    first = s.next(1785000059000)["data"][0]
    closed = s.next(1785000061000)["data"][0]
    assert first["confirm"] is False and closed["confirm"] is True and closed["start"] == first["start"]
    new = s.next(1785000062000)["data"][0]
    assert new["start"] == first["end"] + 1 and new["confirm"] is False
    assert Decimal(new["low"]) <= Decimal(new["close"]) <= Decimal(new["high"])


@pytest.mark.timeout(20)
def test_rpi_book_levels_carry_the_rpi_size(client):
    c = client("linear")
    assert c.subscribe("orderbook.rpi.BTCUSDT")["success"] is True
    snap = c.data("orderbook.rpi.BTCUSDT")
    assert snap["type"] == "snapshot" and len(snap["data"]["b"]) == len(snap["data"]["a"]) == 50
    assert set(snap) == set(frame("orderbook_snapshot"))
    books = {side: {p: (n, r) for p, n, r in snap["data"][side]} for side in ("b", "a")}
    u = snap["data"]["u"]
    for _ in range(5):
        delta = c.data("orderbook.rpi.BTCUSDT")
        assert delta["type"] == "delta" and delta["data"]["u"] == u + 1
        u = delta["data"]["u"]
        for side, book in books.items():
            for price, non_rpi, rpi in delta["data"][side]:
                assert Decimal(non_rpi) >= 0 and Decimal(rpi) >= 0
                if non_rpi == "0":
                    assert price in book and rpi == "0"
                    del book[price]
                else:
                    book[price] = (non_rpi, rpi)
    assert len(books["b"]) == len(books["a"]) == 50


@pytest.mark.timeout(20)
def test_adl_alert_is_per_pool(client):
    c = client("inverse")
    assert c.subscribe("adlAlert.inverse")["success"] is True
    got = c.data("adlAlert.inverse")
    assert got["type"] == "snapshot" and isinstance(got["ts"], int)
    assert set(got["data"][0]) == {"c", "s", "b", "mb", "i_pr", "pr", "adl_tt", "adl_sr"}


def test_insurance_sends_a_snapshot_then_deltas():
    s = make_stream(Market(1), "linear", "insurance.USDC", 1)
    frames = [s.next(1_785_000_000_000 + i * 1000) for i in range(4)]
    assert [f["type"] for f in frames] == ["snapshot", "delta", "delta", "delta"]
    balances = [f["data"][0]["balance"] for f in frames]
    assert len(set(balances)) == 4 and all(f["data"][0]["coin"] == "USDC" for f in frames)
    with pytest.raises(ValueError):
        make_stream(Market(1), "spot", "insurance.USDT", 1)


def test_a_simulator_behind_its_rate_sends_its_topics_interleaved():
    """Short of CPU the simulator falls behind and catches up with a burst: one frame per topic in
    turn, so no class of stream always comes after another in a write (a reader serving the
    oldest first would then always serve that class last)."""
    import asyncio
    import time

    import orjson

    from bybitsim.options import SimOptions
    from bybitsim.server import MAX_BURST, SimServer
    from bybitsim.session import Conn

    server = SimServer(SimOptions(rate=1000))
    conn = Conn("c1", "linear", None, 0, 0)
    topics = ["publicTrade.BTCUSDT", "orderbook.50.BTCUSDT", "tickers.BTCUSDT"]
    now = time.monotonic()
    for topic in topics:
        conn.topics[topic] = make_stream(server.sim.market, "linear", topic, 0)
        conn.due[topic] = now - 0.9            # most of a second behind
    written: list[bytes] = []

    async def capture(_conn, payloads):
        written.extend(payloads)

    server._write = capture
    asyncio.run(server._public_pass(conn, 1 / 1000))
    sent = [orjson.loads(p)["topic"] for p in written]
    per_topic = {t: sent.count(t) for t in topics}
    assert per_topic == {t: MAX_BURST for t in topics}
    assert {t: server.sim.frames_sent[f"linear:{t}"] for t in topics} == per_topic
    assert all(sorted(sent[i:i + 3]) == sorted(topics) for i in range(0, len(sent), 3)), sent[:12]
