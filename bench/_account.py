"""Account loss checks: the simulator's ground truth (``GET /__sim/account``) against what
reached PostgreSQL and the account queues. Pure functions over the three sources."""
from __future__ import annotations

from decimal import Decimal

CLASS_TOPIC = {"order_status": "order", "executions": "execution", "positions": "position", "balances": "wallet"}


def _dec(v) -> Decimal | None:
    return None if v in (None, "") else Decimal(str(v))


def _usdt(wallet: dict) -> Decimal | None:
    for coin in wallet.get("coin", []):
        if coin.get("coin") == "USDT":
            return _dec(coin.get("walletBalance"))
    return None


def _latest(records: list[dict], key) -> dict:
    out: dict = {}
    for r in records:
        k = key(r)
        if k not in out or int(r.get("updatedTime") or 0) >= int(out[k].get("updatedTime") or 0):
            out[k] = r
    return out


def _count(examples: dict | None, key: str, ids: list[str]) -> int:
    if examples is not None and ids:
        examples[key] = ids[:3]
    return len(ids)


def queue_missing(truth: dict, events: list[dict], examples: dict | None = None) -> dict[str, int]:
    """What of the truth never reached the account queues: {kind: count}. ``events`` are the
    consumer's account lines ({cls, source, data})."""
    got: dict[str, list[dict]] = {t: [] for t in CLASS_TOPIC.values()}
    for e in events:
        data = e.get("data")
        if isinstance(data, list):
            got[CLASS_TOPIC[e["cls"]]].extend(r for r in data if isinstance(r, dict))
    missing = {}
    execs = {r.get("execId") for r in got["execution"]}
    missing["executions"] = _count(examples, "queue_executions",
                                   [x["execId"] for x in truth["executions"] if x["execId"] not in execs])
    orders = _latest(got["order"], lambda r: r.get("orderId"))
    missing["orders"] = _count(examples, "queue_orders", [
        f"{o['orderId']}:{o['orderStatus']}@{o['updatedTime']}" for o in truth["orders"]
        if (orders.get(o["orderId"], {}).get("orderStatus"), orders.get(o["orderId"], {}).get("updatedTime"))
        != (o["orderStatus"], o["updatedTime"])])
    positions = _latest(got["position"], lambda r: r.get("symbol"))
    missing["positions"] = sum(1 for p in truth["positions"]
                               if _dec(positions.get(p["symbol"], {}).get("size", "0")) != _dec(p["size"]))
    want = _usdt(truth["balances"])
    missing["balances"] = 0 if want is None or want in {_usdt(w) for w in got["wallet"]} else 1
    return missing


def db_missing(truth: dict, query, examples: dict | None = None) -> dict[str, int]:
    """What of the truth PostgreSQL does not hold (``query(sql, *args) -> list[dict]``)."""
    missing = {}
    execs = {r["exec_id"] for r in query("SELECT exec_id FROM executions")}
    missing["executions"] = _count(examples, "db_executions",
                                   [x["execId"] for x in truth["executions"] if x["execId"] not in execs])
    orders = {r["order_id"]: (r["order_status"], str(r["updated_time"]))
              for r in query("SELECT order_id, order_status, updated_time FROM orders")}
    missing["orders"] = _count(examples, "db_orders", [
        f"{o['orderId']}:{o['orderStatus']}@{o['updatedTime']}" for o in truth["orders"]
        if orders.get(o["orderId"]) != (o["orderStatus"], o["updatedTime"])])
    positions = {r["symbol"]: r["size"] for r in query(
        "SELECT symbol, size FROM positions WHERE category = 'linear' AND position_idx = 0")}
    missing["positions"] = sum(1 for p in truth["positions"] if _dec(positions.get(p["symbol"], "0")) != _dec(p["size"]))
    want = _usdt(truth["balances"])
    rows = query("SELECT wallet_balance FROM balances WHERE coin = 'USDT'")
    missing["balances"] = 0 if want is None or any(_dec(r["wallet_balance"]) == want for r in rows) else 1
    return missing


def account_summary(truth: dict) -> dict:
    return {"orders": len(truth["orders"]), "executions": len(truth["executions"]),
            "positions": len(truth["positions"]), "events": truth.get("events")}
