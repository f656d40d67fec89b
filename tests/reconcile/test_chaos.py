"""The account end to end under supervisord: the simulator's account trades continuously while
ingest, publisher and persister are each killed (kill -9) a few times at random moments and
the private connection is dropped. Afterwards PostgreSQL equals Bybit's (the simulator's)
ground truth, and a consumer that de-duplicates on message_id (tests/support/ledger.py) counted every
fill exactly once and holds every order, position and coin as the truth has it."""
from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid

import pytest

from tests.e2e.conftest import start_gateway, stop_gateway
from tests.support import wait_for
from tests.support.ledger import Ledger
from tests.support.stores import AMQP_BASE, throwaway_database, throwaway_vhost

pytestmark = pytest.mark.timeout(240)
KEY, SECRET = "chaos-key", "chaos-secret-0123456789abcdef"
CHAOS_S = 35.0


def drain(gw, queue: str, ledger: Ledger | None = None) -> list[dict]:
    """Every message in ``queue`` (acked), as event bodies; each also goes into ``ledger``."""
    conn = gw.amqp()
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            doc = json.loads(body)
            if ledger is not None:
                ledger.add(method.routing_key, props.message_id, doc)
            out.append(doc)
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

    seed = int(os.environ.get("CHAOS_SEED") or os.getpid())
    print(f"chaos seed {seed} (CHAOS_SEED={seed} repeats this order of kills)")
    rng = random.Random(seed)
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

    ledger = Ledger()
    verdict: dict = {}
    system: list[dict] = []

    def ledger_equal() -> bool:
        for cls in ("executions", "order_status", "positions", "balances"):
            drain(gw, f"ws-gateway.{cls}", ledger)
        system.extend(drain(gw, "ws-gateway.system", ledger))
        verdict.update(ledger.check(truth))
        return not verdict["problems"]

    try:
        wait_for(ledger_equal, 30, interval=0.5, message="the consumer's ledger equal to the truth")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {verdict}") from None
    print(f"ledger: {verdict}")
    assert verdict["sources"].get("bybit-rest", 0) > 0, "no reconciled record reached the consumer"
    status = json.loads((gw.run_dir / "status" / "ingest.json").read_text())["reconciliation"]
    reasons = {r for r in (status["last_reasons"] or [])}
    assert status["done"] >= 1 and reasons
    system.extend(drain(gw, "ws-gateway.system"))
    kinds = {m["topic"] for m in system}
    assert "reconciliation_done" in kinds
    assert sum(1 for m in system if m["topic"] == "reconciliation_done") >= 3
    all_reasons = {r for m in system if m["topic"] == "reconciliation_done" for r in m["data"]["reasons"]}
    assert {"publisher_restarted", "persister_restarted", "private_connected", "ingest_started"} <= all_reasons
