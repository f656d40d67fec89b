"""Reconciliation at ingest level: ingest as a process, the simulator over real sockets, the test
standing in for publisher and persister (tests/ingest/harness.py)."""
from __future__ import annotations

import json
import time

import pytest

from common.topics import build_topic
from tests.ingest.test_ingest import store
from tests.reconcile.conftest import API_KEY, API_SECRET
from tests.support import wait_for

pytestmark = pytest.mark.timeout(90)
PRIVATE = [build_topic(c) for c in ("order", "execution", "position", "wallet")]


def rest_records(capture, topic: str) -> list[dict]:
    return [r for e in capture.of_kind("rest", topic) for r in e.json()["list"]]


def system(capture, kind: str) -> list[dict]:
    return [e.json() for e in capture.of_kind("system", kind)]


def delivered(capture, topic: str) -> list[dict]:
    """Every record of ``topic`` that reached this downstream, from pushes and from REST."""
    pushed = [r for e in capture.frames(endpoint="private") if e.topic.split(".")[0] == topic
              for r in e.json()["data"]]
    return pushed + rest_records(capture, topic)


def assert_converged(capture, truth: dict) -> None:
    """What reached ``capture`` holds the account's ground truth: every fill, each order's
    latest state, every position and the balance."""
    execs = {r["execId"] for r in delivered(capture, "execution")}
    missing = {e["execId"] for e in truth["executions"]} - execs
    assert not missing, f"{len(missing)} fills never delivered"
    latest: dict[str, dict] = {}
    for r in delivered(capture, "order"):
        if r["orderId"] not in latest or int(r["updatedTime"]) >= int(latest[r["orderId"]]["updatedTime"]):
            latest[r["orderId"]] = r
    for o in truth["orders"]:
        got = latest.get(o["orderId"])
        assert got and (got["orderStatus"], got["updatedTime"]) == (o["orderStatus"], o["updatedTime"]), o["orderId"]
    positions = {}
    for r in delivered(capture, "position"):
        if r["symbol"] not in positions or int(r["updatedTime"]) >= int(positions[r["symbol"]]["updatedTime"]):
            positions[r["symbol"]] = r
    for p in truth["positions"]:
        if p["size"] != "0":
            assert positions[p["symbol"]]["size"] == p["size"], p["symbol"]
    wallets = [r for r in delivered(capture, "wallet")]
    assert truth["balances"]["totalWalletBalance"] in {w["totalWalletBalance"] for w in wallets}


def converged(capture, truth) -> bool:
    try:
        assert_converged(capture, truth)
    except (AssertionError, KeyError):
        return False
    return True


def test_start_after_the_account_moved_brings_everything_within_seconds(start_ingest, sim, rec_db):
    sim.account_step(60)                              # trades while no ingest runs
    truth = sim.account()
    assert truth["open_order_ids"] and truth["executions"]
    t0 = time.monotonic()
    ingest = start_ingest()
    for capture in (ingest.publisher, ingest.persister):
        wait_for(lambda: converged(capture, truth), 10, message="REST state of the whole account delivered")
    took = time.monotonic() - t0
    open_ids = {r["orderId"] for r in rest_records(ingest.persister, "order") if r["orderStatus"] in ("New", "PartiallyFilled")}
    assert open_ids == set(truth["open_order_ids"])
    done = wait_for(lambda: system(ingest.publisher, "reconciliation_done"), 5, message="reconciliation_done")
    assert done[0]["counts"]["executions"] == len(truth["executions"]) and "ingest_started" in done[0]["reasons"]
    assert not system(ingest.publisher, "reconciliation_failed")
    rest = ingest.persister.of_kind("rest")
    assert all(e.json()["fetched_at_ms"] > 0 for e in rest)
    st = wait_for(lambda: (s := ingest.status()["reconciliation"])["done"] and s, 5, message="status")
    assert st["last_error"] is None and st["last_counts"]["balances"] == 1
    print(f"converged {took:.2f} s after start")

    # stopped again; the account moves; the next start brings what was missed
    ingest.stop()
    sim.account_step(40)
    truth = sim.account()
    ingest.start()
    wait_for(lambda: converged(ingest.persister, truth), 10, message="missed fills and order states after restart")


