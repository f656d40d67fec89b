import json
from pathlib import Path

import pytest

from common.classify import UnknownTopic, event_class, routing_key, topic_symbol
from common.topics import TopicError, build_topic, topic_from_name

FRAMES = Path(__file__).resolve().parent.parent / "frames"

EXPECTED = {
    "public_trade.json": "trades", "public_trade_option.json": "trades", "orderbook_snapshot.json": "orderbook",
    "orderbook_delta.json": "orderbook", "orderbook_l1_snapshot.json": "orderbook",
    "ticker_linear_snapshot.json": "tickers", "ticker_linear_delta.json": "tickers", "ticker_spot.json": "tickers",
    "ticker_option.json": "tickers", "kline.json": "klines", "all_liquidation.json": "liquidations",
    "order.json": "order_status", "execution.json": "executions", "execution_fast.json": "executions_fast",
    "position.json": "positions", "wallet.json": "balances",
}


@pytest.mark.parametrize("name, cls", sorted(EXPECTED.items()))
def test_recorded_frames_classify(name, cls):
    frame = json.loads((FRAMES / name).read_text())
    assert event_class(frame["topic"]) == cls


def test_unknown_topics_raise():
    with pytest.raises(UnknownTopic):
        event_class("dcp.future")
    with pytest.raises(UnknownTopic):
        event_class("tickers_lt.BTC3LUSDT")


def test_routing_keys():
    assert routing_key("trades", "linear", topic_symbol("publicTrade.BTCUSDT")) == "trades.linear.BTCUSDT"
    assert routing_key("orderbook", "linear", topic_symbol("orderbook.50.BTCUSDT")) == "orderbook.linear.BTCUSDT"
    assert routing_key("order_status", "linear", topic_symbol("order")) == "order_status.linear"
    assert routing_key("balances", "UNIFIED") == "balances.UNIFIED"


@pytest.mark.parametrize("args, topic, endpoint", [
    (("trades", "linear", "BTCUSDT"), "publicTrade.BTCUSDT", "linear"),
    (("trades", "option", "BTC-31JUL26-120000-C"), "publicTrade.BTC", "option"),
    (("tickers", "spot", "BTCUSDT"), "tickers.BTCUSDT", "spot"),
    (("orderbook", "spot", "BTCUSDT", 200), "orderbook.200.BTCUSDT", "spot"),
    (("orderbook", "option", "BTC-31JUL26-120000-C", 25), "orderbook.25.BTC-31JUL26-120000-C", "option"),
    (("kline", "inverse", "BTCUSD", None, "D"), "kline.D.BTCUSD", "inverse"),
    (("liquidation", "linear", "BTCUSDT"), "allLiquidation.BTCUSDT", "linear"),
    (("order",), "order", "private"),
    (("position", "linear"), "position.linear", "private"),
    (("wallet",), "wallet", "private"),
])
def test_build_topic(args, topic, endpoint):
    t = build_topic(*args)
    assert (t.name, t.endpoint) == (topic, endpoint)
    if endpoint != "private" and args[0] != "trades":
        assert topic_from_name(endpoint, topic) == t


@pytest.mark.parametrize("args, field", [
    (("candles", "linear", "BTCUSDT"), "channel"),
    (("trades", None, "BTCUSDT"), "category"),
    (("trades", "futures", "BTCUSDT"), "category"),
    (("trades", "linear", None), "symbol"),
    (("trades", "linear", "btcusdt"), "symbol"),
    (("trades", "linear", "BTC'; DROP TABLE x;--"), "symbol"),
    (("orderbook", "linear", "BTCUSDT", 500), "depth"),
    (("orderbook", "linear", "BTCUSDT", 0), "depth"),
    (("orderbook", "linear", "BTCUSDT", -50), "depth"),
    (("orderbook", "option", "BTC-31JUL26-120000-C", 50), "depth"),
    (("orderbook", "linear", "BTCUSDT"), "depth"),
    (("kline", "linear", "BTCUSDT", None, "2"), "interval"),
    (("kline", "option", "BTCUSDT", None, "1"), "category"),
    (("liquidation", "spot", "BTCUSDT"), "category"),
    (("trades", "linear", "BTCUSDT", 50), "depth"),
    (("position", "spot"), "category"),
    (("wallet", "linear"), "category"),
    (("order", None, "BTCUSDT"), "symbol"),
])
def test_invalid_topics_name_the_field(args, field):
    with pytest.raises(TopicError) as err:
        build_topic(*args)
    assert err.value.field == field
