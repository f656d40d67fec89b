"""Pure pieces of REST reconciliation: what ingest knows of the account, what REST returned,
and the ``rest`` payloads to send.

No I/O and no clock here: times are passed in (ms since the epoch).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

OPEN_STATUSES = frozenset({"New", "PartiallyFilled", "Untriggered", "Triggered"})
SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000
EXEC_MARGIN_MS = 60_000        # fills are fetched from the newest one known minus this
LOSS_MARGIN_MS = 30_000        # a dead downstream may have lost what it got this long before its last status
CHUNK = 200                    # records per ``rest`` envelope
DELIVERED_MAX = 50_000         # fills and orders remembered as already pushed (about 10 MB at most)


def _ms(value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _records(obj: dict) -> list[dict]:
    data = obj.get("data")
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


@dataclass
class Known:
    """What PostgreSQL (or ingest's memory) says: the newest fill and order update, orders to
    check, open positions, coins with a balance."""
    exec_ms: int | None = None
    order_ms: int | None = None
    orders: dict[str, str] = field(default_factory=dict)           # orderId -> category
    positions: set[tuple[str, str]] = field(default_factory=set)   # (category, symbol) not flat
    coins: set[str] = field(default_factory=set)                   # coins of the UNIFIED wallet ever seen


class Seen:
    """The account as ingest saw it in pushes and REST answers (the fallback when PostgreSQL is away)."""

    def __init__(self) -> None:
        self.exec_ms: int | None = None
        self.order_ms: int | None = None
        self.open_orders: dict[str, str] = {}
        self.positions: set[tuple[str, str]] = set()
        self.coins: set[str] = set()
        # What pushes already handed downstream (bounded): a reconciliation need not send it again.
        self.pushed_execs: OrderedDict[str, int] = OrderedDict()         # execId -> execTime
        self.pushed_orders: OrderedDict[str, int] = OrderedDict()        # orderId -> newest updatedTime
        self.pushed_positions: dict[tuple, int] = {}                     # (category, symbol, idx) -> updatedTime

    def observe(self, topic: str, obj: dict) -> None:
        base = topic.split(".", 1)[0]
        if base == "order":
            for r in _records(obj):
                self._order(r, r.get("category"))
                self._pushed(self.pushed_orders, r.get("orderId"), _ms(r.get("updatedTime")))
        elif base == "execution":
            fast = topic.startswith("execution.fast")     # fewer fields: the full record must still come
            for r in _records(obj):
                t = _ms(r.get("execTime"))
                if t is not None and (self.exec_ms is None or t > self.exec_ms):
                    self.exec_ms = t
                if not fast:
                    self._pushed(self.pushed_execs, r.get("execId"), t)
        elif base == "position":
            for r in _records(obj):
                self._position(r, r.get("category"))
                key = (r.get("category"), r.get("symbol"), r.get("positionIdx", 0))
                t = _ms(r.get("updatedTime"))
                if (t is not None and isinstance(key[0], str) and isinstance(key[1], str) and type(key[2]) is int
                        and len(self.pushed_positions) < DELIVERED_MAX):
                    self.pushed_positions[key] = max(t, self.pushed_positions.get(key, t))
        elif base == "wallet":
            self._coins(_records(obj))

    @staticmethod
    def _pushed(table: OrderedDict, key, t: int | None) -> None:
        if not isinstance(key, str) or not key or t is None:
            return
        table[key] = max(t, table.get(key, t))
        table.move_to_end(key)
        if len(table) > DELIVERED_MAX:
            table.popitem(last=False)

    def _coins(self, accounts: list) -> None:
        for account in accounts:
            if isinstance(account, dict) and account.get("accountType", "UNIFIED") == "UNIFIED":
                for c in account.get("coin") or []:
                    if isinstance(c, dict) and isinstance(c.get("coin"), str) and c["coin"]:
                        self.coins.add(c["coin"])

    def _order(self, rec: dict, category) -> None:
        oid = rec.get("orderId")
        if not isinstance(oid, str) or not isinstance(category, str):
            return
        t = _ms(rec.get("updatedTime"))
        if t is not None and (self.order_ms is None or t > self.order_ms):
            self.order_ms = t
        status = rec.get("orderStatus")
        if isinstance(status, str) and status in OPEN_STATUSES:
            self.open_orders[oid] = category
        else:
            self.open_orders.pop(oid, None)

    def _position(self, rec: dict, category) -> None:
        symbol = rec.get("symbol")
        if not isinstance(symbol, str) or not isinstance(category, str):
            return
        if rec.get("size") not in (None, "", "0") and rec.get("side"):
            self.positions.add((category, symbol))
        else:
            self.positions.discard((category, symbol))

    def apply(self, snap: "Snapshot") -> None:
        """What a reconciliation sent downstream: known, and not to be sent again."""
        for oid, (cat, rec) in snap.orders.items():
            self._order(rec, cat)
            self._pushed(self.pushed_orders, oid, _ms(rec.get("updatedTime")))
        for key, rec in snap.positions.items():
            self._position(rec, key[0])
            t = _ms(rec.get("updatedTime"))
            if t is not None and len(self.pushed_positions) < DELIVERED_MAX:
                self.pushed_positions[key] = max(t, self.pushed_positions.get(key, t))
        for eid, (_, rec) in snap.executions.items():
            self._pushed(self.pushed_execs, eid, _ms(rec.get("execTime")))
        self._coins(snap.wallet)
        newest = max((_ms(r.get("execTime")) or 0 for _, r in snap.executions.values()), default=0)
        if newest and (self.exec_ms is None or newest > self.exec_ms):
            self.exec_ms = newest

    def known(self) -> Known:
        return Known(self.exec_ms, self.order_ms, dict(self.open_orders), set(self.positions), set(self.coins))


def merge_wallets(first: list, more: list) -> list:
    """Bybit's wallet answer with the coins a second answer (asked for by name) adds."""
    out = [dict(a, coin=list(a.get("coin") or [])) for a in first if isinstance(a, dict)]
    for extra in more:
        if not isinstance(extra, dict):
            continue
        same = next((a for a in out if a.get("accountType") == extra.get("accountType")), None)
        if same is None:
            out.append(extra)
            continue
        have = {c.get("coin") for c in same["coin"] if isinstance(c, dict)}
        same["coin"].extend(c for c in extra.get("coin") or [] if isinstance(c, dict) and c.get("coin") not in have)
    return out


def exec_start_ms(newest_ms: int | None, lost_since_ms: int | None, now_ms: int) -> int | None:
    """``startTime`` for /v5/execution/list (newest fill known) and /v5/order/history (newest
    order update known): that, or the start of a downstream's loss window if earlier, minus a
    margin; None = Bybit's default (the last 7 days), used when nothing is known."""
    marks = [m for m in (newest_ms, lost_since_ms) if m is not None]
    if not marks:
        return None
    return max(min(marks) - EXEC_MARGIN_MS, now_ms - SEVEN_DAYS_MS + 60_000)


def loss_start_ms(name: str, status: dict) -> int | None:
    """From a dead downstream's last status file: the earliest time it may have lost events."""
    at = status.get("updated_at")
    if not isinstance(at, (int, float)):
        return None
    since = at
    if name == "persister":
        db = status.get("database") or {}
        if db.get("up") is False and isinstance(db.get("since"), (int, float)):
            since = min(since, db["since"])    # rows waited in memory during the outage
    elif name == "publisher":
        broker = status.get("broker") or {}
        if broker.get("state") not in (None, "ready") and isinstance(broker.get("since"), (int, float)):
            since = min(since, broker["since"])
    return int(since * 1000) - LOSS_MARGIN_MS


@dataclass
class Snapshot:
    """What one reconciliation fetched. Orders and executions are keyed by id, so a record
    seen by two queries (open list and history) is kept once."""
    wallet: list = field(default_factory=list)
    wallet_ms: int = 0
    orders: dict[str, tuple[str, dict]] = field(default_factory=dict)         # orderId -> (category, record)
    positions: dict[tuple, dict] = field(default_factory=dict)                # (category, symbol, idx) -> record
    executions: dict[str, tuple[str, dict]] = field(default_factory=dict)     # execId -> (category, record)
    fetched_ms: dict[str, int] = field(default_factory=dict)                  # topic -> Bybit time of the answer
    unresolved: int = 0
    skipped: int = 0                      # records left out of a downstream's copy: already pushed

    def add_orders(self, category: str, records: list, at_ms: int) -> None:
        for r in records:
            oid = r.get("orderId") if isinstance(r, dict) else None
            if not isinstance(oid, str) or not oid:
                raise ValueError(f"order record without orderId: {str(r)[:120]}")
            old = self.orders.get(oid)
            if old is None or (_ms(r.get("updatedTime")) or 0) >= (_ms(old[1].get("updatedTime")) or 0):
                self.orders[oid] = (category, r)
        self.fetched_ms["order"] = max(self.fetched_ms.get("order", 0), at_ms)

    def add_positions(self, category: str, records: list, at_ms: int) -> None:
        for r in records:
            if not isinstance(r, dict) or not isinstance(r.get("symbol"), str):
                raise ValueError(f"position record without symbol: {str(r)[:120]}")
            self.positions[(category, r["symbol"], r.get("positionIdx", 0))] = r
        self.fetched_ms["position"] = max(self.fetched_ms.get("position", 0), at_ms)

    def add_executions(self, category: str, records: list, at_ms: int) -> None:
        for r in records:
            eid = r.get("execId") if isinstance(r, dict) else None
            if not isinstance(eid, str) or not eid:
                raise ValueError(f"execution record without execId: {str(r)[:120]}")
            self.executions[eid] = (category, r)
        self.fetched_ms["execution"] = max(self.fetched_ms.get("execution", 0), at_ms)

    def counts(self) -> dict:
        return {"orders": len(self.orders),
                "open_orders": sum(1 for _, r in self.orders.values() if r.get("orderStatus") in OPEN_STATUSES),
                "positions": len(self.positions),
                "open_positions": sum(1 for r in self.positions.values() if r.get("size") not in ("0", "", None)),
                "executions": len(self.executions),
                "balances": sum(len(a.get("coin") or []) for a in self.wallet if isinstance(a, dict)),
                "unresolved_orders": self.unresolved}

    def without_pushed(self, seen: Seen, resend_from_ms: int | None) -> "Snapshot":
        """This snapshot less the records whose state a push already handed downstream, except
        those from ``resend_from_ms`` on (a downstream that restarted may have lost them)."""
        def old(t: int | None) -> bool:
            return resend_from_ms is None or (t is not None and t < resend_from_ms)

        out = Snapshot(wallet=self.wallet, wallet_ms=self.wallet_ms, fetched_ms=self.fetched_ms,
                       unresolved=self.unresolved)
        out.executions = {e: v for e, v in self.executions.items()
                          if not (e in seen.pushed_execs and old(_ms(v[1].get("execTime"))))}
        out.orders = {o: v for o, v in self.orders.items()
                      if not ((t := _ms(v[1].get("updatedTime"))) is not None and old(t)
                              and seen.pushed_orders.get(o, -1) >= t)}
        out.positions = {k: r for k, r in self.positions.items()
                         if not ((t := _ms(r.get("updatedTime"))) is not None and old(t)
                                 and seen.pushed_positions.get(k, -1) >= t)}
        out.skipped = (len(self.executions) + len(self.orders) + len(self.positions)
                       - len(out.executions) - len(out.orders) - len(out.positions))
        return out

    # -- what goes downstream -------------------------------------------------------------
    def bodies(self) -> list[dict]:
        """``rest`` payloads (docs/internals.md): per topic and category, oldest first, in chunks."""
        out: list[dict] = []

        def add(topic: str, category, records: list, at_ms: int) -> None:
            for i in range(0, len(records), CHUNK):
                out.append({"topic": topic, "category": category, "list": records[i:i + CHUNK],
                            "fetched_at_ms": at_ms})

        for topic, items, key in (("execution", self.executions, "execTime"), ("order", self.orders, "updatedTime")):
            by_cat: dict[str, list] = {}
            for cat, rec in items.values():
                by_cat.setdefault(cat, []).append(rec)
            for cat, recs in sorted(by_cat.items()):
                recs.sort(key=lambda r: _ms(r.get(key)) or 0)
                add(topic, cat, recs, self.fetched_ms.get(topic, 0))
        by_cat = {}
        for (cat, _, _), rec in self.positions.items():
            by_cat.setdefault(cat, []).append(rec)
        for cat, recs in sorted(by_cat.items()):
            add("position", cat, recs, self.fetched_ms.get("position", 0))
        if self.wallet:
            add("wallet", None, self.wallet, self.wallet_ms)
        return out