def test_private_reconnect_reconciles_and_loses_nothing_held(start_ingest, sim, rec_db):
    store(rec_db, PRIVATE)
    ingest = start_ingest()
    wait_for(lambda: all(ingest.statuses().get(t.key) == "active" for t in PRIVATE), 15, message="private active")
    sim.rate(account_rate=25)
    wait_for(lambda: len(ingest.publisher.frames(endpoint="private")) > 30, 10, message="pushes flowing")
    before = len(system(ingest.publisher, "reconciliation_done"))
    for _ in range(3):                                  # drop the private socket while the account trades
        n = len(system(ingest.publisher, "reconciliation_done"))
        sim.drop("private")
        wait_for(lambda: len(system(ingest.publisher, "reconciliation_done")) > n, 15,
                 message="a reconciliation after the reconnect")
    sim.rate(account_rate=0)
    truth = sim.account()
    wait_for(lambda: converged(ingest.publisher, truth) and converged(ingest.persister, truth), 10,
             message="nothing lost across three drops")
    reasons = [r for d in system(ingest.publisher, "reconciliation_done")[before:] for r in d["reasons"]]
    assert "private_connected" in reasons
    wait_for(lambda: (s := ingest.status()["reconciliation"])["done"] >= 4 and s["state"] == "idle", 10,
             message="status after the last reconciliation")
    seqs = [e.stream_seq for e in ingest.publisher.frames("execution", "private")]
    assert seqs == list(range(1, len(seqs) + 1))


def test_rate_limits_timestamps_and_5xx_are_survived_with_backoff(start_ingest, sim, rec_db):
    sim.account_step(20)
    sim.rest_fault("rate_limit", count=2, path="/v5/account/wallet-balance", reset_ms=300)
    sim.rest_fault("rate_limit", count=2, path="/v5/position/list", reset_ms=None)
    sim.rest_fault("timestamp", count=2, path="/v5/execution/list")
    sim.rest_fault("http", count=2, path="/v5/order/realtime", status=503)
    sim.rest_fault("retcode", count=1, path="/v5/order/history", ret_code=10016)
    ingest = start_ingest()
    truth = sim.account()
    wait_for(lambda: system(ingest.publisher, "reconciliation_done"), 20, message="reconciliation done")
    assert not system(ingest.publisher, "reconciliation_failed")
    assert converged(ingest.persister, truth)
    log = sim.rest_log()
    faults = [c for c in log if c["fault"]]
    assert len(faults) == 9
    wallet = [c for c in log if c["path"] == "/v5/account/wallet-balance"]
    assert wallet[1]["at_ms"] - wallet[0]["at_ms"] >= 200         # waited for the reset header
    counts = ingest.status()["reconciliation"]["rest"]
    assert counts["retry_rate_limit"] == 4 and counts["retry_timestamp"] == 2 and counts["retry_http"] == 2
    assert counts["retry_server"] == 1


def test_a_failed_call_is_never_reported_done_and_is_retried(start_ingest, sim, rec_db):
    sim.account_step(10)
    sim.rest_fault("retcode", count=2, path="/v5/account/wallet-balance", ret_code=10005)   # one call per round
    ingest = start_ingest()
    wait_for(lambda: system(ingest.publisher, "reconciliation_done"), 20, message="done after the retries")
    kinds = [e.topic for e in ingest.publisher.of_kind("system") if e.topic.startswith("reconciliation")]
    assert kinds[:3] == ["reconciliation_failed", "reconciliation_failed", "reconciliation_done"]
    failed = system(ingest.publisher, "reconciliation_failed")
    assert "10005" in failed[0]["error"] and failed[1]["attempt"] == 2
    # nothing was sent for the failed attempts: the first rest envelope follows the second failure
    items = list(ingest.publisher.items)
    first_rest = next(i for i, e in enumerate(items) if e.kind == "rest")
    last_fail = max(i for i, e in enumerate(items) if e.kind == "system" and e.topic == "reconciliation_failed")
    assert first_rest > last_fail
    st = wait_for(lambda: (s := ingest.status()["reconciliation"])["done"] and s, 5, message="status")
    assert st["failed"] == 2 and "10005" in st["last_error"]
    metrics = (ingest.run_dir / "metrics")
    assert any(metrics.iterdir())
    log = ingest.log()
    assert "reconciliation_failed" in log and API_KEY not in log and API_SECRET not in log


def test_fills_are_fetched_from_the_newest_one_in_postgresql_minus_a_margin(start_ingest, sim, rec_db):
    import psycopg2

    sim.account_step(10)
    newest = int(sim.account()["executions"][-1]["execTime"])
    conn = psycopg2.connect(rec_db)
    try:
        with conn, conn.cursor() as cur:
            # no private topics left by earlier tests: their pushes would start a second
            # reconciliation from a newer fill than the one this test plants
            cur.execute("DELETE FROM subscriptions")
            cur.execute("INSERT INTO executions (exec_id, order_id, category, symbol, exec_time, raw)"
                        " VALUES ('known-fill', 'o', 'linear', 'BTCUSDT', %s, '{}')", (newest,))
        n = len(sim.rest_log())
        ingest = start_ingest()
        wait_for(lambda: system(ingest.publisher, "reconciliation_done"), 15, message="reconciliation done")
        queries = [c["query"] for c in sim.rest_log()[n:] if c["path"] == "/v5/execution/list"]
        starts = {int(q.split("startTime=")[1].split("&")[0]) for q in queries}
        # an earlier test's ingest held the private lease: taking it over reconciles from that
        # owner's last renewal (gap_from) when it is earlier than the newest fill
        gaps = [e["gap_from"] for e in system(ingest.publisher, "owner_changed")
                if e.get("unit") == "private" and e.get("old_owner") and e.get("gap_from")]
        assert queries and starts == {min([newest] + [int(g * 1000) for g in gaps]) - 60_000}, (newest, gaps, starts)
    finally:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM executions")
        conn.close()


