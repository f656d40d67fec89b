"""/api/v1/balances and /api/v1/orders: account state as the persister keeps it.
Amounts leave PostgreSQL as text, so they are exact decimal strings, never floats."""
from __future__ import annotations

import psycopg2.extras
from flask_openapi3 import APIBlueprint, Tag

from .db import get_db
from .models import API_KEY_SECURITY, V1_ERRORS, Balance, BalanceList, BalanceQuery, Order, OrderPage, OrderQuery

tag = Tag(name="account", description="Latest balances and order states from PostgreSQL")
bp = APIBlueprint("account", __name__, url_prefix="/api/v1", abp_tags=[tag], abp_security=API_KEY_SECURITY,
                   abp_responses=V1_ERRORS)

_BALANCE_AMOUNTS = ("wallet_balance", "equity", "usd_value", "locked", "unrealised_pnl",
                    "cum_realised_pnl", "borrow_amount")
_ORDER_AMOUNTS = ("price", "qty", "avg_price", "leaves_qty", "cum_exec_qty", "cum_exec_value")


def _select(columns: tuple[str, ...], amounts: tuple[str, ...]) -> str:
    return ", ".join(f"{c}::text AS {c}" if c in amounts else c for c in columns)


def _cur():
    return get_db().cursor(cursor_factory=psycopg2.extras.RealDictCursor)


@bp.get("/balances", responses={200: BalanceList}, operation_id="list_balances",
        summary="Latest balance per account type and coin")
def balances(query: BalanceQuery):
    clauses, args = [], []
    for column in ("account_type", "coin"):
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"{column} = %s")
            args.append(value)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    columns = tuple(Balance.model_fields)
    with _cur() as cur:
        cur.execute(f"SELECT {_select(columns, _BALANCE_AMOUNTS)} FROM balances{where} "
                    "ORDER BY account_type, coin LIMIT 10000", args)
        rows = cur.fetchall()
    return {"items": [Balance.model_validate(r).model_dump(mode="json") for r in rows]}


@bp.get("/orders", responses={200: OrderPage}, operation_id="list_orders",
        summary="Latest state per order, newest first")
def orders(query: OrderQuery):
    """Filters combine with AND; ``open=true`` lists orders still working. Pages with
    ``limit``/``offset``; ``next_offset`` is null on the last page."""
    clauses, args = [], []
    for column, value in (("order_status", query.status), ("symbol", query.symbol),
                          ("category", query.category), ("is_open", query.open)):
        if value is not None:
            clauses.append(f"{column} = %s")
            args.append(value)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    columns = tuple(Order.model_fields)
    with _cur() as cur:
        cur.execute(f"SELECT {_select(columns, _ORDER_AMOUNTS)}, count(*) OVER () AS total FROM orders{where} "
                    "ORDER BY updated_time DESC, order_id LIMIT %s OFFSET %s", (*args, query.limit, query.offset))
        rows = cur.fetchall()
        if rows:
            total = rows[0]["total"]
        else:
            cur.execute(f"SELECT count(*) AS total FROM orders{where}", args)
            total = cur.fetchone()["total"]
    nxt = query.offset + len(rows)
    return {"items": [Order.model_validate(r).model_dump(mode="json") for r in rows], "total": total,
            "limit": query.limit, "offset": query.offset, "next_offset": nxt if rows and nxt < total else None}
