"""Pure event building, over every recorded frame in tests/frames/."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import orjson
import pytest

from common import classify
from common.classify import UnknownTopic
from common.envelope import Envelope, json_envelope
from publisher import events
from publisher.events import FrameError, StreamNumbers
from publisher.pipeline import Pipeline as _Pipeline

FRAMES = Path(__file__).resolve().parent.parent / "frames"
RECV_NS = 1_785_000_010_123_456_789
ISO = "2026-07-25T17:20:10.123456Z"

# frame file -> (endpoint it arrives on, expected event class)
MARKET = {
    "public_trade": ("linear", "trades"), "public_trade_option": ("option", "trades"),
    "orderbook_snapshot": ("linear", "orderbook"), "orderbook_delta": ("linear", "orderbook"),
    "orderbook_l1_snapshot": ("linear", "orderbook"), "ticker_linear_snapshot": ("linear", "tickers"),
    "ticker_spot": ("spot", "tickers"), "ticker_option": ("option", "tickers"),
    "kline": ("linear", "klines"), "all_liquidation": ("linear", "liquidations"),
    "insurance": ("linear", "insurance"), "price_limit": ("linear", "price_limits"),
}
ACCOUNT = {"order": "order_status", "execution": "executions", "execution_fast": "executions_fast",
           "position": "positions", "wallet": "balances", "greeks": "greeks"}
# Bybit's system-status socket (tests/publisher/test_new_streams.py covers its event).
STATUS = {"system_status"}
# Data pushes with no gateway event class: counted and skipped.
UNCLASSIFIED = {"dcp.future": "private", "tickers_lt.BTC3LUSDT": "spot"}
# Control replies, requests and REST bodies: never data pushes.
NOT_PUSHES = {"auth_fail", "auth_ok", "pong_private", "pong_public", "pong_public_option", "pong_public_spot",
              "req_auth", "req_ping", "req_subscribe", "req_subscribe_private", "req_unsubscribe",
              "rest_error_sign", "rest_error_timestamp", "rest_execution_list", "rest_instruments_info",
              "rest_instruments_info_spot", "rest_order_realtime", "rest_orderbook", "rest_position_list",
              "rest_server_time", "rest_wallet_balance", "subscribe_fail", "subscribe_fail_duplicate",
              "subscribe_fail_spot_args", "subscribe_ok", "subscribe_ok_option", "subscribe_ok_private",
              "subscribe_ok_spot", "trade_auth_ok"}
BODY_KEYS = ["event_id", "event_class", "source", "category", "topic", "symbol", "type", "exchange_ts",
             "received_at", "stream_seq", "stream_epoch", "trace_id", "data"]
ACCOUNT_BODY_KEYS = BODY_KEYS[:11] + ["version"] + BODY_KEYS[11:]


def Pipeline() -> _Pipeline:
    """A pipeline with its own numbering, so each test's stream_seq starts at 1."""
    return _Pipeline(StreamNumbers("ep-test"))


def raw(name: str) -> bytes:
    return (FRAMES / f"{name}.json").read_bytes()


def env_for(name: str, endpoint: str, seq: int = 7) -> Envelope:
    payload = raw(name)
    return Envelope("frame", payload, endpoint=endpoint, topic=orjson.loads(payload).get("topic", ""),
                    recv_ns=RECV_NS, stream_seq=seq, epoch="ep1", conn_id="c1", trace_id="tr-1")


def test_every_frame_file_is_covered():
    names = {p.stem for p in FRAMES.glob("*.json")}
    covered = set(MARKET) | set(ACCOUNT) | STATUS | NOT_PUSHES | {"ticker_linear_delta"}
    assert names == covered, names ^ covered


@pytest.mark.parametrize("name", sorted(MARKET))
def test_market_event_body_and_properties(name):
    endpoint, cls = MARKET[name]
    frame = orjson.loads(raw(name))
    [ev] = Pipeline().process(env_for(name, endpoint))
    body = orjson.loads(ev.body)
    assert list(body) == BODY_KEYS
    symbol = frame["topic"].rsplit(".", 1)[-1]
    assert body["event_class"] == ev.event_class == cls
    assert body["source"] == "bybit" and body["category"] == endpoint and body["symbol"] == symbol
    assert body["topic"] == frame["topic"] and body["type"] == frame.get("type", "snapshot")
    assert body["exchange_ts"] == frame["ts"]
    assert body["received_at"] == ISO and body["stream_seq"] == 1 and body["trace_id"] == "tr-1"
    assert body["stream_epoch"] == "ep-test"
    assert body["data"] == frame["data"]
    assert ev.routing_key == f"{cls}.{endpoint}.{symbol}"
    assert ev.headers == {"event_class": cls, "category": endpoint, "symbol": symbol, "trace_id": "tr-1",
                          "stream_seq": 1, "stream_epoch": "ep-test"}
    assert ev.persistent is False and ev.timestamp == RECV_NS // 10**9
    assert str(uuid.UUID(body["event_id"])) == ev.event_id and uuid.UUID(ev.event_id).version == 8


