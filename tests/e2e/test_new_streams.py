"""The streams added to the contract, through the whole gateway (supervisord, simulator, RabbitMQ,
PostgreSQL): POST -> subscribe -> event class and routing key -> its queue. Also Bybit's
system.status (subscribed by ingest itself, shown in GET /api/v1/status), execution.fast beside
execution (a consumer de-duplicating on message_id ends with each fill's full record once), and an
option symbol with a decimal strike."""
from __future__ import annotations

import json

import pytest

from common.classify import queue_name
from tests.support import wait_for

pytestmark = pytest.mark.timeout(240)

DECIMAL_OPT = "XRP-30OCT26-0.4-P-USDT"
# request -> (class, routing key its events must carry)
PUBLIC = [
    ({"channel": "orderbook_rpi", "category": "linear", "symbol": "BTCUSDT"},
     "orderbook_rpi", "orderbook_rpi.linear.BTCUSDT"),
    ({"channel": "price_limit", "category": "spot", "symbol": "BTCUSDT"}, "price_limits", "price_limits.spot.BTCUSDT"),
    ({"channel": "insurance", "category": "linear", "symbol": "USDT"}, "insurance", "insurance.linear.USDT"),
    ({"channel": "insurance", "category": "inverse", "symbol": "inverse"}, "insurance", "insurance.inverse.inverse"),
    ({"channel": "adl_alert", "category": "linear", "symbol": "USDC"}, "adl_alerts", "adl_alerts.linear.USDC"),
    ({"channel": "tickers", "category": "option", "symbol": DECIMAL_OPT}, "tickers",
     "tickers.option.XRP-30OCT26-0_4-P-USDT"),
    ({"channel": "orderbook", "category": "option", "symbol": DECIMAL_OPT, "depth": 25}, "orderbook",
     "orderbook.option.XRP-30OCT26-0_4-P-USDT"),
]
PRIVATE = [({"channel": "execution"}, "executions", "executions.linear"),
           ({"channel": "execution_fast"}, "executions_fast", "executions_fast.linear"),
           ({"channel": "greeks"}, "greeks", "greeks.option")]
WHO = "e2e-new-streams"


def drain(conn, queue: str, into: list) -> None:
    """Every message waiting in ``queue`` (acked) appended to ``into`` as (routing key, props, body)."""
    ch = conn.channel()
    try:
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return
            into.append((method.routing_key, props, json.loads(body)))
    finally:
        ch.close()


@pytest.fixture(scope="module")
def subscribed(gateway):
    gateway.sim("POST", "/__sim/rate", json={"account_rate": 0})
    ids = []
    for req, _, _ in PUBLIC + PRIVATE:
        resp = gateway.api("POST", "/api/v1/subscriptions", json={**req, "requested_by": WHO})
        assert resp.status_code in (200, 201), resp.text
        ids.append(resp.json()["id"])
    wait_for(lambda: all(gateway.subscription(i)["status"] == "active" for i in ids), 40,
             message="every new stream's subscription active")
    yield ids
    for sid in ids:
        gateway.api("DELETE", f"/api/v1/subscriptions/{sid}", params={"requested_by": WHO})


def test_decimal_strike_is_accepted_with_its_full_topic(gateway, subscribed):
    rows = gateway.query("SELECT topic, symbol FROM subscriptions WHERE symbol = %s ORDER BY topic", DECIMAL_OPT)
    assert [r["topic"] for r in rows] == [f"orderbook.25.{DECIMAL_OPT}", f"tickers.{DECIMAL_OPT}"]
    assert {f"orderbook.25.{DECIMAL_OPT}", f"tickers.{DECIMAL_OPT}"} <= gateway.sim_subscribed("option")


def test_every_new_public_stream_reaches_its_queue_under_its_routing_key(gateway, subscribed):
    got: dict[str, list] = {cls: [] for _, cls, _ in PUBLIC}
    conn = gateway.amqp()
    try:
        def all_seen():
            for cls in got:
                drain(conn, queue_name(cls), got[cls])
            return all(any(k == key for k, _, _ in got[cls]) for _, cls, key in PUBLIC)

        wait_for(all_seen, 40, interval=0.2, message="an event of every new public stream on its routing key")
    finally:
        conn.close()
    for req, cls, key in PUBLIC:
        events = [body for k, _, body in got[cls] if k == key]
        body = events[0]
        assert (body["event_class"], body["category"]) == (cls, req["category"])
        assert body["symbol"] == req["symbol"], (key, body["symbol"])
        assert body["topic"].endswith("." + req["symbol"])
    # the RPI book never shares the depth books' queue: its levels are [price, size, rpiSize]
    rpi = next(body for k, _, body in got["orderbook_rpi"] if k == "orderbook_rpi.linear.BTCUSDT")
    level = (rpi["data"]["b"] or rpi["data"]["a"])[0]
    assert len(level) == 3 and rpi["topic"] == "orderbook.rpi.BTCUSDT"


