"""Bybit v5 REST for reconciliation (docs/bybit.md#rest-for-reconciliation), served from the simulated account.

Signed requests are checked as Bybit does (docs/bybit.md#signing): key (10003), timestamp within
``[server - recv_window, server + 1000)`` (10002), HMAC over
``timestamp + key + recv_window + queryString`` (10004, echoing the origin string).
Errors are HTTP 200 with ``retCode != 0`` (9.2). Lists page with ``nextPageCursor``;
a cursor names the last record returned, so a page never shifts when the account moves.

``handle`` is pure apart from reading the account: the caller passes the clock and
consumes scripted faults (``RestFault``) before calling it.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import parse_qsl, quote, unquote

SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000
ACCOUNT_CATEGORY = "linear"               # the simulated account trades linear USDT perpetuals only
PRIVATE_PATHS = frozenset({"/v5/account/wallet-balance", "/v5/order/realtime", "/v5/order/history",
                           "/v5/position/list", "/v5/execution/list"})
PUBLIC_PATHS = frozenset({"/v5/market/instruments-info"})     # /v5/market/time: httpapi.server_time
PATHS = PRIVATE_PATHS | PUBLIC_PATHS
CATEGORIES = ("spot", "linear", "inverse", "option")
OPEN = ("New", "PartiallyFilled", "Untriggered")
FAULT_KINDS = ("rate_limit", "timestamp", "retcode", "http")
# WS-only fields the REST records do not carry (shapes of tests/frames/rest_*.json).
_ORDER_WS_ONLY = ("category", "feeCurrency", "closedPnl", "brokerOrderPrice", "slippageToleranceType",
                  "slippageTolerance", "rpiTakerAccess", "rpiMatchedQty")
_EXEC_WS_ONLY = ("category", "isLeverage", "execPnl", "marketUnit")
_POS_WS_ONLY = ("category",)


class ParamError(ValueError):
    """A request parameter Bybit would refuse with retCode 10001."""


@dataclass
class RestFault:
    """A scripted failure for the next ``count`` matching calls (``path`` None: any REST path)."""
    kind: str                   # rate_limit | timestamp | retcode | http
    count: int = 1
    path: str | None = None
    ret_code: int = 10016       # kind retcode
    status: int = 502           # kind http
    reset_ms: int | None = 300  # kind rate_limit: X-Bapi-Limit-Reset-Timestamp = now + reset_ms; None = no header

    def matches(self, path: str) -> bool:
        return self.count > 0 and (self.path is None or self.path == path)


def sign(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def envelope(ret_code: int, ret_msg: str, result: dict, now_ms: int) -> dict:
    return {"retCode": ret_code, "retMsg": ret_msg, "result": result, "retExtInfo": {}, "time": now_ms}


def check_auth(headers, query: str, api_key: str, api_secret: str, now_ms: int) -> tuple[int, str] | None:
    """None when the request is signed correctly, else (retCode, retMsg) as Bybit answers."""
    key = headers.get("X-BAPI-API-KEY") or ""
    if not key or not hmac.compare_digest(key.encode(), api_key.encode()):
        return 10003, "API key is invalid."
    ts_raw = headers.get("X-BAPI-TIMESTAMP") or ""
    window_raw = headers.get("X-BAPI-RECV-WINDOW") or "5000"
    if not ts_raw.isdigit() or not window_raw.isdigit():
        return 10002, (f"invalid request, please check your server timestamp or recv_window param. "
                       f"req_timestamp[{ts_raw}],server_timestamp[{now_ms}],recv_window[{window_raw}]")
    ts, window = int(ts_raw), int(window_raw)
    if not now_ms - window <= ts < now_ms + 1000:
        return 10002, (f"invalid request, please check your server timestamp or recv_window param. "
                       f"req_timestamp[{ts}],server_timestamp[{now_ms}],recv_window[{window}]")
    origin = f"{ts_raw}{key}{headers.get('X-BAPI-RECV-WINDOW') or ''}{query}"
    if not hmac.compare_digest((headers.get("X-BAPI-SIGN") or "").encode(), sign(api_secret, origin).encode()):
        return 10004, f"error sign! origin_string[{origin}]"
    return None


# -- paging --------------------------------------------------------------------------------

def _cursor(key: tuple) -> str:
    return quote(f"{key[0]}:{key[1]}", safe="")


def page(items: list[dict], key, limit: int, cursor: str) -> tuple[list[dict], str]:
    """Items sorted by ``key`` descending; the page after ``cursor``; the next cursor or ""."""
    ordered = sorted(items, key=key, reverse=True)
    if cursor:
        head, sep, tail = unquote(cursor).partition(":")
        if not sep or not head.lstrip("-").isdigit():
            raise ParamError(f"cursor: invalid value {cursor!r}")
        after = (int(head), tail)
        ordered = [it for it in ordered if key(it) < after]
    out = ordered[:limit]
    return out, _cursor(key(out[-1])) if len(ordered) > limit else ""


def _limit(q: dict, default: int, maximum: int) -> int:
    raw = q.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ParamError(f"limit: must be 1..{maximum}, got {raw!r}")
    return int(raw)


def _category(q: dict, allowed=CATEGORIES) -> str:
    cat = q.get("category")
    if cat not in allowed:
        raise ParamError(f"category: must be one of {', '.join(allowed)}, got {cat!r}")
    return cat


def _range(q: dict, now_ms: int) -> tuple[int, int]:
    start, end = q.get("startTime"), q.get("endTime")
    for name, v in (("startTime", start), ("endTime", end)):
        if v is not None and not v.isdigit():
            raise ParamError(f"{name}: expected ms, got {v!r}")
    if start is None and end is None:
        return now_ms - SEVEN_DAYS_MS, now_ms + 1
    if end is None:
        return int(start), int(start) + SEVEN_DAYS_MS
    if start is None:
        return int(end) - SEVEN_DAYS_MS, int(end)
    if int(end) < int(start) or int(end) - int(start) > SEVEN_DAYS_MS:
        raise ParamError("startTime/endTime: the range must be 0..7 days")
    return int(start), int(end)


def _settle(symbol: str) -> str:
    return "USDC" if symbol.endswith(("USDC", "PERP")) else "USDT"


def _match(rec: dict, q: dict, base_of) -> bool:
    if q.get("symbol") and rec["symbol"] != q["symbol"]:
        return False
    if q.get("settleCoin") and _settle(rec["symbol"]) != q["settleCoin"]:
        return False
    return not q.get("baseCoin") or base_of(rec["symbol"]) == q["baseCoin"]


def _strip(rec: dict, fields: tuple[str, ...], **extra) -> dict:
    out = {k: v for k, v in rec.items() if k not in fields}
    out.update(extra)
    return out


# -- endpoints -------------------------------------------------------------------------------

def _wallet(account, q, now_ms):
    if q.get("accountType") != "UNIFIED":
        raise ParamError(f"accountType: only UNIFIED is supported, got {q.get('accountType')!r}")
    wallet = account.wallet or account._wallet(now_ms)
    coins = wallet["coin"]
    if q.get("coin"):
        # Asked by name, a coin is answered even when the account holds none of it.
        wanted = q["coin"].split(",")
        have = {c["coin"]: c for c in coins}
        coins = [have.get(name) or _zero_coin(name) for name in dict.fromkeys(wanted)]
    else:
        # Without a coin list Bybit answers only coins with a balance or a liability.
        coins = [c for c in coins if any(Decimal(c.get(k) or "0") for k in ("walletBalance", "equity", "borrowAmount"))]
    return {"list": [{**wallet, "coin": [dict(c) for c in coins]}]}


def _zero_coin(name: str) -> dict:
    zero = {k: "0" for k in ("equity", "usdValue", "walletBalance", "borrowAmount", "accruedInterest",
                             "totalOrderIM", "totalPositionIM", "totalPositionMM", "unrealisedPnl",
                             "cumRealisedPnl", "bonus", "locked", "spotHedgingQty", "spotBorrow", "colRes")}
    return {"coin": name, **zero, "availableToWithdraw": "0", "availableToBorrow": "",
            "collateralSwitch": True, "marginCollateral": True}


def _order_key(o):
    return int(o["createdTime"]), o["orderId"]


def _orders(account, q, now_ms, history: bool):
    cat = _category(q, ("linear", "inverse", "spot", "option"))
    limit = _limit(q, 20, 50)
    ident = q.get("orderId") or q.get("orderLinkId")
    if cat == "linear" and not (ident or q.get("symbol") or q.get("baseCoin") or q.get("settleCoin")):
        raise ParamError("symbol, baseCoin or settleCoin is required for linear")
    orders = list(account.orders.values()) if cat == ACCOUNT_CATEGORY else []
    base_of = lambda s: account.market.instrument("linear", s).base   # noqa: E731
    if q.get("orderId"):
        orders = [o for o in orders if o["orderId"] == q["orderId"]]
    elif q.get("orderLinkId"):
        orders = [o for o in orders if o["orderLinkId"] == q["orderLinkId"]]
    else:
        orders = [o for o in orders if _match(o, q, base_of)]
        if history:
            start, end = _range(q, now_ms)
            orders = [o for o in orders if start <= int(o["createdTime"]) <= end]
            if q.get("orderStatus"):
                orders = [o for o in orders if o["orderStatus"] == q["orderStatus"]]
        elif q.get("openOnly", "0") == "1":
            closed = [o for o in orders if o["orderStatus"] not in OPEN]
            orders = sorted(closed, key=_order_key, reverse=True)[:500]
        else:
            orders = [o for o in orders if o["orderStatus"] in OPEN]
    items, cursor = page(orders, _order_key, limit, q.get("cursor", ""))
    return {"category": cat, "list": [_strip(o, _ORDER_WS_ONLY, basePrice="") for o in items],
            "nextPageCursor": cursor}


def _positions(account, q, now_ms):
    cat = _category(q, ("linear", "inverse", "option"))
    limit = _limit(q, 20, 200)
    if cat == "linear" and not (q.get("symbol") or q.get("settleCoin")):
        raise ParamError("symbol or settleCoin is required for linear")
    records = list(account.positions.values()) if cat == ACCOUNT_CATEGORY else []
    base_of = lambda s: account.market.instrument("linear", s).base   # noqa: E731
    records = [p for p in records if _match(p, q, base_of)]
    if not q.get("symbol"):
        records = [p for p in records if p["size"] != "0"]     # settleCoin alone: non-zero only
    key = lambda p: (int(p["updatedTime"]), p["symbol"])    # noqa: E731
    items, cursor = page(records, key, limit, q.get("cursor", ""))
    out = []
    for p in items:
        rec = _strip(p, _POS_WS_ONLY)
        rec["avgPrice"] = rec.pop("entryPrice")               # REST name (docs/bybit.md#positions)
        out.append(rec)
    return {"category": cat, "list": out, "nextPageCursor": cursor}


def _executions(account, q, now_ms):
    cat = _category(q)
    limit = _limit(q, 50, 100)
    execs = account.executions if cat == ACCOUNT_CATEGORY else []
    base_of = lambda s: account.market.instrument("linear", s).base   # noqa: E731
    if q.get("orderId"):
        execs = [e for e in execs if e["orderId"] == q["orderId"]]
    else:
        start, end = _range(q, now_ms)
        execs = [e for e in execs if start <= int(e["execTime"]) <= end and _match(e, q, base_of)]
    if q.get("execType"):
        execs = [e for e in execs if e["execType"] == q["execType"]]
    key = lambda e: (int(e["execTime"]), e["execId"])    # noqa: E731
    items, cursor = page(execs, key, limit, q.get("cursor", ""))
    return {"category": cat, "list": [_strip(e, _EXEC_WS_ONLY, execFeeV2="") for e in items],
            "nextPageCursor": cursor}


def _instruments(sim, q, now_ms):
    cat = _category(q)
    listed = sim.listed_symbols(cat)
    symbols = listed if listed is not None else (
        sim.symbols.in_category(cat) or (list(sim.account.symbols) if cat == "linear" else []))
    if q.get("symbol"):
        known = q["symbol"] in symbols if listed is not None else sim.symbols.allows(cat, q["symbol"])
        symbols = [q["symbol"]] if known else []
    out = []
    for sym in sorted(symbols):
        inst = sim.market.instrument(cat, sym)
        rec = {"symbol": sym, "status": "Trading", "baseCoin": inst.base,
               "quoteCoin": _settle(sym) if cat != "inverse" else "USD",
               "priceFilter": {"tickSize": str(inst.tick)},
               "lotSizeFilter": {"minOrderQty": str(inst.qty_step), "qtyStep": str(inst.qty_step)}}
        if cat in ("linear", "inverse"):
            rec.update(contractType="LinearPerpetual" if cat == "linear" else "InversePerpetual",
                       settleCoin=_settle(sym) if cat == "linear" else inst.base, launchTime="1585526400000",
                       deliveryTime="0", fundingInterval=480)
        out.append(rec)
    if cat == "spot":
        return {"category": cat, "list": out}              # spot does not paginate
    limit = _limit(q, 500, 1000)
    start = 0
    if q.get("cursor"):
        after = unquote(q["cursor"])   # the previous page's last symbol: right even if it was delisted since
        start = next((i for i, r in enumerate(out) if r["symbol"] > after), len(out))
    items = out[start:start + limit]
    more = start + limit < len(out)
    return {"category": cat, "list": items, "nextPageCursor": quote(items[-1]["symbol"]) if more else ""}


def handle(sim, path: str, query: str, headers, now_ms: int) -> tuple[int, dict, dict]:
    """One REST call -> (HTTP status, body, extra headers). ``path`` is one of PATHS."""
    limit_headers = {"X-Bapi-Limit": "50", "X-Bapi-Limit-Status": "49",
                     "X-Bapi-Limit-Reset-Timestamp": str(now_ms + 1000)}
    if path in PRIVATE_PATHS:
        refused = check_auth(headers, query, sim.opts.api_key, sim.opts.api_secret, now_ms)
        if refused:
            sim.count(f"rest_refused_{refused[0]}")
            return 200, envelope(refused[0], refused[1], {}, now_ms), {}
    q = dict(parse_qsl(query, keep_blank_values=True))
    account = sim.account
    try:
        if path == "/v5/market/instruments-info":
            result = _instruments(sim, q, now_ms)
        elif path == "/v5/account/wallet-balance":
            result = _wallet(account, q, now_ms)
        elif path in ("/v5/order/realtime", "/v5/order/history"):
            result = _orders(account, q, now_ms, history=path.endswith("history"))
        elif path == "/v5/position/list":
            result = _positions(account, q, now_ms)
        else:
            result = _executions(account, q, now_ms)
    except ParamError as exc:
        return 200, envelope(10001, f"params error: {exc}", {}, now_ms), limit_headers
    return 200, envelope(0, "OK", result, now_ms), limit_headers


def fault_response(fault: RestFault, now_ms: int) -> tuple[int, dict | bytes, dict]:
    """The answer a scripted fault gives instead of the real one."""
    if fault.kind == "rate_limit":
        headers = {"X-Bapi-Limit": "50", "X-Bapi-Limit-Status": "0"}
        if fault.reset_ms is not None:
            headers["X-Bapi-Limit-Reset-Timestamp"] = str(now_ms + fault.reset_ms)
        return 200, envelope(10006, "Too many visits!", {}, now_ms), headers
    if fault.kind == "timestamp":
        return 200, envelope(10002, "invalid request, please check your server timestamp or recv_window param. "
                             f"req_timestamp[{now_ms}],server_timestamp[{now_ms}],recv_window[5000]", {}, now_ms), {}
    if fault.kind == "retcode":
        return 200, envelope(fault.ret_code, f"scripted error {fault.ret_code}", {}, now_ms), {}
    return fault.status, f"<html><body>{fault.status} simulated upstream error</body></html>".encode(), {}
