"""Whole-category subscriptions through the whole gateway (supervisord, the simulator's realistic
listing of 800 linear and 700 spot symbols, RabbitMQ, PostgreSQL): one POST per category holds a
topic per listed symbol, follows a listing and a delisting, routes each symbol's events on its own
key, and a DELETE lets go of every topic except one another subscription holds."""
from __future__ import annotations

import json
import uuid

import pytest

from common.classify import EXCHANGE
from tests.e2e.conftest import start_gateway, stop_gateway
from tests.support import wait_for

pytestmark = pytest.mark.timeout(420)

WHO = "e2e-whole-category"
LINEAR, SPOT = 800, 700


@pytest.fixture(scope="module")
def gw(xprocess, gateway_stores):
    pg_url, amqp_url = gateway_stores
    gw, run_dir = start_gateway(xprocess, f"gateway-whole-{uuid.uuid4().hex[:8]}", pg_url, amqp_url,
                                SIM_LISTING="realistic", SIM_RATE="10", GW_CATEGORY_REFRESH_S="5")
    try:
        gw.wait_ready()
        gw.sim("POST", "/__sim/rate", json={"account_rate": 0})
        yield gw
    finally:
        stop_gateway(xprocess, gw, run_dir)


def post(gw, body: dict, who: str = WHO) -> dict:
    resp = gw.api("POST", "/api/v1/subscriptions", json={**body, "requested_by": who})
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def get(gw, sid: str) -> dict:
    resp = gw.api("GET", f"/api/v1/subscriptions/{sid}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def tickers(gw, endpoint: str) -> set[str]:
    return {t for t in gw.sim_subscribed(endpoint) if t.startswith("tickers.")}


class Keys:
    """A queue of our own bound to a few routing keys of the events exchange."""

    def __init__(self, gw, keys: list[str]):
        self.conn = gw.amqp()
        self.ch = self.conn.channel()
        self.queue = self.ch.queue_declare("", exclusive=True).method.queue
        for key in keys:
            self.bind(key)
        self.got: list[tuple[str, dict]] = []

    def bind(self, key: str) -> None:
        self.ch.queue_bind(self.queue, EXCHANGE, routing_key=key)

    def seen(self, key: str) -> list[dict]:
        while True:
            method, _props, body = self.ch.basic_get(self.queue, auto_ack=True)
            if method is None:
                break
            self.got.append((method.routing_key, json.loads(body)))
        return [b for k, b in self.got if k == key]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def whole(gw):
    """An explicit BTCUSDT ticker held by another service, then every linear and spot ticker."""
    explicit = post(gw, {"channel": "tickers", "category": "linear", "symbol": "BTCUSDT"}, who="other-service")
    linear = post(gw, {"channel": "tickers", "category": "linear", "symbol": "*"})
    spot = post(gw, {"channel": "tickers", "category": "spot", "symbol": "*"})
    assert linear["topic"] == "tickers.*" and linear["symbol"] == "*" and linear["status"] == "pending"
    ids = {"explicit": explicit["id"], "linear": linear["id"], "spot": spot["id"]}
    yield ids
    for sid, who in ((ids["linear"], WHO), (ids["spot"], WHO), (ids["explicit"], "other-service")):
        gw.api("DELETE", f"/api/v1/subscriptions/{sid}", params={"requested_by": who})


def test_a_whole_category_is_one_active_subscription_within_a_minute(gw, whole):
    wait_for(lambda: get(gw, whole["linear"])["status"] == "active" and get(gw, whole["spot"])["status"] == "active",
             60, interval=0.5, message="both whole-category subscriptions active")
    linear, spot = get(gw, whole["linear"]), get(gw, whole["spot"])
    assert (linear["symbol_count"], spot["symbol_count"]) == (LINEAR, SPOT)
    assert linear["refused_topics"] == [] and linear["requesters"] == [WHO]
    assert len(tickers(gw, "linear")) == LINEAR and len(tickers(gw, "spot")) == SPOT
    # one row each in the table and in the list; the count in /api/v1/status too
    rows = gw.query("SELECT topic FROM subscriptions WHERE status <> 'removed' ORDER BY endpoint, topic")
    assert [r["topic"] for r in rows] == ["tickers.*", "tickers.BTCUSDT", "tickers.*"]
    assert gw.api("GET", "/api/v1/subscriptions", params={"symbol": "*"}).json()["total"] == 2
    status = {s["id"]: s for s in gw.api("GET", "/api/v1/status").json()["subscriptions"]}
    assert status[whole["linear"]]["symbol_count"] == LINEAR and status[whole["spot"]]["symbol_count"] == SPOT
    # spread over as many connections as Bybit's 21,000 characters per connection require
    conns = [c for c in gw.sim_state()["connections"] if c["endpoint"] == "linear"]
    assert len(conns) >= 1 + sum(len(t) for t in tickers(gw, "linear")) // 21_000


def test_events_route_on_each_symbols_key(gw, whole):
    wait_for(lambda: get(gw, whole["linear"])["status"] == "active", 60, message="linear active")
    quiet = sorted(t.split(".", 1)[1] for t in tickers(gw, "linear"))[-1]      # a tail symbol: rarely sends
    keys = Keys(gw, ["tickers.linear.ETHUSDT", "tickers.spot.ETHUSDT", f"tickers.linear.{quiet}"])
    try:
        wait_for(lambda: keys.seen("tickers.linear.ETHUSDT") and keys.seen("tickers.spot.ETHUSDT"), 30,
                 interval=0.3, message="ETHUSDT tickers of both categories on their keys")
        for category in ("linear", "spot"):
            body = keys.seen(f"tickers.{category}.ETHUSDT")[0]
            assert (body["category"], body["symbol"], body["topic"]) == (category, "ETHUSDT", "tickers.ETHUSDT")
        assert all(b["symbol"] == quiet for b in keys.seen(f"tickers.linear.{quiet}"))
    finally:
        keys.close()


def test_a_listing_is_followed(gw, whole):
    wait_for(lambda: get(gw, whole["linear"])["status"] == "active", 60, message="linear active")
    new = gw.sim("POST", "/__sim/listing", json={"category": "linear", "action": "list"}).json()["symbol"]
    keys = Keys(gw, [f"tickers.linear.{new}"])
    try:
        wait_for(lambda: f"tickers.{new}" in tickers(gw, "linear"), 60, interval=0.5,
                 message=f"tickers.{new} subscribed after its listing")
        wait_for(lambda: keys.seen(f"tickers.linear.{new}"), 30, interval=0.3, message=f"{new}'s events routed")
        assert keys.seen(f"tickers.linear.{new}")[0]["symbol"] == new
        wait_for(lambda: get(gw, whole["linear"])["symbol_count"] == LINEAR + 1, 30, message="count follows")
    finally:
        keys.close()
    gw.sim("POST", "/__sim/listing", json={"category": "linear", "action": "delist", "symbol": new})
    wait_for(lambda: get(gw, whole["linear"])["symbol_count"] == LINEAR, 60, message="back to 800")


def test_a_delisting_is_let_go(gw, whole):
    wait_for(lambda: get(gw, whole["spot"])["status"] == "active", 60, message="spot active")
    gone = gw.sim("POST", "/__sim/listing", json={"category": "spot", "action": "delist"}).json()["symbol"]
    assert f"tickers.{gone}" in tickers(gw, "spot")
    wait_for(lambda: f"tickers.{gone}" not in tickers(gw, "spot"), 60, interval=0.5,
             message=f"tickers.{gone} unsubscribed after its delisting")
    wait_for(lambda: get(gw, whole["spot"])["symbol_count"] == SPOT - 1, 30, message="count follows")
    assert get(gw, whole["spot"])["status"] == "active"
    gw.sim("POST", "/__sim/listing", json={"category": "spot", "action": "list", "symbol": gone})
    wait_for(lambda: f"tickers.{gone}" in tickers(gw, "spot"), 60, interval=0.5, message="relisted, held again")


def test_an_unfetchable_list_fails_the_subscription_and_is_retried(gw):
    gw.sim("POST", "/__sim/rest_fault", json={"kind": "http", "count": 1000, "path": "/v5/market/instruments-info"})
    try:
        sid = post(gw, {"channel": "trades", "category": "inverse", "symbol": "*"})["id"]
        wait_for(lambda: get(gw, sid)["status"] == "failed", 60, interval=0.5, message="failed while unfetchable")
        assert "HTTP 502" in get(gw, sid)["last_error"]
    finally:
        gw.sim("POST", "/__sim/reset", json={})
    wait_for(lambda: get(gw, sid)["status"] == "active", 60, interval=0.5, message="retried and active")
    assert get(gw, sid)["symbol_count"] == 0 and get(gw, sid)["last_error"] is None   # inverse lists nothing here
    assert gw.api("DELETE", f"/api/v1/subscriptions/{sid}", params={"requested_by": WHO}).status_code == 200


def test_delete_lets_go_of_every_topic_but_one_held_elsewhere(gw, whole):
    wait_for(lambda: get(gw, whole["linear"])["status"] == "active", 60, message="linear active")
    resp = gw.api("DELETE", f"/api/v1/subscriptions/{whole['linear']}", params={"requested_by": WHO})
    assert resp.status_code == 200 and resp.json()["status"] == "removed"
    wait_for(lambda: tickers(gw, "linear") == {"tickers.BTCUSDT"}, 60, interval=0.5,
             message="only the explicitly held linear ticker left")
    assert len(tickers(gw, "spot")) == SPOT                 # the other category's subscription is untouched
    assert get(gw, whole["explicit"])["status"] == "active"
