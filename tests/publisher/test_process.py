"""The publisher process against the real broker: topology, message contract,
fan-out, unroutable returns, clean SIGTERM."""
from __future__ import annotations

import signal
import time
import uuid

import orjson
import pytest

from common import classify
from common.envelope import json_envelope
from publisher.metrics import percentile_ms
from tests.publisher.conftest import account_env, market_env
from tests.support import wait_for
from tests.support.stores import rabbitmqctl

BODY_KEYS = ["event_id", "event_class", "source", "category", "topic", "symbol", "type", "exchange_ts",
             "received_at", "stream_seq", "stream_epoch", "trace_id", "data"]
ACCOUNT_BODY_KEYS = BODY_KEYS[:11] + ["version"] + BODY_KEYS[11:]

ONE_PER_CLASS = [
    ("trades", lambda: market_env(1, "public_trade")),
    ("tickers", lambda: market_env(1, "ticker_linear_snapshot")),
    ("orderbook", lambda: market_env(1, "orderbook_snapshot")),
    ("klines", lambda: market_env(1, "kline")),
    ("liquidations", lambda: market_env(1, "all_liquidation")),
    ("order_status", lambda: account_env(1, "order")),
    ("executions", lambda: account_env(1, "execution")),
    ("positions", lambda: account_env(1, "position")),
    ("balances", lambda: account_env(1, "wallet")),
    ("system", lambda: json_envelope("system", {"endpoint": "linear", "reason": "test"}, endpoint="linear",
                                     topic="connection_lost", recv_ns=time.time_ns(), epoch="ep1")),
]


def _policies(vhost: str) -> dict:
    out = {}
    for p in orjson.loads(rabbitmqctl("list_policies", "-p", vhost, "--formatter", "json")):
        out[p["name"]] = p
    return out


@pytest.mark.timeout(90)
def test_topology_retention_and_one_message_per_class(publisher, broker, amqp_vhost):
    pub = publisher()
    # Topology: every class queue, bound with {class}.#
    bindings = rabbitmqctl("list_bindings", "-p", amqp_vhost, "source_name", "destination_name", "routing_key")
    for cls in classify.EVENT_CLASSES:
        assert broker.count(classify.queue_name(cls)) == 0
        assert f"{classify.EXCHANGE}\t{classify.queue_name(cls)}\t{cls}.#" in bindings
    # Retention as policies (the publisher applies them in the background).
    wait_for(lambda: pub.status()["retention"] == "rabbitmqctl", timeout=60, message="retention applied")
    pol = _policies(amqp_vhost)
    general = orjson.loads(pol["ws-gateway-retention"]["definition"])
    assert pol["ws-gateway-retention"]["pattern"] == r"^ws-gateway\."
    assert general == {"message-ttl": 86_400_000, "max-length": 100_000, "overflow": "drop-head"}
    account = orjson.loads(pol["ws-gateway-retention-account"]["definition"])
    assert account["max-length"] == 100_000 and account["message-ttl"] == 86_400_000   # 24 h or 100,000, every queue

    for _cls, make in ONE_PER_CLASS:
        pub.push(make())
    for cls, _make in ONE_PER_CLASS:
        [(method, props, body)] = broker.drain(classify.queue_name(cls), 1)
        assert list(body) == (ACCOUNT_BODY_KEYS if cls in classify.ACCOUNT_CLASSES else BODY_KEYS), cls
        assert body["event_class"] == cls
        assert props.content_type == "application/json" and props.message_id == body["event_id"]
        assert isinstance(props.timestamp, int) and props.timestamp > 1_700_000_000
        assert {"event_class", "category", "symbol", "trace_id", "stream_seq"} <= set(props.headers)
        assert props.headers["event_class"] == cls
        persistent = cls in classify.ACCOUNT_CLASSES or cls == "system"
        assert props.delivery_mode == (2 if persistent else 1), cls
        assert method.routing_key.startswith(f"{cls}.")
        assert body["source"] == ("gateway" if cls == "system" else "bybit")

    # A stream_seq jump becomes a system stream_gap event.
    pub.push(market_env(5, "public_trade"))
    [(method, _p, gap)] = broker.drain("ws-gateway.system", 1)
    assert method.routing_key == "system.stream_gap"
    assert gap["data"]["missing_from"] == 2 and gap["data"]["missing_to"] == 4

    # SIGTERM: clean exit, everything confirmed.
    assert pub.stop(signal.SIGTERM, timeout=10) == 0
    st = pub.status()
    assert st["confirmed"] == st["published"] and st["unconfirmed"] == 0 and st["buffered"] == 0
    assert st["account_queue_depths"]["ws-gateway.order_status"] == 0   # checked every 10 s, at start too

    # Changing retention later never makes a deployment fail to start: the policy follows.
    pub2 = publisher(RETENTION_MAX_LENGTH=5000, RETENTION_TTL_MS=3_600_000)
    wait_for(lambda: pub2.status()["retention"] == "rabbitmqctl", timeout=60, message="retention re-applied")
    general = orjson.loads(_policies(amqp_vhost)["ws-gateway-retention"]["definition"])
    assert general["max-length"] == 5000 and general["message-ttl"] == 3_600_000
    assert pub2.stop() == 0


