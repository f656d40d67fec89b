"""A consumer-side ledger of the account, as a risk engine would keep it.

It reads what a consumer bound to every account class (and ``system``) receives, keeps one
copy per ``message_id`` (the de-duplication the gateway promises is enough), and judges the
result against the simulator's ground truth (``GET /__sim/account``):

- every fill counted once: each execId arrives under exactly one message_id;
- every order's newest state (by ``version``, a terminal state never undone) is the truth's;
- every position and every wallet coin equals the truth, zero balances included;
- ``stream_seq`` is contiguous per routing key and ``stream_epoch``, except where the gateway
  announced a gap (``system.stream_gap``, ``system.broker_outage``, ``system.events_dropped``).

Independent of the gateway's code: it uses Bybit's own keys and the message properties only.
Used by the chaos test and by ``bench/faults.py``.
"""
from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

ACCOUNT_CLASSES = ("order_status", "executions", "positions", "balances")
TERMINAL = {"Rejected", "PartiallyFilledCanceled", "Filled", "Cancelled", "Deactivated"}


def _dec(v) -> Decimal:
    return Decimal(str(v)) if v not in (None, "") else Decimal(0)


class Ledger:
    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.deliveries = 0
        self.duplicates = 0                                    # same message_id delivered again
        self.facts: dict[str, int] = defaultdict(int)          # per class, after de-duplication
        self.exec_ids: dict[str, set[str]] = defaultdict(set)  # execId -> message ids it came under
        self.orders: dict[str, tuple] = {}                     # orderId -> (rank, record)
        self.positions: dict[tuple, tuple] = {}                # (category, symbol, idx) -> (version, record)
        self.coins: dict[str, tuple] = {}                      # coin -> (version, record)
        self.seqs: dict[tuple[str, str], set[int]] = defaultdict(set)      # (routing key, epoch) -> seqs
        self.announced: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.sources: dict[str, int] = defaultdict(int)

    # -- intake ---------------------------------------------------------------------------
    def add(self, routing_key: str, message_id: str | None, body: dict) -> None:
        """One delivery: the message's routing key, its ``message_id`` property and its body."""
        self.deliveries += 1
        seq, epoch = body.get("stream_seq"), body.get("stream_epoch")
        if isinstance(seq, int) and seq > 0:
            self.seqs[(routing_key, str(epoch))].add(seq)
        cls = body.get("event_class")
        if cls == "system":
            self._announcement(body)
        if not message_id or message_id in self.ids:
            self.duplicates += 1 if message_id else 0
            return
        self.ids.add(message_id)
        if cls not in ACCOUNT_CLASSES:
            return
        self.facts[cls] += 1
        self.sources[str(body.get("source"))] += 1
        version = body.get("version")
        for rec in body.get("data") or []:
            if cls == "executions":
                self.exec_ids[rec["execId"]].add(message_id)
            elif cls == "order_status":
                rank = (rec.get("orderStatus") in TERMINAL, int(version or rec.get("updatedTime") or 0))
                old = self.orders.get(rec["orderId"])
                if old is None or rank >= old[0]:
                    self.orders[rec["orderId"]] = (rank, rec)
            elif cls == "positions":
                key = (rec.get("category"), rec.get("symbol"), int(rec.get("positionIdx") or 0))
                v = int(version or rec.get("updatedTime") or 0)
                if key not in self.positions or v >= self.positions[key][0]:
                    self.positions[key] = (v, rec)
            elif cls == "balances":
                v = int(version or body.get("exchange_ts") or 0)
                for coin in rec.get("coin") or []:
                    old = self.coins.get(coin["coin"])
                    if old is None or v >= old[0]:
                        self.coins[coin["coin"]] = (v, coin)

    def _announcement(self, body: dict) -> None:
        data = body.get("data") or {}
        if body.get("topic") == "stream_gap" and "routing_key" in data and "stream_seq_from" in data:
            self.announced[f"{data['routing_key']}@{data.get('stream_epoch')}"].append(
                (data["stream_seq_from"], data["stream_seq_to"]))
        for key, r in (data.get("dropped_streams") or {}).items():
            self.announced[f"{key}@*"].append((r["from_seq"], r["to_seq"]))

    # -- judgement ------------------------------------------------------------------------
    def unannounced_gaps(self) -> dict[str, int]:
        """Numbers missing inside each (routing key, epoch) stream that no notice covers."""
        out = {}
        for (key, epoch), seen in self.seqs.items():
            ranges = self.announced.get(f"{key}@{epoch}", []) + self.announced.get(f"{key}@*", [])
            missing = [n for n in range(min(seen), max(seen) + 1)
                       if n not in seen and not any(a <= n <= z for a, z in ranges)]
            if missing:
                out[f"{key}@{epoch}"] = len(missing)
        return out

    def check(self, truth: dict) -> dict:
        """Counts and problems against the simulator's truth; ``problems`` empty means equal."""
        problems: dict[str, list] = defaultdict(list)
        want_execs = {e["execId"] for e in truth["executions"]}
        missing = sorted(want_execs - set(self.exec_ids))
        if missing:
            problems["executions_missing"] = missing[:5] + [f"... {len(missing)} in all"]
        twice = sorted(e for e, ids in self.exec_ids.items() if len(ids) > 1)
        if twice:
            problems["executions_counted_twice"] = twice[:5] + [f"... {len(twice)} in all"]
        for o in truth["orders"]:
            got = self.orders.get(o["orderId"])
            have = (got[1].get("orderStatus"), str(got[1].get("updatedTime"))) if got else None
            if have != (o["orderStatus"], str(o["updatedTime"])):
                problems["orders_wrong"].append(f"{o['orderId']}: {have} != {o['orderStatus']}@{o['updatedTime']}")
        want_pos = {(p.get("category", "linear"), p["symbol"], int(p.get("positionIdx") or 0)): _dec(p["size"])
                    for p in truth["positions"]}
        for key in set(want_pos) | set(self.positions):
            have = _dec(self.positions[key][1].get("size")) if key in self.positions else Decimal(0)
            if have != want_pos.get(key, Decimal(0)):
                problems["positions_wrong"].append(f"{key}: {have} != {want_pos.get(key, 0)}")
        want_coins = {c["coin"]: _dec(c["walletBalance"]) for c in truth["balances"]["coin"]}
        for coin in set(want_coins) | set(self.coins):
            have = _dec(self.coins[coin][1].get("walletBalance")) if coin in self.coins else None
            if have != want_coins.get(coin, Decimal(0)):
                problems["coins_wrong"].append(f"{coin}: {have} != {want_coins.get(coin, 0)}")
        gaps = {k: v for k, v in self.unannounced_gaps().items() if k.split(".", 1)[0] in ACCOUNT_CLASSES + ("system",)}
        if gaps:
            problems["unannounced_account_gaps"] = [f"{k}: {v}" for k, v in sorted(gaps.items())][:10]
        return {"problems": {k: v[:5] for k, v in problems.items()},
                "deliveries": self.deliveries, "duplicate_deliveries": self.duplicates,
                "facts": dict(self.facts), "sources": dict(self.sources), "exec_ids": len(self.exec_ids),
                "orders": len(self.orders), "positions": len(self.positions), "coins": len(self.coins),
                "streams": len(self.seqs), "announced_gaps": sum(len(v) for v in self.announced.values())}