def test_execution_fast_never_shadows_the_full_record(gateway, subscribed):
    before = {e["execId"] for e in gateway.sim("GET", "/__sim/account").json()["executions"]}
    gateway.sim("POST", "/__sim/account_step", json={"n": 40})
    truth = gateway.sim("GET", "/__sim/account").json()
    new = {e["execId"]: e for e in truth["executions"] if e["execId"] not in before}
    assert new, "40 account events made no fill"
    full: list = []
    fast: list = []
    greeks: list = []
    conn = gateway.amqp()
    try:
        def all_fills():
            drain(conn, queue_name("executions"), full)
            drain(conn, queue_name("executions_fast"), fast)
            drain(conn, queue_name("greeks"), greeks)
            ids = lambda msgs: {b["data"][0]["execId"] for _, _, b in msgs}   # noqa: E731
            return set(new) <= ids(full) and set(new) <= ids(fast) and greeks

        wait_for(all_fills, 40, interval=0.2, message="every new fill on both execution queues")
    finally:
        conn.close()
    # A consumer of ws-gateway.executions de-duplicating on message_id: each fill once, fees included.
    ledger: dict[str, dict] = {}
    for key, props, body in full:
        assert props.message_id == body["event_id"] and key == "executions.linear"
        ledger.setdefault(props.message_id, body["data"][0])
    by_exec = {}
    for record in ledger.values():
        assert record["execId"] not in by_exec, f"fill {record['execId']} counted twice"
        by_exec[record["execId"]] = record
    for exec_id, truth_record in new.items():
        assert by_exec[exec_id]["execFee"] == truth_record["execFee"]
    # The fast records are on their own queue, with ids of their own and no fees.
    full_ids = {props.message_id for _, props, _ in full}
    for key, props, body in fast:
        assert key == "executions_fast.linear" and body["event_class"] == "executions_fast"
        assert props.message_id not in full_ids and "execFee" not in body["data"][0]
    # PostgreSQL keeps the full record of every fill (a fast row is completed by the full one).
    wait_for(lambda: all(r["source"] != "ws_fast" and r["exec_fee"] is not None for r in gateway.query(
        "SELECT source, exec_fee FROM executions WHERE exec_id = ANY(%s)", list(new))) and len(gateway.query(
            "SELECT 1 FROM executions WHERE exec_id = ANY(%s)", list(new))) == len(new), 30,
        message="every new fill stored with its fee")
    # greeks: per option base coin, on greeks.option
    key, props, body = greeks[0]
    assert key == "greeks.option" and body["event_class"] == "greeks" and body["data"][0]["baseCoin"] == "BTC"
    assert props.delivery_mode == 2


def test_exchange_status_is_subscribed_by_ingest_published_and_shown(gateway):
    def exchange():
        return gateway.api("GET", "/api/v1/status").json().get("exchange") or {}

    wait_for(lambda: exchange().get("subscribed") is True, 30, message="ingest holds system.status")
    assert "system.status" in gateway.sim_subscribed("misc")
    notice = {"id": "e2e-incident-1", "title": "Market data delayed", "state": "ongoing", "maintainType": 3,
              "serviceTypes": [5], "product": [1, 2]}
    gateway.sim("POST", "/__sim/status_notice", json=notice)
    got: list = []
    conn = gateway.amqp()
    try:
        wait_for(lambda: drain(conn, queue_name("exchange_status"), got) or
                 any(b["data"][0]["id"] == "e2e-incident-1" for _, _, b in got), 30,
                 message="the notice on ws-gateway.exchange_status")
    finally:
        conn.close()
    key, props, body = next(m for m in got if m[2]["data"][0]["id"] == "e2e-incident-1")
    assert key == "exchange_status.bybit" and body["event_class"] == "exchange_status"
    assert body["topic"] == "system.status" and body["category"] is None and props.delivery_mode == 2
    wait_for(lambda: any(n["id"] == "e2e-incident-1" and n["active"] for n in exchange().get("notices", [])), 15,
             message="the incident in GET /api/v1/status")
    gateway.sim("POST", "/__sim/status_notice", json={**notice, "state": "completed"})
    wait_for(lambda: not any(n["id"] == "e2e-incident-1" for n in exchange().get("notices", [])), 15,
             message="the completed incident gone from GET /api/v1/status")