def test_a_restarted_downstream_is_detected_from_its_status_file(start_ingest, sim, rec_db):
    ingest = start_ingest()
    wait_for(lambda: system(ingest.publisher, "reconciliation_done"), 15, message="first reconciliation")
    status = ingest.run_dir / "status" / "persister.json"
    status.write_text(json.dumps({"process": "persister", "pid": 101, "started_at": 1.0, "updated_at": time.time(),
                                  "database": {"up": True, "since": 1.0}}))
    wait_for(lambda: ingest.status()["reconciliation"]["downstream_pids"].get("persister") == 101, 5,
             message="ingest read the persister's status file")
    n = len(system(ingest.publisher, "reconciliation_done"))
    status.write_text(json.dumps({"process": "persister", "pid": 102, "started_at": 2.0, "updated_at": time.time()}))
    wait_for(lambda: len(system(ingest.publisher, "reconciliation_done")) > n, 10, message="reconciled again")
    assert "persister_restarted" in system(ingest.publisher, "reconciliation_done")[-1]["reasons"]


def test_pushes_during_a_reconciliation_are_not_held_back(start_ingest, sim, rec_db):
    """Live fills go out as they come while a slow reconciliation waits on REST; the REST state
    follows, and the two merge by version downstream."""
    store(rec_db, PRIVATE)
    ingest = start_ingest()
    wait_for(lambda: any("private_connected" in d["reasons"] for d in system(ingest.publisher, "reconciliation_done")),
             15, message="the first private reconciliation")
    sim.rate(account_rate=25)
    wait_for(lambda: len(ingest.publisher.frames(endpoint="private")) > 20, 10, message="pushes flowing")
    # the wallet call waits 1.5 s for Bybit's rate-limit reset: the reconciliation is slow
    sim.rest_fault("rate_limit", count=1, path="/v5/account/wallet-balance", reset_ms=1500)
    n_calls, n_done = len(sim.rest_log()), len(system(ingest.publisher, "reconciliation_done"))
    sim.drop("private")
    wait_for(lambda: len(system(ingest.publisher, "reconciliation_done")) > n_done, 15, message="reconciled")
    sim.rate(account_rate=0)
    truth = sim.account()
    wait_for(lambda: converged(ingest.publisher, truth), 10, message="nothing lost")
    started_ms = next(c["at_ms"] for c in sim.rest_log()[n_calls:] if c["path"] == "/v5/market/time")
    items = list(ingest.publisher.items)
    first_rest = next(i for i, e in enumerate(items) if e.kind == "rest" and e.recv_ns // 1_000_000 >= started_ms)
    during = [e for e in items[:first_rest] if e.kind == "frame" and e.endpoint == "private"
              and e.recv_ns // 1_000_000 > started_ms + 5]
    assert during, "no push went out while the reconciliation waited on REST"
    # handed off when received: ingest's receive time and the order of hand-off agree
    assert all(e.recv_ns // 1_000_000 < items[first_rest].recv_ns // 1_000_000 for e in during)
    assert "held" not in ingest.status()["reconciliation"]


def test_a_coin_that_went_to_zero_is_reconciled_to_zero(start_ingest, sim, rec_db):
    """Bybit's wallet answer leaves zero coins out unless asked by name: a coin known non-zero
    is asked for by name, so its zero balance reaches both downstreams."""
    import psycopg2

    conn = psycopg2.connect(rec_db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO balances (account_type, coin, wallet_balance, equity, exchange_ts, raw)"
                        " VALUES ('UNIFIED', 'BTC', 0.5, 0.5, 1, '{}')")
        sim.account_step(5)
        n = len(sim.rest_log())
        ingest = start_ingest()
        wait_for(lambda: system(ingest.publisher, "reconciliation_done"), 15, message="reconciliation done")
        calls = [c for c in sim.rest_log()[n:] if c["path"] == "/v5/account/wallet-balance"]
        assert any("coin=BTC" in c["query"] for c in calls), calls
        wallets = [w for w in rest_records(ingest.publisher, "wallet")]
        btc = [c for w in wallets for c in w["coin"] if c["coin"] == "BTC"]
        assert btc and btc[-1]["walletBalance"] in ("0", "0.0", "0.00000000"), btc
        assert rest_records(ingest.persister, "wallet") == wallets
    finally:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM balances")
        conn.close()
