"""/api/v1/balances and /api/v1/orders over rows as the persister writes them."""
from __future__ import annotations

import json

import pytest


@pytest.fixture
def account_rows(clean_db):
    with clean_db.cursor() as cur:
        for acct, coin, bal in (("UNIFIED", "USDT", "1000.00000001"), ("UNIFIED", "BTC", "0.00000001"),
                                ("FUND", "USDT", "12345678901234567890.123456789")):
            cur.execute("INSERT INTO balances (account_type, coin, wallet_balance, equity, exchange_ts, raw) "
                        "VALUES (%s, %s, %s, %s, 1700000000000, '{}')", (acct, coin, bal, bal))
        for i, (sym, cat, status, is_open) in enumerate((("BTCUSDT", "linear", "New", True),
                                                         ("BTCUSDT", "linear", "Filled", False),
                                                         ("ETHUSDT", "spot", "PartiallyFilled", True),
                                                         ("ETHUSDT", "linear", "Cancelled", False))):
            cur.execute("INSERT INTO orders (order_id, category, symbol, side, order_status, is_open, price, qty, "
                        "updated_time, raw) VALUES (%s, %s, %s, 'Buy', %s, %s, '118250.40', '0.001', %s, '{}')",
                        (f"o{i}", cat, sym, status, is_open, 1700000000000 + i))
    return clean_db


def test_balances_amounts_are_exact_decimal_strings(client, account_rows):
    resp = client.get("/api/v1/balances")
    assert resp.status_code == 200
    items = resp.get_json()["items"]
    assert [(b["account_type"], b["coin"]) for b in items] == [("FUND", "USDT"), ("UNIFIED", "BTC"), ("UNIFIED", "USDT")]
    by_coin = {(b["account_type"], b["coin"]): b for b in items}
    assert by_coin[("UNIFIED", "BTC")]["wallet_balance"] == "0.00000001"
    assert by_coin[("FUND", "USDT")]["equity"] == "12345678901234567890.123456789"
    assert by_coin[("UNIFIED", "USDT")]["usd_value"] is None
    assert '"wallet_balance":"1000.00000001"' in resp.get_data(as_text=True).replace(" ", "")


def test_balance_filters(client, account_rows):
    assert [b["coin"] for b in client.get("/api/v1/balances?account_type=UNIFIED").get_json()["items"]] == ["BTC", "USDT"]
    assert [b["account_type"] for b in client.get("/api/v1/balances?coin=USDT").get_json()["items"]] == ["FUND", "UNIFIED"]
    assert client.get("/api/v1/balances?coin=XRP").get_json()["items"] == []
    assert client.get("/api/v1/balances?coin='%20OR%201=1--").get_json()["items"] == []
    assert client.get("/api/v1/balances?currency=USDT").status_code == 422


def test_orders_filters_and_pagination(client, account_rows):
    def ids(qs=""):
        resp = client.get(f"/api/v1/orders{qs}")
        assert resp.status_code == 200, resp.get_json()
        return [o["order_id"] for o in resp.get_json()["items"]]

    assert ids() == ["o3", "o2", "o1", "o0"]                       # newest first
    assert ids("?open=true") == ["o2", "o0"]
    assert ids("?open=false") == ["o3", "o1"]
    assert ids("?symbol=BTCUSDT") == ["o1", "o0"]
    assert ids("?category=spot") == ["o2"]
    assert ids("?status=Filled") == ["o1"]
    assert ids("?symbol=ETHUSDT&category=linear&open=false") == ["o3"]
    page = client.get("/api/v1/orders?limit=3").get_json()
    assert len(page["items"]) == 3 and page["total"] == 4 and page["next_offset"] == 3
    last = client.get("/api/v1/orders?limit=3&offset=3").get_json()
    assert [o["order_id"] for o in last["items"]] == ["o0"] and last["next_offset"] is None
    order = client.get("/api/v1/orders?status=New").get_json()["items"][0]
    assert order["price"] == "118250.40" and order["qty"] == "0.001" and order["is_open"] is True
    assert json.dumps(order).count("118250.4") == 1
    for bad in ("?open=maybe", "?category=futures", "?limit=0", "?sort=price"):
        assert client.get(f"/api/v1/orders{bad}").status_code == 422


def test_empty_tables(client, clean_db):
    assert client.get("/api/v1/balances").get_json() == {"items": []}
    assert client.get("/api/v1/orders").get_json() == {"items": [], "total": 0, "limit": 100, "offset": 0,
                                                       "next_offset": None}
