"""End to end: every channel of every category reaches its ws-gateway.* queue, and
ingest killed with -9 under supervisord is back with every subscription within 5 s."""
from __future__ import annotations

import json
import os
import signal

import pytest

from common.classify import queue_name
from tests.support import wait_for
from tests.support.gateway import E2E_KEY, E2E_SECRET

pytestmark = pytest.mark.timeout(180)

OPT = "BTC-31JUL26-120000-C"
REQUESTS = [
    {"channel": "trades", "category": "spot", "symbol": "BTCUSDT"},
    {"channel": "trades", "category": "linear", "symbol": "BTCUSDT"},
    {"channel": "trades", "category": "inverse", "symbol": "BTCUSD"},
    {"channel": "trades", "category": "option", "symbol": OPT},
    {"channel": "tickers", "category": "spot", "symbol": "ETHUSDT"},
    {"channel": "tickers", "category": "linear", "symbol": "ETHUSDT"},
    {"channel": "tickers", "category": "inverse", "symbol": "BTCUSD"},
    {"channel": "tickers", "category": "option", "symbol": OPT},
    {"channel": "orderbook", "category": "spot", "symbol": "BTCUSDT", "depth": 50},
    {"channel": "orderbook", "category": "linear", "symbol": "BTCUSDT", "depth": 1},
    {"channel": "orderbook", "category": "inverse", "symbol": "BTCUSD", "depth": 200},
    {"channel": "orderbook", "category": "option", "symbol": OPT, "depth": 25},
    {"channel": "kline", "category": "spot", "symbol": "BTCUSDT", "interval": "1"},
    {"channel": "kline", "category": "linear", "symbol": "BTCUSDT", "interval": "15"},
    {"channel": "kline", "category": "inverse", "symbol": "BTCUSD", "interval": "D"},
    {"channel": "liquidation", "category": "linear", "symbol": "BTCUSDT"},
    {"channel": "liquidation", "category": "inverse", "symbol": "BTCUSD"},
    {"channel": "order"}, {"channel": "execution"}, {"channel": "position"}, {"channel": "wallet"},
]
PRIVATE_CLASS = {"order": "order_status", "execution": "executions", "position": "positions", "wallet": "balances"}
PUBLIC_CLASS = {"trades": "trades", "tickers": "tickers", "orderbook": "orderbook", "kline": "klines",
                "liquidation": "liquidations"}


def expected_key(req: dict) -> tuple[str, str]:
    """(queue, routing key prefix) a request's events must arrive with."""
    if req["channel"] in PRIVATE_CLASS:
        cls = PRIVATE_CLASS[req["channel"]]
        return queue_name(cls), f"{cls}."
    cls = PUBLIC_CLASS[req["channel"]]
    return queue_name(cls), f"{cls}.{req['category']}."


@pytest.fixture(scope="module")
def subscribed(gateway):
    gateway.sim("POST", "/__sim/rate", json={"account_rate": 10})
    ids = []
    for req in REQUESTS:
        resp = gateway.api("POST", "/api/v1/subscriptions", json={**req, "requested_by": "e2e-channels"})
        assert resp.status_code in (200, 201), resp.text
        ids.append(resp.json()["id"])
    wait_for(lambda: all(gateway.subscription(i)["status"] == "active" for i in ids), 30,
             message="every subscription active")
    yield ids
    for sid in ids:
        gateway.api("DELETE", f"/api/v1/subscriptions/{sid}", params={"requested_by": "e2e-channels"})
    gateway.sim("POST", "/__sim/rate", json={"account_rate": 0})


def test_every_channel_reaches_its_queue(gateway, subscribed):
    wanted: dict[str, set[str]] = {}
    for req in REQUESTS:
        queue, prefix = expected_key(req)
        wanted.setdefault(queue, set()).add(prefix)
    seen: dict[str, set[str]] = {q: set() for q in wanted}
    bad: list[str] = []
    conn = gateway.amqp()
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=500)

        def on_message(queue):
            def callback(channel, method, props, body):
                if props.message_id != json.loads(body)["event_id"]:
                    bad.append(method.routing_key)
                seen[queue].add(method.routing_key)
                channel.basic_ack(method.delivery_tag)
            return callback

        for queue in wanted:
            ch.basic_consume(queue, on_message(queue))

        def all_seen():
            conn.process_data_events(time_limit=0.2)
            return all(any(k.startswith(p) for k in seen[q]) for q, ps in wanted.items() for p in ps)

        missing = lambda: {q: sorted(p for p in ps if not any(k.startswith(p) for k in seen[q]))  # noqa: E731
                           for q, ps in wanted.items()}
        try:
            wait_for(all_seen, 30, interval=0, message="every channel in its queue")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; missing: {missing()}") from None
        assert not bad, f"message_id != event_id for {bad[:5]}"
    finally:
        conn.close()


def test_ingest_kill9_is_back_with_every_subscription_within_5s(gateway, subscribed):
    expected = {ep: set(names) for ep, names in gateway.sim_state()["subscribed"].items() if names}
    pid = gateway.pid("ingest")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gateway.pid("ingest") not in (0, pid), 5, message="supervisord restarted ingest")

    def restored():
        now = gateway.sim_state()["subscribed"]
        return all(expected[ep] <= set(now.get(ep, [])) for ep in expected)

    wait_for(restored, 5, message="every subscription back at the simulator")
    status = gateway.api("GET", "/api/v1/status").json()
    assert status


def test_no_key_or_secret_in_any_log(gateway, subscribed):
    for program in ("ingest", "publisher", "persister", "api", "simulator"):
        text = gateway.log_text(program)
        assert E2E_SECRET not in text, program
        assert E2E_KEY not in text, program
