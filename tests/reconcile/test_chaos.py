"""Issue 7 end to end under supervisord: the simulator's account trades continuously while
ingest, publisher and persister are each killed (kill -9) a few times at random moments and
the private connection is dropped. Afterwards PostgreSQL equals Bybit's (the simulator's)
ground truth, ws-gateway.executions carried every execId and ws-gateway.order_status the
final state of every order."""
from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid

import pytest

from tests.conftest import AMQP_BASE, throwaway_database, throwaway_vhost
from tests.e2e.conftest import start_gateway, stop_gateway
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(240)
KEY, SECRET = "chaos-key", "chaos-secret-0123456789abcdef"
CHAOS_S = 35.0


def drain(gw, queue: str) -> list[dict]:
    """Every message in ``queue`` (acked), as event bodies."""
    conn = gw.amqp()
    out = []
    try:
        ch = conn.channel()
        while True:
            method, _props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append(json.loads(body))
    finally:
        conn.close()


def pg_state(gw) -> dict:
    return {
        "orders": {r["order_id"]: (r["order_status"], r["updated_time"])
                   for r in gw.query("SELECT order_id, order_status, updated_time FROM orders")},
        "executions": {r["exec_id"] for r in gw.query("SELECT exec_id FROM executions")},
        "positions": {r["symbol"]: r["size"] for r in gw.query("SELECT symbol, size FROM positions")},
        "balances": {r["coin"]: r["wallet_balance"] for r in gw.query("SELECT coin, wallet_balance FROM balances")},
    }


def differences(pg: dict, truth: dict) -> list[str]:
    out = []
    want_orders = {o["orderId"]: (o["orderStatus"], int(o["updatedTime"])) for o in truth["orders"]}
    wrong = [oid for oid, v in want_orders.items() if pg["orders"].get(oid) != v]
    if wrong:
        out.append(f"{len(wrong)} of {len(want_orders)} orders differ, e.g. {wrong[0]}: "
                   f"{pg['orders'].get(wrong[0])} != {want_orders[wrong[0]]}")
    missing = {e["execId"] for e in truth["executions"]} - pg["executions"]
    if missing:
        out.append(f"{len(missing)} of {len(truth['executions'])} executions missing")
    for p in truth["positions"]:
        got = pg["positions"].get(p["symbol"])
        if (got is None and p["size"] != "0") or (got is not None and str(got.normalize()) != str(
                type(got)(p["size"]).normalize())):
            out.append(f"position {p['symbol']}: {got} != {p['size']}")
    for c in truth["balances"]["coin"]:
        got = pg["balances"].get(c["coin"])
        if got is None or got != type(got)(c["walletBalance"]):
            out.append(f"balance {c['coin']}: {got} != {c['walletBalance']}")
    return out


@pytest.fixture
def chaos_gateway(xprocess):
    with throwaway_database() as pg_url, throwaway_vhost() as vhost:
        gw, run_dir = start_gateway(xprocess, f"chaos-{uuid.uuid4().hex[:8]}", pg_url, f"{AMQP_BASE}/{vhost}",
                                    BYBIT_API_KEY=KEY, BYBIT_API_SECRET=SECRET, SIM_API_KEY=KEY,
                                    SIM_API_SECRET=SECRET, SIM_ACCOUNT_RATE="8", SIM_RATE="5",
                                    GW_RECONCILE_INTERVAL_S="5")
        try:
            gw.wait_ready()
            yield gw
        finally:
            stop_gateway(xprocess, gw, run_dir)


def test_kill_any_process_loses_no_account_state(chaos_gateway):
    gw = chaos_gateway
    for channel in ("order", "execution", "position", "wallet"):
        resp = gw.api("POST", "/api/v1/subscriptions", json={"channel": channel, "requested_by": "chaos"})
        assert resp.status_code in (200, 201), resp.text
    wait_for(lambda: len(gw.sim_subscribed("private")) == 4, 20, message="private topics subscribed")

    rng = random.Random(os.getpid())
    actions = ["ingest", "publisher", "persister"] * 3 + ["drop"] * 3
    rng.shuffle(actions)
    deadline = time.monotonic() + CHAOS_S
    done = []
    for action in actions:
        # a random moment within this action's share of the remaining time (a pause, not a wait for a condition)
        share = max(0.6, (deadline - time.monotonic()) / (len(actions) - len(done)))
        time.sleep(rng.uniform(0.3, share))
        if action == "drop":
            gw.sim("POST", "/__sim/drop", json={"endpoint": "private"})
        else:
            os.kill(gw.pid(action), signal.SIGKILL)
            wait_for(lambda: gw.states().get(action) == "RUNNING" and gw.pid(action) > 0, 30, interval=0.2,
                     message=f"{action} restarted by supervisord")
        done.append(action)
    gw.sim("POST", "/__sim/rate", json={"account_rate": 0})
    truth = gw.sim("GET", "/__sim/account").json()
    assert len(truth["executions"]) > 100 and len(truth["orders"]) > 50

    last: list[str] = []

    def matches() -> bool:
        last[:] = differences(pg_state(gw), truth)
        return not last

    t0 = time.monotonic()
    wait_for(matches, 40, interval=0.5, message=f"PostgreSQL equal to the ground truth ({last})")
    by_source = {r["source"]: r["n"] for r in gw.query("SELECT source, count(*) AS n FROM executions GROUP BY 1")}
    print(f"chaos {done}; {len(truth['executions'])} fills, {len(truth['orders'])} orders; PostgreSQL equal "
          f"{time.monotonic() - t0:.1f} s after the account stopped; fills first written from {by_source}")

    execs = {r["execId"] for m in drain(gw, "ws-gateway.executions") for r in m["data"]}
    assert {e["execId"] for e in truth["executions"]} <= execs
    latest: dict[str, tuple] = {}
    for m in drain(gw, "ws-gateway.order_status"):
        for r in m["data"]:
            v = (int(r["updatedTime"]), r["orderStatus"])
            latest[r["orderId"]] = max(latest.get(r["orderId"], v), v)
    wrong = [o["orderId"] for o in truth["orders"] if latest.get(o["orderId"]) != (int(o["updatedTime"]), o["orderStatus"])]
    assert not wrong, f"{len(wrong)} orders without their final state on ws-gateway.order_status"
    status = json.loads((gw.run_dir / "status" / "ingest.json").read_text())["reconciliation"]
    reasons = {r for r in (status["last_reasons"] or [])}
    assert status["done"] >= 1 and reasons
    system = drain(gw, "ws-gateway.system")
    kinds = {m["topic"] for m in system}
    assert "reconciliation_done" in kinds
    all_reasons = {r for m in system if m["topic"] == "reconciliation_done" for r in m["data"]["reasons"]}
    assert {"publisher_restarted", "persister_restarted", "private_connected", "ingest_started"} <= all_reasons
