"""Pure row building from the recorded frames: exact decimals, keys, ranks, bad records."""
from __future__ import annotations

import copy
from decimal import Decimal

import orjson
import pytest

from persister.rows import (BALANCES, COLUMNS, EXECUTIONS, ORDERS, POSITIONS, RowError, rows_from_frame,
                            rows_from_rest)
from tests.persister.conftest import frame


def values(row) -> dict:
    return dict(zip(COLUMNS[row.table], row.values))


def rest_body(name: str, topic: str) -> dict:
    f = frame(name)
    return {"topic": topic, "category": f["result"].get("category"), "list": f["result"]["list"],
            "fetched_at_ms": f["time"]}


def test_order_frame():
    rows, bad = rows_from_frame(frame("order"), "ev1")
    assert bad == [] and len(rows) == 1
    row = rows[0]
    v = values(row)
    assert row.table == ORDERS and row.key == ("1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b",)
    assert v["price"] == Decimal("118000.00") and str(v["price"]) == "118000.00"
    assert v["qty"] == Decimal("0.050") and v["cum_exec_value"] == Decimal("2360")
    assert v["order_status"] == "PartiallyFilled" and v["is_open"] is True
    assert v["updated_time"] == 1785000008009 and v["created_time"] == 1785000007001
    assert v["source"] == "ws" and v["event_id"] == "ev1"
    assert orjson.loads(row.raw)["orderLinkId"] == "gw-20260725-000123"
    assert row.rank == (0, 1785000008009)


def test_terminal_order_outranks_open_whatever_the_time():
    f = frame("order")
    f["data"][0].update(orderStatus="Filled", updatedTime="1")
    filled = rows_from_frame(f, "e")[0][0]
    newer_open = rows_from_frame(frame("order"), "e")[0][0]
    assert filled.rank > newer_open.rank and values(filled)["is_open"] is False


def test_execution_frames():
    rows, bad = rows_from_frame(frame("execution"), "ev")
    v = values(rows[0])
    assert bad == [] and rows[0].table == EXECUTIONS
    assert v["exec_fee"] == Decimal("0.4248") and v["exec_qty"] == Decimal("0.020")
    assert v["is_maker"] is True and v["seq"] == 412345680001 and v["exec_time"] == 1785000008009
    fast, _ = rows_from_frame(frame("execution_fast"), "ev2")
    assert values(fast[0])["source"] == "ws_fast" and values(fast[0])["exec_fee"] is None
    assert rows[0].rank > fast[0].rank   # the full record completes the fast one


def test_position_ws_and_rest_entry_price():
    ws = values(rows_from_frame(frame("position"), "e")[0][0])
    rest = values(rows_from_rest(rest_body("rest_position_list", "position"), "r")[0][0])
    assert ws["entry_price"] == rest["entry_price"] == Decimal("118000")
    assert ws["liq_price"] == Decimal("106812.4") and ws["cum_realised_pnl"] == Decimal("-153.2219")
    assert rest["category"] == "linear" and rest["source"] == "rest"


def test_wallet_one_row_per_coin():
    f = frame("wallet")
    usdc = dict(f["data"][0]["coin"][0], coin="USDC", walletBalance="0.000000001")
    f["data"][0]["coin"].append(usdc)
    rows, bad = rows_from_frame(f, "w")
    assert bad == [] and [r.key for r in rows] == [("UNIFIED", "USDT"), ("UNIFIED", "USDC")]
    assert all(r.table == BALANCES and r.rank == (1785000008025,) for r in rows)
    assert values(rows[1])["wallet_balance"] == Decimal("0.000000001")
    assert values(rows[0])["equity"] == Decimal("20941.5577")


@pytest.mark.parametrize("name,topic,table", [("rest_order_realtime", "order", ORDERS),
                                              ("rest_execution_list", "execution", EXECUTIONS),
                                              ("rest_position_list", "position", POSITIONS),
                                              ("rest_wallet_balance", "wallet", BALANCES)])
def test_rest_payloads(name, topic, table):
    rows, bad = rows_from_rest(rest_body(name, topic), "r")
    assert bad == [] and len(rows) == 1 and rows[0].table == table
    assert values(rows[0])["source"] == "rest"


def test_rest_wallet_uses_fetch_time():
    row = rows_from_rest(rest_body("rest_wallet_balance", "wallet"), "r")[0][0]
    assert values(row)["exchange_ts"] == 1785000010000


@pytest.mark.parametrize("field,value,message", [
    ("price", "12abc", "price: not a decimal"),
    ("price", 1.5, "price: expected a decimal string"),
    ("price", "NaN", "not a finite decimal"),
    ("orderStatus", "Weird", "orderStatus: unknown value"),
    ("updatedTime", "", "updatedTime: missing"),
    ("updatedTime", "12:00", "updatedTime: expected ms"),
    ("orderId", None, "orderId: missing"),
    ("category", "futures", "category: expected one of"),
])
def test_bad_order_record_is_reported_and_neighbours_kept(field, value, message):
    f = frame("order")
    good = copy.deepcopy(f["data"][0])
    f["data"][0][field] = value
    f["data"].append(dict(good, orderId="other"))
    rows, bad = rows_from_frame(f, "ev")
    assert [r.key for r in rows] == [("other",)]
    assert len(bad) == 1 and message in bad[0].error and bad[0].event_id == "ev" and bad[0].table == ORDERS


def test_unusable_frames_raise():
    with pytest.raises(RowError):
        rows_from_frame({"topic": "order", "data": {}}, "e")
    with pytest.raises(RowError):
        rows_from_frame({"topic": "greeks", "data": []}, "e")
    with pytest.raises(RowError):
        rows_from_frame({"topic": "wallet", "data": []}, "e")   # no creationTime
    with pytest.raises(RowError):
        rows_from_rest({"topic": "order", "list": [], "category": "linear"}, "e")   # no fetched_at_ms


def test_funding_execution_without_order_id():
    f = frame("execution")
    f["data"][0].update(execType="Funding", orderId="", orderType="UNKNOWN")
    rows, bad = rows_from_frame(f, "e")
    assert bad == [] and values(rows[0])["order_id"] == "" and values(rows[0])["exec_type"] == "Funding"