@pytest.mark.parametrize("name", sorted(ACCOUNT))
def test_account_event_body_and_properties(name):
    frame = orjson.loads(raw(name))
    [ev] = Pipeline().process(env_for(name, "private"))
    body = orjson.loads(ev.body)
    cls = ACCOUNT[name]
    group = {"balances": "UNIFIED", "greeks": "option"}.get(cls, "linear")
    assert list(body) == ACCOUNT_BODY_KEYS
    assert body["event_class"] == cls and body["source"] == "bybit" and body["type"] == "snapshot"
    assert body["category"] == group and body["symbol"] == frame["data"][0].get("symbol")
    assert body["exchange_ts"] == frame["creationTime"] and body["data"] == frame["data"]
    assert ev.routing_key == f"{cls}.{group}" and ev.persistent is True
    assert ev.headers["event_class"] == cls and ev.headers["stream_seq"] == 1


def test_private_push_with_several_records_makes_one_event_per_record_numbered_per_routing_key():
    frame = orjson.loads(raw("order"))
    linear = frame["data"][0]
    spot = dict(linear, category="spot", orderId="s-1")
    frame["data"] = [linear, spot, dict(linear, orderId="l-2")]
    env = Envelope("frame", orjson.dumps(frame), endpoint="private", topic="order", recv_ns=RECV_NS, stream_seq=3)
    evs = events.account_events(env, frame, StreamNumbers("e"))
    assert [e.routing_key for e in evs] == ["order_status.linear", "order_status.spot", "order_status.linear"]
    assert [orjson.loads(e.body)["data"] for e in evs] == [[r] for r in frame["data"]]
    # A consumer bound to order_status.linear sees 1, 2; one bound to order_status.spot sees 1.
    assert [orjson.loads(e.body)["stream_seq"] for e in evs] == [1, 1, 2]
    assert len({e.event_id for e in evs}) == 3


@pytest.mark.parametrize("topic", sorted(UNCLASSIFIED))
def test_unclassified_pushes_raise(topic):
    frame = {"topic": topic, "ts": 1785000000000, "creationTime": 1785000000000, "data": [{"x": 1}]}
    env = Envelope("frame", orjson.dumps(frame), endpoint=UNCLASSIFIED[topic], topic=topic, recv_ns=RECV_NS,
                   stream_seq=1)
    with pytest.raises(UnknownTopic):
        Pipeline().process(env)


@pytest.mark.parametrize("name", sorted(NOT_PUSHES))
def test_control_frames_are_not_events(name):
    with pytest.raises(FrameError):
        Pipeline().process(env_for(name, "linear"))


def test_event_id_is_stable_for_a_replayed_frame():
    a = Pipeline().process(env_for("public_trade", "linear", seq=1))[0]
    b = Pipeline().process(env_for("public_trade", "linear", seq=99))[0]
    assert a.event_id == b.event_id
    c = Pipeline().process(env_for("orderbook_delta", "linear"))[0]
    assert c.event_id != a.event_id
    p1 = Pipeline().process(env_for("order", "private"))[0]
    p2 = Pipeline().process(env_for("order", "private", seq=5))[0]
    assert p1.event_id == p2.event_id


def test_system_envelope_published_as_is():
    env = json_envelope("system", {"endpoint": "linear", "conn": "c1", "reason": "ping timeout"},
                        endpoint="linear", topic="connection_lost", recv_ns=RECV_NS, epoch="ep1", trace_id="t")
    [ev] = Pipeline().process(env)
    body = orjson.loads(ev.body)
    assert ev.routing_key == "system.connection_lost" and ev.event_class == "system" and ev.persistent
    assert body["source"] == "gateway" and body["topic"] == "connection_lost"
    assert body["data"] == {"endpoint": "linear", "conn": "c1", "reason": "ping timeout"}


def test_rest_payload_source_and_routing():
    listing = orjson.loads(raw("rest_order_realtime"))["result"]["list"]
    env = json_envelope("rest", {"topic": "order", "category": "linear", "list": listing,
                                 "fetched_at_ms": 1785000009000}, topic="order", recv_ns=RECV_NS)
    [ev] = Pipeline().process(env)
    body = orjson.loads(ev.body)
    assert body["source"] == "bybit-rest" and ev.routing_key == "order_status.linear"
    assert body["data"][0]["orderId"] == listing[0]["orderId"] and body["exchange_ts"] == 1785000009000


def test_bad_frames_raise_frame_error():
    p = Pipeline()
    bad = [b"not json", b"[]", orjson.dumps({"topic": "publicTrade.BTCUSDT", "data": []}),   # no ts
           orjson.dumps({"topic": "order", "creationTime": 1, "data": [{"symbol": "X"}]})]    # no category
    for i, payload in enumerate(bad):
        endpoint = "private" if b"order" in payload else "linear"
        with pytest.raises(FrameError):
            p.process(Envelope("frame", payload, endpoint=endpoint, topic="x", recv_ns=RECV_NS, stream_seq=i + 1))


def test_received_at_format():
    assert events.iso_utc(0) == "1970-01-01T00:00:00.000000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", events.iso_utc(RECV_NS))


def test_routing_keys_match_queue_bindings():
    for cls in classify.EVENT_CLASSES:
        assert classify.queue_name(cls) == f"ws-gateway.{cls}"


def test_rest_wallet_without_category_routes_by_account_type():
    coins = orjson.loads(raw("rest_wallet_balance"))["result"]["list"]
    env = json_envelope("rest", {"topic": "wallet", "category": None, "list": coins, "fetched_at_ms": 1785000009000},
                        endpoint="private", topic="wallet", recv_ns=RECV_NS)
    [ev] = Pipeline().process(env)
    assert ev.routing_key == f"balances.{coins[0]['accountType']}" and ev.persistent
    assert orjson.loads(ev.body)["data"] == coins and orjson.loads(ev.body)["version"] == 1785000009000
