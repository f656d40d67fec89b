"""Whole-category subscriptions (symbol "*"): the topic rules, the expansion and diff logic, the row
status, and the instrument list fetched from the simulator's realistic listing over HTTP."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

import bybitsim
from bybitsim.market import LISTING_SIZES, Listing
from common.topics import TopicError, build_topic, topic_from_name
from ingest import universe as u
from ingest.rest import RestClient


# -- topics -------------------------------------------------------------------------------------
@pytest.mark.parametrize("req, name", [
    (("tickers", "linear", "*"), "tickers.*"),
    (("trades", "spot", "*"), "publicTrade.*"),
    (("orderbook", "linear", "*", 50), "orderbook.50.*"),
    (("kline", "inverse", "*", None, "5"), "kline.5.*"),
    (("liquidation", "linear", "*"), "allLiquidation.*"),
    (("orderbook_rpi", "spot", "*"), "orderbook.rpi.*"),
    (("price_limit", "linear", "*"), "priceLimit.*"),
])
def test_every_symbol_channel_takes_a_wildcard(req, name):
    topic = build_topic(*req)
    assert topic.name == name and topic.whole_category
    assert topic_from_name(topic.endpoint, name) == topic          # read back from the table as it was stored
    assert topic.for_symbol("BTCUSDT").name == name.replace("*", "BTCUSDT")


@pytest.mark.parametrize("req, field", [
    (("insurance", "linear", "*"), "symbol"),        # per pool, not per symbol
    (("tickers", "option", "*"), "symbol"),          # options: per base coin, thousands of strikes
    (("orderbook", "linear", "*"), "depth"),         # the level is still required
    (("order", "linear", "*"), "symbol"),            # private channels take no symbol
])
def test_wildcard_refusals_name_the_field(req, field):
    with pytest.raises(TopicError) as exc:
        build_topic(*req)
    assert exc.value.field == field


def test_a_wildcard_is_not_a_symbol_elsewhere():
    assert not build_topic("tickers", "linear", "BTCUSDT").whole_category
    with pytest.raises(TopicError):
        build_topic("tickers", "linear", "BTC*")


# -- expansion, diff, status ------------------------------------------------------------------------
def test_listed_symbols_keeps_trading_plain_symbols_only():
    records = [{"symbol": "ETHUSDT", "status": "Trading"}, {"symbol": "BTCUSDT", "status": "Trading"},
               {"symbol": "OLDUSDT", "status": "Closed"}, {"symbol": "PREUSDT", "status": "PreLaunch"},
               {"symbol": "bad symbol", "status": "Trading"}, {"status": "Trading"}, "junk",
               {"symbol": "BTCUSDT", "status": "Trading"}]
    assert u.listed_symbols(records) == ["BTCUSDT", "ETHUSDT"]


def test_expand_builds_one_topic_per_symbol_and_names_the_bad():
    topics, bad = u.expand(build_topic("orderbook", "linear", "*", 50), ["BTCUSDT", "ETHUSDT", "X" * 45])
    assert sorted(topics) == ["linear:orderbook.50.BTCUSDT", "linear:orderbook.50.ETHUSDT"]
    assert topics["linear:orderbook.50.BTCUSDT"].depth == 50 and bad == ["X" * 45]


def test_diff_lists_new_and_gone_symbols():
    assert u.diff(["A", "B", "C"], ["B", "C", "D", "E"]) == (["D", "E"], ["A"])
    assert u.diff([], ["A"]) == (["A"], [])


def test_row_state():
    keys = ["linear:tickers.A", "linear:tickers.B", "linear:tickers.C"]
    active = {k: ("active", None) for k in keys}
    assert u.row_state(keys, active, True, None) == ("active", [])
    assert u.row_state(keys, {**active, keys[1]: ("pending", None)}, True, None) == ("pending", [])
    assert u.row_state(keys[:2], {keys[0]: ("active", None)}, True, None) == ("pending", [])   # not placed yet
    # a refused topic is counted and named, the rest stays active
    assert u.row_state(keys, {**active, keys[2]: ("failed", "handler not found")}, True, None) == \
        ("active", ["tickers.C"])
    # topics of another instance's shards are not judged here
    assert u.row_state(keys, {keys[0]: ("active", None)}, True, None, owned=lambda k: k == keys[0]) == ("active", [])
    assert u.row_state([], {}, True, None) == ("active", [])                 # an empty listing is no failure
    assert u.row_state([], {}, False, None) == ("pending", [])               # not fetched yet
    assert u.row_state([], {}, False, "HTTP 502") == ("failed", [])          # cannot be fetched


def test_retry_backs_off_up_to_the_refresh():
    assert [u.next_retry_s(n, 30.0) for n in (1, 2, 3, 4, 5, 9)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def _universe(mgr_topics: dict) -> u.Universe:
    settings = SimpleNamespace(category_refresh_s=120.0, rest_url="http://127.0.0.1:1", database_url="")
    mgr = SimpleNamespace(topics=mgr_topics)
    return u.Universe(settings, mgr, lambda trace="": None)


def _row(sid, channel, category, *, depth=None, status="pending"):
    topic = build_topic(channel, category, "*", depth)
    return (sid, channel, category, category, "*", depth, None, topic.name, status, "t-1", None, None, None)


def test_desired_adds_expansions_under_explicit_rows():
    uni = _universe({"linear:tickers.ETHUSDT": SimpleNamespace(status="active")})
    assert uni.set_rows([_row("r1", "tickers", "linear"), ("r2", "kline", "linear", "linear", "*", None, None,
                                                          "kline.1.*", "pending", "", None, None, None)]) == \
        [("r2", "interval is required for kline; allowed: 1, 3, 5, 15, 30, 60, 120, 240, 360, 720, D, W, M")]
    assert set(uni.lists) == {"linear"}
    explicit = build_topic("tickers", "linear", "BTCUSDT")
    base = {explicit.key: (explicit, "t-explicit", "active")}
    assert uni.desired(base) == base                      # no list yet: nothing expanded
    uni.lists["linear"].symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    uni._rebuild()
    out = uni.desired(base)
    assert sorted(out) == ["linear:tickers.BTCUSDT", "linear:tickers.ETHUSDT", "linear:tickers.SOLUSDT"]
    assert out[explicit.key] == base[explicit.key]        # the explicit row's entry wins
    assert out["linear:tickers.ETHUSDT"][1:] == ("t-1", "active")     # held already: no status re-report
    assert out["linear:tickers.SOLUSDT"][1:] == ("t-1", "pending")
    assert uni.holds("linear:tickers.SOLUSDT") and not uni.holds("linear:tickers.XRPUSDT")
    uni.set_rows([])                                      # DELETE: the row is gone, so is every expansion
    assert uni.desired(base) == base and not uni.holds("linear:tickers.SOLUSDT") and not uni.lists


def test_control_cannot_remove_a_topic_an_expansion_holds():
    removed, synced = [], []
    uni = _universe({})
    uni.set_rows([_row("r1", "tickers", "linear")])
    uni.lists["linear"].symbols = ("BTCUSDT",)
    uni._rebuild()
    mgr = SimpleNamespace(topics={}, remove=lambda key, trace="": removed.append(key) or True,
                          add=lambda topic, trace="": None)
    view = u.HeldByUniverse(mgr, uni, lambda trace="": synced.append(trace))
    assert view.remove("linear:tickers.BTCUSDT", "t") is False and removed == []
    assert view.remove("linear:tickers.ETHUSDT", "t") is True and removed == ["linear:tickers.ETHUSDT"]
    # a whole-category row's own add/remove is a cue to converge, never a topic sent to Bybit
    assert view.add(build_topic("tickers", "spot", "*"), "t2") is None and synced == ["t2"]
    assert view.remove("spot:tickers.*", "t3") is True and synced == ["t2", "t3"]
    assert view.topics is mgr.topics


# -- the simulator's realistic listing, fetched over HTTP ---------------------------------------------
def test_listing_is_deterministic_and_realistic():
    a, b = Listing(7), Listing(7)
    assert a.symbols("linear") == b.symbols("linear") and a.symbols("linear") != Listing(8).symbols("linear")
    assert {c: len(a.symbols(c)) for c in LISTING_SIZES} == LISTING_SIZES
    weights = sorted(a.listed["linear"].values(), reverse=True)
    assert weights[0] == 1.0 and sum(weights) < 10 and weights[-1] < 0.01     # a few busy, most quiet


@pytest.fixture(scope="module")
def realistic_sim():
    with bybitsim.run_in_thread(rate=1.0, listing="realistic") as sim:
        yield sim


def _fetch(sim, category, limit=u.PAGE_LIMIT):
    async def go():
        client = RestClient(sim.rest_url, "", "")
        try:
            return await u.fetch_symbols(client, category, limit)
        finally:
            await client.close()
    return asyncio.run(go())


def test_fetch_pages_linear_and_reads_spot_whole(realistic_sim):
    linear, spot = _fetch(realistic_sim, "linear", limit=300), _fetch(realistic_sim, "spot", limit=300)
    assert len(linear) == 800 and len(spot) == 700 and "BTCUSDT" in linear and "BTCUSDT" in spot
    assert _fetch(realistic_sim, "linear") == linear                          # one page of 1000
    calls = [c["query"] for c in realistic_sim.rest_log() if c["path"] == "/v5/market/instruments-info"]
    # linear: three pages of 300, each after the previous one's cursor; spot: one answer, no paging
    assert [q.count("cursor=") for q in calls[-5:]] == [0, 1, 1, 0, 0]
    assert "limit" not in calls[-2]


def test_fetch_follows_listings_and_delistings(realistic_sim):
    before = _fetch(realistic_sim, "linear")
    new = realistic_sim.listing("linear", "list")["symbol"]
    gone = realistic_sim.listing("linear", "delist", "SOLUSDT")["symbol"]
    after = _fetch(realistic_sim, "linear")
    assert u.diff(before, after) == ([new], [gone]) == ([new], ["SOLUSDT"])
