"""Pure row builders: Bybit private pushes and REST records -> table rows.

No I/O here. Amounts become ``Decimal`` (never float), timestamps ``int`` ms.
A record that cannot be built raises ``RowError``; the frame-level helpers
collect those per record so one bad object never hides its neighbours.

Each ``Row`` carries its table, primary key and a *rank*: of two rows with the
same key the one with the greater-or-equal rank is the newer state. The same
rule is applied in memory (``persister.pending``) and in SQL (``persister.sink``),
so the final state does not depend on the order rows arrive in.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import orjson

BALANCES, ORDERS, EXECUTIONS, POSITIONS = "balances", "orders", "executions", "positions"
TABLES = (BALANCES, ORDERS, EXECUTIONS, POSITIONS)

# Column order of each table's row tuple: the COPY/INSERT order in the sink.
COLUMNS: dict[str, tuple[str, ...]] = {
    BALANCES: ("account_type", "coin", "wallet_balance", "equity", "usd_value", "locked",
               "unrealised_pnl", "cum_realised_pnl", "borrow_amount", "exchange_ts", "source",
               "event_id", "raw"),
    ORDERS: ("order_id", "order_link_id", "category", "symbol", "side", "order_type", "order_status",
             "is_open", "price", "qty", "avg_price", "leaves_qty", "cum_exec_qty", "cum_exec_value",
             "created_time", "updated_time", "source", "event_id", "raw"),
    EXECUTIONS: ("exec_id", "order_id", "order_link_id", "category", "symbol", "side", "exec_type",
                 "exec_price", "exec_qty", "exec_value", "exec_fee", "is_maker", "exec_time", "seq",
                 "source", "event_id", "raw"),
    POSITIONS: ("category", "symbol", "position_idx", "side", "size", "entry_price", "mark_price",
                "leverage", "unrealised_pnl", "cum_realised_pnl", "liq_price", "position_status",
                "updated_time", "seq", "source", "event_id", "raw"),
}
KEYS: dict[str, tuple[str, ...]] = {
    BALANCES: ("account_type", "coin"),
    ORDERS: ("order_id",),
    EXECUTIONS: ("exec_id",),
    POSITIONS: ("category", "symbol", "position_idx"),
}

# docs/bybit.md#orders. Triggered is a momentary step from Untriggered to New: still open.
OPEN_STATUSES = frozenset({"New", "PartiallyFilled", "Untriggered", "Triggered"})
TERMINAL_STATUSES = frozenset({"Filled", "Cancelled", "Rejected", "PartiallyFilledCanceled", "Deactivated"})

SOURCES = ("ws", "ws_fast", "rest")
CATEGORIES = ("spot", "linear", "inverse", "option")


class RowError(ValueError):
    """A record that cannot become a row; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Row:
    table: str
    key: tuple
    rank: tuple          # compare with >=: the greater (or equal, later) row is the newer state
    values: tuple        # in COLUMNS[table] order
    event_id: str

    @property
    def raw(self) -> str:
        return self.values[-1]


@dataclass(frozen=True, slots=True)
class BadRecord:
    table: str
    event_id: str
    error: str
    record: object


# --- field parsing -------------------------------------------------------------

def _dec(rec: dict, name: str) -> Decimal | None:
    value = rec.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RowError(f"{name}: expected a decimal string, got {value!r}")
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise RowError(f"{name}: not a decimal: {value!r}") from None
    if not d.is_finite():
        raise RowError(f"{name}: not a finite decimal: {value!r}")
    return d


