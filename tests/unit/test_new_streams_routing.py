"""Pure classification and routing of the streams added to the contract, over recorded frames,
and topic parsing by known prefix (option strikes with decimals)."""
from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from common import classify
from common.classify import event_class, public_route, routing_key, routing_word, topic_symbol, word_text
from common.envelope import Envelope
from common.identity import account_event_id
from common.topics import (DEPTHS, STATUS_ENDPOINT, TopicError, build_topic, split_private, symbol_ok,
                           topic_from_name)
from ingest import plan
from ingest.exchange_status import NoticeError, fold, in_force
from publisher.events import StreamNumbers
from publisher.pipeline import Pipeline

FRAMES = Path(__file__).resolve().parent.parent / "frames"
DEC = "XRP-30OCT26-0.4-P-USDT"


def frame(name: str) -> dict:
    return json.loads((FRAMES / f"{name}.json").read_text())


def events_of(name: str, endpoint: str, payload: dict | None = None):
    raw = orjson.dumps(payload) if payload is not None else (FRAMES / f"{name}.json").read_bytes()
    topic = orjson.loads(raw)["topic"]
    env = Envelope("frame", raw, endpoint=endpoint, topic=topic, recv_ns=1_785_000_010_000_000_000, stream_seq=1,
                   epoch="e", conn_id="c", trace_id="t")
    return Pipeline(StreamNumbers("ep")).process(env)