@pytest.mark.timeout(60)
def test_twelve_consumers_each_get_every_event(publisher, broker):
    pub = publisher()
    queues = [f"test-own-{uuid.uuid4().hex[:8]}" for _ in range(12)]
    patterns = ["trades.#", "trades.linear.#", "trades.linear.BTCUSDT", "#", "*.linear.*", "trades.*.BTCUSDT"] * 2
    try:
        for q, pattern in zip(queues, patterns):
            broker.ch.queue_declare(q, auto_delete=False)
            broker.ch.queue_bind(q, classify.EXCHANGE, routing_key=pattern)
        n = 2000
        for i in range(1, n + 1):
            pub.push(market_env(i))
        wait_for(lambda: pub.total("confirmed") >= n, timeout=30, message="all confirmed")
        for q in queues:
            wait_for(lambda q=q: broker.count(q) == n, timeout=10, message=f"{q} has {n}")
        ids = {body["event_id"] for _m, _p, body in broker.drain(queues[0], n)}
        assert len(ids) == n
        assert pub.status()["returned"] == {}
        # received -> confirmed latency: every confirmed event counted once (the latency target's metric)
        wait_for(lambda: sum(pub.status()["received_to_confirmed_ms"]["counts"]) == n, timeout=5,
                 message="every confirmed event in the latency counts")
        lat = pub.status()["received_to_confirmed_ms"]
        assert 0 < percentile_ms(None, lat, 50) <= percentile_ms(None, lat, 100) < float("inf")
        # and Bybit's ts -> ingest's receive time of each of them (the status file is rewritten every second)
        wait_for(lambda: sum(pub.status()["exchange_to_received_ms"]["counts"]) == n, timeout=5,
                 message="every push in the exchange -> received counts")
    finally:
        for q in queues:
            broker.ch.queue_delete(q)


@pytest.mark.timeout(60)
def test_unroutable_events_are_returned_and_counted(publisher, broker):
    pub = publisher()
    broker.ch.queue_unbind("ws-gateway.klines", classify.EXCHANGE, routing_key="klines.#")
    try:
        pub.push(market_env(1, "kline"))
        pub.push(market_env(2, "kline"))
        wait_for(lambda: pub.status()["returned"].get("klines") == 2, timeout=10, message="2 returned")
        st = pub.status()
        assert st["confirmed"].get("klines") == 2          # returned, then confirmed: not re-sent
        assert "event returned unroutable" in pub.log()
    finally:
        broker.ch.queue_bind("ws-gateway.klines", classify.EXCHANGE, routing_key="klines.#")


@pytest.mark.timeout(60)
def test_bad_input_is_counted_not_fatal(publisher, broker):
    pub = publisher()
    pub.sock.send_multipart([b"gw1", b"{not json", b""])
    pub.sock.send_multipart([b"gw9", b"{}", b""])
    pub.push(market_env(1, payload=b"{broken"))
    pub.push(market_env(2, payload=orjson.dumps({"topic": "notAStream.BTCUSDT", "ts": 1785000000000, "data": []})))
    pub.push(market_env(3, "ticker_linear_delta"))           # a delta before any snapshot
    pub.push(market_env(4))
    wait_for(lambda: pub.status()["confirmed"].get("trades") == 1, timeout=10, message="the good event confirmed")
    wait_for(lambda: pub.status()["bad_input"] == {"envelope": 2, "bad_frame": 1, "unknown_topic": 1},
             timeout=5, message="bad input counted")
    assert pub.status()["ticker_delta_without_snapshot"] == 1
    assert pub.proc.poll() is None
