"""The simulator's signed REST account endpoints (docs/bybit.md#rest-for-reconciliation): auth errors as Bybit gives
them, shapes of tests/frames/rest_*.json, cursor paging, scripted faults, ground truth."""
from __future__ import annotations

import time

import httpx
import pytest

from bybitsim.rest import sign
from tests.sim.conftest import KEY, SECRET, frame


def call(sim, path: str, query: str = "", key: str = KEY, secret: str = SECRET, ts: int | None = None,
         window: str = "5000", signed: bool = True) -> httpx.Response:
    headers = {}
    if signed:
        ts = int(time.time() * 1000) if ts is None else ts
        headers = {"X-BAPI-API-KEY": key, "X-BAPI-TIMESTAMP": str(ts), "X-BAPI-RECV-WINDOW": window,
                   "X-BAPI-SIGN": sign(secret, f"{ts}{key}{window}{query}")}
    return httpx.get(f"{sim.rest_url}{path}" + (f"?{query}" if query else ""), headers=headers, timeout=5)


def pages(sim, path: str, query: str) -> list[dict]:
    out, cursor = [], ""
    for _ in range(100):
        q = query + (f"&cursor={cursor}" if cursor else "")
        body = call(sim, path, q).json()
        assert body["retCode"] == 0, body
        out.extend(body["result"]["list"])
        cursor = body["result"]["nextPageCursor"]
        if not cursor:
            return out
    raise AssertionError("paging did not end")


@pytest.fixture(scope="module")
def traded(sim):
    sim.account_step(80)
    return sim.account()


def test_auth_errors_are_bybits(sim):
    q = "accountType=UNIFIED"
    assert call(sim, "/v5/account/wallet-balance", q, key="other").json()["retCode"] == 10003
    assert call(sim, "/v5/account/wallet-balance", q, signed=False).json()["retCode"] == 10003
    bad = call(sim, "/v5/account/wallet-balance", q, secret="wrong")
    body = bad.json()
    assert bad.status_code == 200 and body["retCode"] == 10004
    assert body["retMsg"].startswith("error sign! origin_string[") and f"{KEY}5000{q}]" in body["retMsg"]
    now = int(time.time() * 1000)
    assert call(sim, "/v5/account/wallet-balance", q, ts=now + 1500).json()["retCode"] == 10002    # ahead > 1 s
    late = call(sim, "/v5/account/wallet-balance", q, ts=now - 6000).json()
    assert late["retCode"] == 10002 and "recv_window[5000]" in late["retMsg"]
    assert call(sim, "/v5/account/wallet-balance", q, ts=now - 6000, window="10000").json()["retCode"] == 0
    assert set(body) == set(frame("rest_error_sign"))


def test_shapes_match_the_recorded_frames(sim, traded):
    cases = [("/v5/account/wallet-balance", "accountType=UNIFIED", "rest_wallet_balance"),
             ("/v5/order/realtime", "category=linear&settleCoin=USDT", "rest_order_realtime"),
             ("/v5/position/list", "category=linear&settleCoin=USDT", "rest_position_list"),
             ("/v5/execution/list", "category=linear", "rest_execution_list"),
             ("/v5/market/instruments-info", "category=linear", "rest_instruments_info")]
    for path, query, name in cases:
        body = call(sim, path, query).json()
        want = frame(name)
        assert set(body) == set(want) and body["retCode"] == 0, path
        assert set(body["result"]) == set(want["result"]), path
        got, ref = body["result"]["list"], want["result"]["list"]
        assert got, path
        missing = set(ref[0]) - set(got[0])
        assert not missing or name == "rest_instruments_info", (path, missing)
        if name != "rest_instruments_info":
            extra = set(got[0]) - set(ref[0]) - {"execFeeV2", "cumFeeDetail"}
            assert not extra, (path, extra)
    pos = call(sim, "/v5/position/list", "category=linear&settleCoin=USDT").json()["result"]["list"][0]
    assert "avgPrice" in pos and "entryPrice" not in pos


