"""`supervisorctl stop all` under load loses no account event: with the simulator's account
trading fast and public streams flowing, every account push the simulator sent before the
stop is in RabbitMQ and in PostgreSQL afterwards.

The simulator runs in this test process (not under supervisord), so its ground truth
survives the stop of every program."""
from __future__ import annotations

import json
import time
import uuid

import pytest

import bybitsim
from tests.e2e.conftest import start_gateway, stop_gateway
from tests.ops.conftest import not_json_lines
from tests.support import wait_for

pytestmark = pytest.mark.timeout(180)

KEY, SECRET = "stopKey" + uuid.uuid4().hex[:10], "stopSecret" + uuid.uuid4().hex
GATEWAY_PROGRAMS = ("publisher", "persister", "ingest", "api", "ops")
QUEUES = {"order": "ws-gateway.order_status", "execution": "ws-gateway.executions",
          "position": "ws-gateway.positions", "wallet": "ws-gateway.balances"}


def canonical(record) -> str:
    return json.dumps(record, sort_keys=True)


def not_published(sent: list[dict], bodies: dict[str, list[dict]]) -> dict[str, list[int]]:
    """The pushes whose record (or a newer state of the same thing) is in no published event,
    as ms before the stop. A reconciliation holds live pushes and drops those its REST snapshot
    already covers (ingest/reconcile.py), so a record counts as delivered when the same record,
    or a REST/WS record of the same order/position at the same or a later updatedTime, the same
    execId, or a wallet snapshot at the same or a later time, was published."""
    exact = {t: {canonical(r) for b in bodies[t] for r in b["data"]} for t in QUEUES}
    newest: dict[tuple, int] = {}
    for topic in ("order", "position"):
        for b in bodies[topic]:
            for r in b["data"]:
                key = (topic, r.get("orderId") or (r.get("symbol"), r.get("positionIdx")))
                newest[key] = max(newest.get(key, 0), int(r.get("updatedTime") or 0))
    exec_ids = {r.get("execId") for b in bodies["execution"] for r in b["data"]}
    wallet_ts = max((b.get("exchange_ts") or 0 for b in bodies["wallet"]), default=0)

    def delivered(topic: str, push: dict, r: dict) -> bool:
        if canonical(r) in exact[topic]:
            return True
        if topic == "execution":
            return r["execId"] in exec_ids
        if topic == "wallet":
            return wallet_ts >= push["creationTime"]
        key = (topic, r["orderId"] if topic == "order" else (r["symbol"], r["positionIdx"]))
        return newest.get(key, -1) >= int(r["updatedTime"])

    t0 = max(p["creationTime"] for p in sent)
    return {t: [t0 - p["creationTime"] for p in sent if p["topic"] == t for r in p["data"]
                if not delivered(t, p, r)] for t in QUEUES}


def drain(gw, queue: str) -> list[dict]:
    conn = gw.amqp()
    try:
        ch = conn.channel()
        out = []
        while (msg := ch.basic_get(queue, auto_ack=True))[0] is not None:
            out.append(json.loads(msg[2]))
        return out
    finally:
        conn.close()


def test_stop_all_under_load_loses_no_account_event(xprocess, gateway_stores):
    pg_url, amqp_url = gateway_stores
    with bybitsim.run_in_thread(port=0, rate=200, api_key=KEY, api_secret=SECRET, account_rate=0, seed=7) as sim:
        gw, run_dir = start_gateway(
            xprocess, f"stopall-{uuid.uuid4().hex[:8]}", pg_url, amqp_url,
            GW_SIM_AUTOSTART="false", BYBIT_WS_PUBLIC_URL=sim.ws_public_base,
            BYBIT_WS_PRIVATE_URL=sim.ws_private_url, BYBIT_REST_URL=sim.rest_url,
            BYBIT_API_KEY=KEY, BYBIT_API_SECRET=SECRET, GW_RECONCILE_INTERVAL_S="3600")
        try:
            gw.wait_ready(GATEWAY_PROGRAMS)
            subs = [{"channel": c} for c in QUEUES] + [
                {"channel": "trades", "category": "linear", "symbol": "BTCUSDT"},
                {"channel": "orderbook", "category": "linear", "symbol": "BTCUSDT", "depth": 50},
                {"channel": "tickers", "category": "linear", "symbol": "ETHUSDT"}]
            for body in subs:
                resp = gw.api("POST", "/api/v1/subscriptions", json={**body, "requested_by": "stop-all"})
                assert resp.status_code in (200, 201), resp.text
            wait_for(lambda: set(QUEUES) <= set(sim.state()["subscribed"].get("private", [])), 20,
                     message="private topics subscribed")
            wait_for(lambda: len(sim.state()["subscribed"].get("linear", [])) == 3, 20, message="public topics")

            sim.rate(account_rate=300)          # fast trading: orders, fills, positions, wallet
            wait_for(lambda: len(sim.account()["pushes"]) > 500, 30, message="account load")
            t0_ms = int(time.time() * 1000)
            gw.ctl("stop", "all", check=True)
            sim.rate(account_rate=0)
            states = gw.states()
            assert all(states[p] == "STOPPED" for p in GATEWAY_PROGRAMS), states
            # each drained within its stopwaitsecs: a clean exit, never supervisord's SIGKILL
            sup_log = (gw.log_dir / "supervisord.log").read_text()
            for program in GATEWAY_PROGRAMS:
                assert f"stopped: {program} (exit status 0)" in sup_log, sup_log[-2000:]
            assert "SIGKILL" not in sup_log
            assert not_json_lines(gw.log_dir) == []

            truth = sim.account()
            sent = [p for p in truth["pushes"] if p["creationTime"] < t0_ms]
            assert len(sent) > 500
            bodies = {topic: drain(gw, queue) for topic, queue in QUEUES.items()}
            missing = not_published(sent, bodies)
            assert missing == {t: [] for t in QUEUES}, "pushes not in RabbitMQ (ms before the stop)"

            exec_ids = {r["execId"] for p in sent if p["topic"] == "execution" for r in p["data"]}
            stored = {r["exec_id"] for r in gw.query("SELECT exec_id FROM executions")}
            assert exec_ids and exec_ids <= stored, f"{len(exec_ids - stored)} executions not in PostgreSQL"
            order_versions = {}
            for p in sent:
                if p["topic"] == "order":
                    for r in p["data"]:
                        order_versions[r["orderId"]] = max(order_versions.get(r["orderId"], 0), int(r["updatedTime"]))
            rows = {r["order_id"]: r["updated_time"] for r in gw.query("SELECT order_id, updated_time FROM orders")}
            stale = [o for o, v in order_versions.items() if rows.get(o, -1) < v]
            assert order_versions and not stale, f"{len(stale)} orders missing or older in PostgreSQL"
            positions = {(r["symbol"]) for p in sent if p["topic"] == "position" for r in p["data"]}
            assert positions <= {r["symbol"] for r in gw.query("SELECT symbol FROM positions")}
            coins = {c["coin"] for p in sent if p["topic"] == "wallet" for r in p["data"] for c in r["coin"]}
            assert coins <= {r["coin"] for r in gw.query("SELECT coin FROM balances")}
            assert not gw.query("SELECT table_name, error FROM dead_letters")
        finally:
            stop_gateway(xprocess, gw, run_dir)