# recorded frame -> (endpoint, class, routing key)
RECORDED = {
    "insurance": ("linear", "insurance", "insurance.linear.USDT"),
    "price_limit": ("linear", "price_limits", "price_limits.linear.BTCUSDT"),
    "execution_fast": ("private", "executions_fast", "executions_fast.linear"),
    "greeks": ("private", "greeks", "greeks.option"),
    "system_status": (STATUS_ENDPOINT, "exchange_status", "exchange_status.bybit"),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_frames_of_new_streams_route(name):
    endpoint, cls, key = RECORDED[name]
    [ev] = events_of(name, endpoint)
    body = orjson.loads(ev.body)
    assert (ev.event_class, ev.routing_key, body["event_class"]) == (cls, key, cls)
    assert body["data"] == (frame(name)["data"] if endpoint != "private" else frame(name)["data"][:1])
    assert ev.persistent is (cls in classify.DURABLE_CLASSES)


def test_system_status_event_has_no_category_and_is_durable():
    [ev] = events_of("system_status", STATUS_ENDPOINT)
    body = orjson.loads(ev.body)
    assert body["category"] is None and body["symbol"] is None and body["topic"] == "system.status"
    assert ev.persistent is True


def test_orderbook_rpi_and_adl_alert_have_their_own_classes():
    rpi = {"topic": "orderbook.rpi.BTCUSDT", "type": "snapshot", "ts": 1785000000000,
           "data": {"s": "BTCUSDT", "b": [["1", "2", "0"]], "a": [], "u": 1, "seq": 5}}
    [ev] = events_of("", "spot", rpi)
    assert (ev.event_class, ev.routing_key) == ("orderbook_rpi", "orderbook_rpi.spot.BTCUSDT")
    adl = {"topic": "adlAlert.USDC", "type": "snapshot", "ts": 1785000000000,
           "data": [{"c": "USDC", "s": "FOOPERP", "b": 1.5, "mb": 1.5, "i_pr": -0.1, "pr": -0.1,
                     "adl_tt": -0.3, "adl_sr": -0.25}]}
    [ev] = events_of("", "linear", adl)
    assert (ev.event_class, ev.routing_key) == ("adl_alerts", "adl_alerts.linear.USDC")


def test_fast_and_full_execution_of_one_fill_have_different_ids():
    full, fast = frame("execution")["data"][0], frame("execution_fast")["data"][0]
    assert full["execId"] == fast["execId"]
    assert account_event_id("executions", full) != account_event_id("executions_fast", fast)
    assert account_event_id("executions", full) == account_event_id("executions", dict(full, execFee="0.4248"))
    [ev_full] = events_of("execution", "private")
    [ev_fast] = events_of("execution_fast", "private")
    assert ev_full.event_id != ev_fast.event_id and ev_full.routing_key == "executions.linear"


def test_greeks_ids_follow_content_and_push_time():
    g = frame("greeks")["data"][0]
    a = account_event_id("greeks", g, 1)
    assert a == account_event_id("greeks", dict(g), 1) != account_event_id("greeks", g, 2)
    assert a != account_event_id("greeks", dict(g, totalDelta="0.5"), 1)


# ---- decimal strikes: API validation, topic, class, symbol, routing key ------------------

@pytest.mark.parametrize("channel, extra, topic", [
    ("tickers", {}, f"tickers.{DEC}"),
    ("orderbook", {"depth": 25}, f"orderbook.25.{DEC}"),
    ("orderbook", {"depth": 100}, f"orderbook.100.{DEC}"),
    ("trades", {}, "publicTrade.XRP"),
])
def test_decimal_strike_option_topics(channel, extra, topic):
    t = build_topic(channel, "option", DEC, **extra)
    assert t.name == topic
    if channel != "trades":
        assert topic_from_name("option", topic) == t
        assert topic_symbol(topic) == DEC
    cls, category, symbol, key = public_route("option", topic)
    expected_symbol = "XRP" if channel == "trades" else DEC
    assert (category, symbol) == ("option", expected_symbol)
    assert key == f"{cls}.option.{routing_word(expected_symbol)}"
    assert key.count(".") == 2 and word_text(key.split(".")[2]) == expected_symbol


def test_routing_word_rule_is_reversible_for_every_symbol_shape():
    for sym in (DEC, "BTCUSDT", "BTC-31JUL26-120000-C", "BTCUSDH23", "ETH-28FEB25-2800-C", "SOL-1JAN27-12.25-C-USDC"):
        assert symbol_ok(sym), sym
        assert "_" not in sym and word_text(routing_word(sym)) == sym
        assert "." not in routing_key("tickers", "option", sym).split(".", 2)[2]


def test_every_public_topic_round_trips_by_prefix():
    cases = [("orderbook_rpi", "linear", "BTCUSDT"), ("price_limit", "spot", "BTCUSDT"),
             ("insurance", "linear", "USDC"), ("insurance", "inverse", "inverse"), ("adl_alert", "linear", "USDT"),
             ("liquidation", "inverse", "BTCUSD"), ("tickers", "option", DEC)]
    for channel, category, symbol in cases:
        t = build_topic(channel, category, symbol)
        assert topic_from_name(category, t.name) == t
        assert event_class(t.name) != "orderbook" or channel == "orderbook"
    for channel, category in (("execution_fast", None), ("execution_fast", "option"), ("greeks", None),
                              ("execution", "linear")):
        t = build_topic(channel, category)
        assert topic_from_name("private", t.name) == t


@pytest.mark.parametrize("args, field", [
    (("insurance", "linear", "inverse"), "symbol"),
    (("insurance", "spot", "USDT"), "category"),
    (("adl_alert", "inverse", "USDT"), "symbol"),
    (("orderbook_rpi", "option", "BTC-31JUL26-120000-C"), "category"),
    (("orderbook_rpi", "linear", "BTCUSDT", 50), "depth"),
    (("price_limit", "linear", "BTC_USDT"), "symbol"),
    (("tickers", "option", "XRP-30OCT26-0.4.1-P"), "symbol"),
    (("tickers", "linear", "BTC.USDT"), "symbol"),
    (("greeks", "option"), "category"),
    (("execution_fast", None, "BTCUSDT"), "symbol"),
    (("orderbook", "linear", "BTCUSDT", 500), "depth"),
    (("orderbook", "option", DEC, 50), "depth"),
])
def test_bad_requests_for_new_channels_name_the_field(args, field):
    with pytest.raises(TopicError) as err:
        build_topic(*args)
    assert err.value.field == field


def test_depths_are_exactly_bybits():
    assert DEPTHS == {"spot": (1, 50, 200, 1000), "linear": (1, 50, 200, 1000), "inverse": (1, 50, 200, 1000),
                      "option": (25, 100)}


def test_execution_fast_has_its_own_two_forms():
    assert split_private("execution.fast.linear") == ("execution_fast", "linear")
    assert split_private("execution.fast") == ("execution_fast", None)
    assert split_private("execution.linear") == ("execution", "linear")
    assert plan.other_private_forms("execution.fast.linear") == ["execution.fast"]
    assert "execution" not in plan.other_private_forms("execution.fast.linear")
    batches = plan.batches("private", ["execution.fast", "execution.fast.linear", "greeks"])
    assert all(not ({"execution.fast", "execution.fast.linear"} <= set(b)) for b in batches)


# ---- system.status notices ---------------------------------------------------------------

def test_notices_fold_by_id_and_ended_ones_leave():
    n = fold({}, frame("system_status"))
    [(nid, notice)] = n.items()
    assert notice["begin"] == 1785200000000 and notice["state"] == "scheduled"
    assert in_force(n, 1785000000000)[0]["active"] is False       # scheduled, not begun
    ongoing = dict(frame("system_status")["data"][0], state="ongoing", begin="1785000000000")
    n = fold(n, {"data": [ongoing]})
    assert in_force(n, 1785100000000)[0]["active"] is True
    assert in_force(n, 1785201800000) == []                        # past its end
    assert fold(n, {"data": [dict(ongoing, state="completed")]}) == {}
    with pytest.raises(NoticeError):
        fold(n, {"data": "x"})
    with pytest.raises(NoticeError):
        fold(n, {"data": [{"title": "no id"}]})