def test_lists_equal_the_ground_truth_across_pages(sim, traded):
    truth = sim.account()
    execs = pages(sim, "/v5/execution/list", "category=linear&limit=7")
    assert sorted(e["execId"] for e in execs) == sorted(e["execId"] for e in truth["executions"])
    times = [int(e["execTime"]) for e in execs]
    assert times == sorted(times, reverse=True)
    open_ = pages(sim, "/v5/order/realtime", "category=linear&limit=2&settleCoin=USDT")
    assert sorted(o["orderId"] for o in open_) == sorted(truth["open_order_ids"])
    history = pages(sim, "/v5/order/history", "category=linear&limit=5&settleCoin=USDT")
    assert sorted(o["orderId"] for o in history) == sorted(o["orderId"] for o in truth["orders"])
    closed = pages(sim, "/v5/order/realtime", "category=linear&openOnly=1&settleCoin=USDT")
    assert {o["orderStatus"] for o in closed} <= {"Filled", "Cancelled"}
    one = truth["orders"][0]
    got = call(sim, "/v5/order/realtime", f"category=linear&orderId={one['orderId']}").json()["result"]["list"]
    assert [o["orderStatus"] for o in got] == [one["orderStatus"]]
    nonzero = pages(sim, "/v5/position/list", "category=linear&settleCoin=USDT")
    assert all(p["size"] != "0" for p in nonzero)
    flat_or_not = call(sim, "/v5/position/list", "category=linear&symbol=BTCUSDT").json()["result"]["list"]
    assert [p["symbol"] for p in flat_or_not] == ["BTCUSDT"]
    wallet = call(sim, "/v5/account/wallet-balance", "accountType=UNIFIED").json()["result"]["list"][0]
    assert wallet["totalWalletBalance"] == truth["balances"]["totalWalletBalance"]


def test_time_ranges_other_categories_and_bad_params(sim, traded):
    execs = sim.account()["executions"]
    mid = int(execs[len(execs) // 2]["execTime"])
    since = pages(sim, "/v5/execution/list", f"category=linear&startTime={mid}")
    assert since and all(int(e["execTime"]) >= mid for e in since)
    assert call(sim, "/v5/execution/list", "category=inverse").json()["result"]["list"] == []
    assert call(sim, "/v5/order/realtime", "category=spot").json()["result"]["list"] == []
    for path, query in [("/v5/order/realtime", "category=linear"), ("/v5/position/list", "category=spot"),
                        ("/v5/execution/list", "category=linear&limit=101"),
                        ("/v5/execution/list", "category=linear&cursor=zzz"),
                        ("/v5/account/wallet-balance", "accountType=CONTRACT")]:
        assert call(sim, path, query).json()["retCode"] == 10001, (path, query)


def test_scripted_faults_hit_the_next_calls_then_stop(sim):
    q = "accountType=UNIFIED"
    path = "/v5/account/wallet-balance"
    sim.rest_fault("rate_limit", count=2, path=path, reset_ms=250)
    first = call(sim, path, q)
    assert first.json()["retCode"] == 10006 and first.json()["retMsg"] == "Too many visits!"
    reset = int(first.headers["X-Bapi-Limit-Reset-Timestamp"])
    assert 0 < reset - first.json()["time"] <= 250
    assert call(sim, path, q).json()["retCode"] == 10006
    assert call(sim, path, q).json()["retCode"] == 0
    sim.rest_fault("rate_limit", reset_ms=None)
    nohdr = call(sim, "/v5/execution/list", "category=linear")
    assert nohdr.json()["retCode"] == 10006 and "X-Bapi-Limit-Reset-Timestamp" not in nohdr.headers
    sim.rest_fault("timestamp")
    assert call(sim, path, q).json()["retCode"] == 10002
    sim.rest_fault("retcode", ret_code=10016)
    assert call(sim, path, q).json()["retCode"] == 10016
    sim.rest_fault("http", status=503, path="/v5/market/time")
    assert call(sim, path, q).json()["retCode"] == 0               # another path: untouched
    assert httpx.get(f"{sim.rest_url}/v5/market/time").status_code == 503
    log = sim.rest_log()
    assert [c["fault"] for c in log[-3:]] == ["retcode", None, "http"]
    sim.rest_fault("http", count=5)
    sim.reset()
    assert call(sim, path, q).status_code == 200


def test_account_step_moves_the_account_with_nobody_connected(sim):
    before = sim.account()["events"]
    assert sim.account_step(5)["events"] == before + 5
    with pytest.raises(Exception):
        sim.account_step(-1)


def test_instruments_page_with_a_cursor(sim):
    both = pages(sim, "/v5/market/instruments-info", "category=linear&limit=1")
    assert [i["symbol"] for i in both] == ["BTCUSDT", "ETHUSDT"] and all(i["status"] == "Trading" for i in both)
    one = call(sim, "/v5/market/instruments-info", "category=linear&symbol=ETHUSDT", signed=False).json()
    assert [i["symbol"] for i in one["result"]["list"]] == ["ETHUSDT"]
    spot = call(sim, "/v5/market/instruments-info", "category=spot", signed=False).json()["result"]
    assert "nextPageCursor" not in spot                      # spot does not paginate (docs/bybit.md#instruments)