def _ms(rec: dict, name: str, required: bool = True) -> int | None:
    value = rec.get(name)
    if value is None or value == "":
        if required:
            raise RowError(f"{name}: missing")
        return None
    if isinstance(value, bool):
        raise RowError(f"{name}: expected ms, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise RowError(f"{name}: expected ms (int or digit string), got {value!r}")


def _text(rec: dict, name: str, required: bool = False) -> str | None:
    value = rec.get(name)
    if value is None or value == "":
        if required:
            raise RowError(f"{name}: missing")
        return None
    if not isinstance(value, str):
        raise RowError(f"{name}: expected a string, got {value!r}")
    return value


def _int(rec: dict, name: str, required: bool = False) -> int | None:
    value = rec.get(name)
    if value is None or value == "":
        if required:
            raise RowError(f"{name}: missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowError(f"{name}: expected an integer, got {value!r}")
    return value


def _bool(rec: dict, name: str) -> bool | None:
    value = rec.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, bool):
        raise RowError(f"{name}: expected a boolean, got {value!r}")
    return value


def _category(rec: dict, default: str | None) -> str:
    value = rec.get("category") or default
    if value not in CATEGORIES:
        raise RowError(f"category: expected one of {', '.join(CATEGORIES)}, got {value!r}")
    return value


def _raw(rec: dict) -> str:
    return orjson.dumps(rec).decode()


# --- one record -> one row ------------------------------------------------------

def order_row(rec: dict, source: str, event_id: str, category: str | None = None) -> Row:
    if not isinstance(rec, dict):
        raise RowError(f"order: expected an object, got {type(rec).__name__}")
    order_id = _text(rec, "orderId", required=True)
    status = _text(rec, "orderStatus", required=True)
    if status in TERMINAL_STATUSES:
        is_open = False
    elif status in OPEN_STATUSES:
        is_open = True
    else:
        raise RowError(f"orderStatus: unknown value {status!r}")
    updated = _ms(rec, "updatedTime")
    values = (order_id, _text(rec, "orderLinkId"), _category(rec, category), _text(rec, "symbol", True),
              _text(rec, "side"), _text(rec, "orderType"), status, is_open, _dec(rec, "price"),
              _dec(rec, "qty"), _dec(rec, "avgPrice"), _dec(rec, "leavesQty"), _dec(rec, "cumExecQty"),
              _dec(rec, "cumExecValue"), _ms(rec, "createdTime", required=False), updated, source,
              event_id, _raw(rec))
    # A terminal status outranks any open one whatever the timestamps (cancel/fill races: docs/bybit.md#orders).
    return Row(ORDERS, (order_id,), (0 if is_open else 1, updated), values, event_id)


def execution_row(rec: dict, source: str, event_id: str, category: str | None = None) -> Row:
    if not isinstance(rec, dict):
        raise RowError(f"execution: expected an object, got {type(rec).__name__}")
    exec_id = _text(rec, "execId", required=True)
    # Funding, delivery and settlement executions may carry no order id.
    values = (exec_id, _text(rec, "orderId") or "", _text(rec, "orderLinkId"),
              _category(rec, category), _text(rec, "symbol", True), _text(rec, "side"), _text(rec, "execType"),
              _dec(rec, "execPrice"), _dec(rec, "execQty"), _dec(rec, "execValue"), _dec(rec, "execFee"),
              _bool(rec, "isMaker"), _ms(rec, "execTime"), _int(rec, "seq"), source, event_id, _raw(rec))
    # Executions never change; a full record only completes one seen on execution.fast.
    return Row(EXECUTIONS, (exec_id,), (0 if source == "ws_fast" else 1,), values, event_id)


def position_row(rec: dict, source: str, event_id: str, category: str | None = None) -> Row:
    if not isinstance(rec, dict):
        raise RowError(f"position: expected an object, got {type(rec).__name__}")
    cat = _category(rec, category)
    symbol = _text(rec, "symbol", True)
    idx = _int(rec, "positionIdx", required=True)
    updated = _ms(rec, "updatedTime")
    # WS calls the entry price entryPrice, REST avgPrice (docs/bybit.md#positions).
    entry = _dec(rec, "entryPrice") if "entryPrice" in rec else _dec(rec, "avgPrice")
    values = (cat, symbol, idx, _text(rec, "side"), _dec(rec, "size"), entry, _dec(rec, "markPrice"),
              _dec(rec, "leverage"), _dec(rec, "unrealisedPnl"), _dec(rec, "cumRealisedPnl"),
              _dec(rec, "liqPrice"), _text(rec, "positionStatus"), updated, _int(rec, "seq"), source,
              event_id, _raw(rec))
    return Row(POSITIONS, (cat, symbol, idx), (updated,), values, event_id)


def balance_rows(account: dict, exchange_ts: int, source: str, event_id: str) -> list[Row]:
    """One wallet object (an account with ``coin[]``) -> one row per coin present."""
    if not isinstance(account, dict):
        raise RowError(f"wallet: expected an object, got {type(account).__name__}")
    account_type = _text(account, "accountType", required=True)
    coins = account.get("coin")
    if not isinstance(coins, list):
        raise RowError(f"coin: expected a list, got {coins!r}")
    rows = []
    for c in coins:
        if not isinstance(c, dict):
            raise RowError(f"coin: expected an object, got {c!r}")
        coin = _text(c, "coin", required=True)
        values = (account_type, coin, _dec(c, "walletBalance"), _dec(c, "equity"), _dec(c, "usdValue"),
                  _dec(c, "locked"), _dec(c, "unrealisedPnl"), _dec(c, "cumRealisedPnl"),
                  _dec(c, "borrowAmount"), exchange_ts, source, event_id, _raw(c))
        rows.append(Row(BALANCES, (account_type, coin), (exchange_ts,), values, event_id))
    return rows


# --- a whole frame / REST payload -----------------------------------------------

_BUILDERS = {ORDERS: order_row, EXECUTIONS: execution_row, POSITIONS: position_row}
_TOPIC_TABLE = {"order": ORDERS, "execution": EXECUTIONS, "position": POSITIONS, "wallet": BALANCES}


def table_for_topic(topic: str) -> str | None:
    """``order.linear`` -> ``orders``; None for private topics that are not persisted (greeks, dcp)."""
    return _TOPIC_TABLE.get(topic.split(".", 1)[0])


def _records(table: str, items: list, source: str, event_id: str, exchange_ts: int | None,
             category: str | None) -> tuple[list[Row], list[BadRecord]]:
    rows: list[Row] = []
    bad: list[BadRecord] = []
    for item in items:
        try:
            if table == BALANCES:
                rows.extend(balance_rows(item, exchange_ts, source, event_id))
            else:
                rows.append(_BUILDERS[table](item, source, event_id, category))
        except RowError as exc:
            bad.append(BadRecord(table, event_id, str(exc), item))
    return rows, bad


def rows_from_frame(frame: dict, event_id: str) -> tuple[list[Row], list[BadRecord]]:
    """A parsed private push ``{"topic", "creationTime", "data": [...]}`` -> rows.

    Raises RowError when the frame as a whole is unusable (no data list, unknown topic).
    """
    if not isinstance(frame, dict):
        raise RowError("frame: expected a JSON object")
    topic = frame.get("topic")
    if not isinstance(topic, str):
        raise RowError(f"topic: expected a string, got {topic!r}")
    table = table_for_topic(topic)
    if table is None:
        raise RowError(f"topic: {topic!r} is not persisted")
    data = frame.get("data")
    if not isinstance(data, list):
        raise RowError(f"data: expected a list, got {type(data).__name__}")
    exchange_ts = _ms(frame, "creationTime") if table == BALANCES else None
    source = "ws_fast" if topic.startswith("execution.fast") else "ws"
    return _records(table, data, source, event_id, exchange_ts, None)


def rows_from_rest(body: dict, event_id: str) -> tuple[list[Row], list[BadRecord]]:
    """A reconciliation payload (docs/internals.md, kind ``rest``) -> rows.

    ``{"topic": "order"|"execution"|"position"|"wallet", "category": ..., "list": [...],
    "fetched_at_ms": int}``; ``list`` holds Bybit's REST records unchanged.
    """
    if not isinstance(body, dict):
        raise RowError("rest: expected a JSON object")
    topic = body.get("topic")
    table = _TOPIC_TABLE.get(topic) if isinstance(topic, str) else None
    if table is None:
        raise RowError(f"topic: expected order, execution, position or wallet, got {topic!r}")
    items = body.get("list")
    if not isinstance(items, list):
        raise RowError(f"list: expected a list, got {type(items).__name__}")
    fetched = _ms(body, "fetched_at_ms")
    category = body.get("category")
    if table != BALANCES and category is not None and category not in CATEGORIES:
        raise RowError(f"category: expected one of {', '.join(CATEGORIES)}, got {category!r}")
    return _records(table, items, "rest", event_id, fetched, category)
