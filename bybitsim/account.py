"""A fake unified trading account that lives on whether or not anyone is connected.

Orders are placed, partly filled, filled and cancelled (one event per ``step``); each
event yields consistent order / execution / position / wallet records in exactly the
shapes of tests/frames/{order,execution,execution_fast,position,wallet}.json, computed
with Decimal and sent as strings. The account keeps the ground truth (every order's
latest state, every execution, every position, the balance) in this one object, so REST
endpoints can serve it later, plus a log of the recent private pushes (``PushLog``).

What grows: orders and executions, about 1.6 KB of Python objects per account event
(the whole history is the ground truth the loss checks compare against: 4,500 events,
15 min at 5/s, hold ~7 MB). The push log is a window: the frames as sent (bytes), kept
``push_window_s`` and at most ``max_pushes`` frames, whoever they were sent to.
"""
from __future__ import annotations

import random
from collections import deque
from decimal import Decimal

import orjson

from . import facts
from .market import Market, rng_uuid, stable_hash

ZERO = Decimal(0)
LEVERAGE = Decimal(10)
FEE_RATE = Decimal("0.0002")
MM_RATE = Decimal("0.005")
TERMINAL = ("Filled", "Cancelled")
FAST_KEYS = ("category", "symbol", "execId", "execPrice", "execQty", "orderId", "isMaker",
             "orderLinkId", "side", "execTime", "seq")


def _m(value: Decimal, places: str = "0.0001") -> str:
    """Money as Bybit sends it: a decimal string, trailing zeros trimmed."""
    q = value.quantize(Decimal(places))
    text = format(q, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class PushLog:
    """The private frames sent, oldest first, as (sent at ms, connection id, the bytes sent).

    Bounded by age (``window_s``) and count (``max_frames``), whatever the number of
    connections: a closed connection's frames leave with the window, nothing is kept per
    connection. Kept as the bytes written (~1 KB a frame), not as the frame dicts
    (~2.6 KB with their records); ``frames()`` decodes them. ``record`` copies the bytes:
    an ``orjson.dumps`` result sits in orjson's ~16 KB output buffer, which it does not
    shrink, so keeping it would cost 16 times the frame.
    """

    def __init__(self, max_frames: int = 100_000, window_s: float = 300.0):
        if max_frames < 1 or not window_s > 0:
            raise ValueError("max_frames must be >= 1 and window_s > 0")
        self.max_frames, self.window_ms = max_frames, int(window_s * 1000)
        self._log: deque[tuple[int, str, bytes]] = deque()
        self.recorded = 0          # every frame ever recorded
        self.evicted = 0           # of which no longer kept

    def __len__(self) -> int:
        return len(self._log)

    def record(self, conn_id: str, payload: bytes, at_ms: int) -> None:
        self._log.append((at_ms, conn_id, bytes(memoryview(payload))))    # an exact-size copy
        self.recorded += 1
        self.prune(at_ms)

    def prune(self, now_ms: int) -> None:
        log, oldest = self._log, now_ms - self.window_ms
        while log and (len(log) > self.max_frames or log[0][0] < oldest):
            log.popleft()
            self.evicted += 1

    def frames(self, raw: bool = False) -> tuple[list, dict[str, list]]:
        """(every kept frame in order, the same frames by connection id); ``raw``: as
        ``orjson.Fragment`` (for a JSON answer: the bytes go out as they are, nothing is
        decoded and encoded again), else decoded."""
        everything, by_conn = [], {}
        decode = orjson.Fragment if raw else orjson.loads
        for _, conn_id, payload in self._log:
            frame = decode(payload)
            everything.append(frame)
            by_conn.setdefault(conn_id, []).append(frame)
        return everything, by_conn


class Account:
    def __init__(self, market: Market, seed: int, symbols, max_pushes: int = 100_000,
                 push_window_s: float = 300.0):
        self.market = market
        self.rng = random.Random(stable_hash(seed, "account"))
        self.symbols = tuple(symbols)
        self.orders: dict[str, dict] = {}
        self.open: list[str] = []
        self.executions: list[dict] = []
        self.pos: dict[str, dict] = {}              # symbol -> {size (signed), entry, cur, cum, created, open_time}
        self.positions: dict[str, dict] = {}        # "linear:SYMBOL:0" -> latest pushed record
        self.wallet_balance = Decimal("20000")
        self.cum_realised = ZERO
        self.wallet: dict | None = None
        self.push_log = PushLog(max_pushes, push_window_s)   # recent frames sent, every connection
        self.seq = 412_345_680_000
        self.n_orders = 0
        self.events = 0

    # -- events ------------------------------------------------------------------------

    def step(self, now_ms: int) -> list[tuple[str, list[dict]]]:
        """Advance by one event; returns the pushes it causes as (topic, records), greeks last."""
        pushes = self._event(now_ms)
        pushes.append(("greeks", [self._greeks()]))
        return pushes

    def transfer(self, amount: Decimal, marks_at_ms: int) -> list[tuple[str, list[dict]]]:
        """Funds moved into (or, negative, out of) the unified account: Bybit pushes the wallet.
        Marks are taken at ``marks_at_ms`` so that a transfer out after one in (A -> B -> A)
        gives back exactly the first state."""
        self.events += 1
        self.wallet_balance += amount
        return [("wallet", [self._wallet(marks_at_ms)])]

    def _event(self, now_ms: int) -> list[tuple[str, list[dict]]]:
        self.events += 1
        r = self.rng.random()
        if not self.open or (len(self.open) < 4 and r < 0.4):
            return self._place(now_ms)
        order = self.orders[self.rng.choice(self.open)]
        leaves = Decimal(order["leavesQty"])
        step = self.market.instrument("linear", order["symbol"]).qty_step
        r = self.rng.random()
        if r < 0.45 and leaves > step:
            return self._fill(order, step * self.rng.randint(1, int(leaves / step) - 1), now_ms)
        if r < 0.8:
            return self._fill(order, leaves, now_ms)
        return self._cancel(order, now_ms)

    def _place(self, now_ms: int):
        symbol = self.rng.choice(self.symbols)
        inst = self.market.instrument("linear", symbol)
        mid = self.market.mid(inst, now_ms)
        side = self.rng.choice(("Buy", "Sell"))
        offset = inst.tick * self.rng.randint(1, 50)
        price = mid - offset if side == "Buy" else mid + offset
        qty = inst.qty_step * self.rng.randint(5, 50)
        self.n_orders += 1
        order = _order_record(symbol, rng_uuid(self.rng), f"sim-{self.n_orders:06d}", price, qty, side,
                              mid, now_ms)
        self.orders[order["orderId"]] = order
        self.open.append(order["orderId"])
        return [("order", [dict(order)]), ("position", [self._position(symbol, now_ms)]),
                ("wallet", [self._wallet(now_ms)])]

    def _fill(self, order: dict, qty: Decimal, now_ms: int):
        price = Decimal(order["price"])
        value = qty * price
        fee = value * FEE_RATE
        self.seq += self.rng.randint(1, 1000)
        pnl, closed = self._apply_fill(order["symbol"], qty if order["side"] == "Buy" else -qty, price, fee, now_ms)
        cum_qty = Decimal(order["cumExecQty"]) + qty
        cum_value = Decimal(order["cumExecValue"]) + value
        cum_fee = Decimal(order["cumExecFee"]) + fee
        leaves = Decimal(order["qty"]) - cum_qty
        order.update({
            "orderStatus": "Filled" if leaves == 0 else "PartiallyFilled",
            "avgPrice": order["price"] if cum_qty else "", "leavesQty": str(leaves),
            "leavesValue": _m(leaves * price), "cumExecQty": str(cum_qty), "cumExecValue": _m(cum_value),
            "cumExecFee": _m(cum_fee, "0.00000001"), "closedPnl": _m(Decimal(order["closedPnl"]) + pnl),
            "updatedTime": str(now_ms), "cumFeeDetail": {"USDT": _m(cum_fee, "0.00000001")},
        })
        if leaves == 0:
            self.open.remove(order["orderId"])
        mark = self.market.mid(self.market.instrument("linear", order["symbol"]), now_ms)
        execution = {
            "category": "linear", "symbol": order["symbol"], "isLeverage": "0", "orderId": order["orderId"],
            "orderLinkId": order["orderLinkId"], "side": order["side"], "orderPrice": order["price"],
            "orderQty": order["qty"], "leavesQty": str(leaves), "createType": "CreateByUser",
            "orderType": "Limit", "stopOrderType": "UNKNOWN", "execFee": _m(fee, "0.00000001"),
            "execId": rng_uuid(self.rng), "execPrice": order["price"], "execQty": str(qty),
            "execPnl": _m(pnl), "execType": "Trade", "execValue": _m(value), "execTime": str(now_ms),
            "isMaker": True, "feeRate": str(FEE_RATE), "tradeIv": "", "markIv": "", "markPrice": str(mark),
            "indexPrice": "", "underlyingPrice": "", "blockTradeId": "", "closedSize": str(closed),
            "extraFees": "", "seq": self.seq, "marketUnit": "", "feeCurrency": "USDT",
        }
        self.executions.append(execution)
        fast = {k: execution[k] for k in FAST_KEYS}
        fast["orderLinkId"] = ""          # always "" on maker fills (docs/bybit.md#executions)
        return [("order", [dict(order)]), ("execution", [dict(execution)]), ("execution.fast", [fast]),
                ("position", [self._position(order["symbol"], now_ms)]), ("wallet", [self._wallet(now_ms)])]

    def _cancel(self, order: dict, now_ms: int):
        order.update({"orderStatus": "Cancelled", "cancelType": "CancelByUser", "leavesQty": "0",
                      "leavesValue": "0", "updatedTime": str(now_ms)})
        self.open.remove(order["orderId"])
        return [("order", [dict(order)]), ("position", [self._position(order["symbol"], now_ms)]),
                ("wallet", [self._wallet(now_ms)])]

    def _apply_fill(self, symbol: str, q: Decimal, price: Decimal, fee: Decimal, now_ms: int):
        """One-way position arithmetic; returns (realised pnl, closed size)."""
        p = self.pos.setdefault(symbol, {"size": ZERO, "entry": ZERO, "cur": ZERO, "cum": ZERO,
                                         "created": now_ms, "open_time": 0, "seq": -1})
        size, entry = p["size"], p["entry"]
        pnl = closed = ZERO
        if size == 0 or (size > 0) == (q > 0):
            new = size + q
            p["entry"] = (abs(size) * entry + abs(q) * price) / abs(new)
            if size == 0:
                p["open_time"] = now_ms
        else:
            closed = min(abs(size), abs(q))
            pnl = closed * (price - entry) * (1 if size > 0 else -1)
            new = size + q
            if new == 0:
                p["entry"], p["open_time"] = ZERO, 0
            elif (new > 0) != (size > 0):
                p["entry"], p["open_time"] = price, now_ms
        p["size"], p["seq"] = new, self.seq
        p["cur"] += pnl - fee
        p["cum"] += pnl - fee
        self.cum_realised += pnl - fee
        self.wallet_balance += pnl - fee
        return pnl, closed

    # -- records -----------------------------------------------------------------------

    def _position(self, symbol: str, now_ms: int) -> dict:
        p = self.pos.get(symbol) or {"size": ZERO, "entry": ZERO, "cur": ZERO, "cum": ZERO,
                                     "created": now_ms, "open_time": 0, "seq": -1}
        size, entry = p["size"], p["entry"]
        inst = self.market.instrument("linear", symbol)
        mark = self.market.mid(inst, now_ms)
        value = abs(size) * entry
        im, mm = value / LEVERAGE, value * MM_RATE
        upl = (mark - entry) * size if size else ZERO
        liq = entry * (1 - 1 / LEVERAGE + MM_RATE) if size > 0 else entry * (1 + 1 / LEVERAGE - MM_RATE)
        record = {
            "positionIdx": 0, "tradeMode": 0, "riskId": 1, "riskLimitValue": "2000000", "symbol": symbol,
            "side": "" if size == 0 else "Buy" if size > 0 else "Sell", "size": str(abs(size)),
            "entryPrice": _m(entry, str(inst.tick)) if size else "0", "leverage": str(LEVERAGE),
            "breakEvenPrice": _m(entry * (1 + 2 * FEE_RATE * (1 if size > 0 else -1)), str(inst.tick)) if size else "0",
            "positionValue": _m(value), "positionBalance": _m(im), "markPrice": str(mark),
            "positionIM": _m(im), "positionIMByMp": _m(abs(size) * mark / LEVERAGE), "positionMM": _m(mm),
            "positionMMByMp": _m(abs(size) * mark * MM_RATE), "takeProfit": "0", "stopLoss": "0",
            "trailingStop": "0", "unrealisedPnl": _m(upl), "curRealisedPnl": _m(p["cur"]),
            "cumRealisedPnl": _m(p["cum"]), "sessionAvgPrice": "", "createdTime": str(p["created"]),
            "updatedTime": str(now_ms), "tpslMode": "Full",
            "liqPrice": _m(liq, str(inst.tick)) if size else "", "bustPrice": "", "category": "linear",
            "positionStatus": "Normal", "adlRankIndicator": 2 if size else 0, "autoAddMargin": 0,
            "leverageSysUpdatedTime": "", "mmrSysUpdatedTime": "", "seq": p["seq"], "isReduceOnly": False,
            "openTime": p["open_time"],
        }
        self.positions[f"linear:{symbol}:0"] = record
        return dict(record)

    def _wallet(self, now_ms: int) -> dict:
        order_im = sum((Decimal(o["leavesQty"]) * Decimal(o["price"]) / LEVERAGE
                        for o in (self.orders[i] for i in self.open)), ZERO)
        pos_im = pos_mm = upl = ZERO
        for symbol, p in self.pos.items():
            mark = self.market.mid(self.market.instrument("linear", symbol), now_ms)
            value = abs(p["size"]) * p["entry"]
            pos_im += value / LEVERAGE
            pos_mm += value * MM_RATE
            upl += (mark - p["entry"]) * p["size"]
        wb = self.wallet_balance
        equity = wb + upl
        available = equity - pos_im - order_im
        im_rate = (pos_im + order_im) / equity if equity else ZERO
        mm_rate = pos_mm / equity if equity else ZERO
        coin = {"coin": "USDT", "equity": _m(equity), "usdValue": _m(equity, "0.01"), "walletBalance": _m(wb),
                "availableToWithdraw": _m(max(available, ZERO)), "availableToBorrow": "", "borrowAmount": "0",
                "accruedInterest": "0", "totalOrderIM": _m(order_im), "totalPositionIM": _m(pos_im),
                "totalPositionMM": _m(pos_mm), "unrealisedPnl": _m(upl), "cumRealisedPnl": _m(self.cum_realised),
                "bonus": "0", "collateralSwitch": True, "marginCollateral": True, "locked": "0",
                "spotHedgingQty": "0", "spotBorrow": "0", "colRes": "0"}
        self.wallet = {
            "accountIMRate": _m(im_rate), "accountIMRateByMp": _m(im_rate), "accountMMRate": _m(mm_rate),
            "accountMMRateByMp": _m(mm_rate), "totalEquity": _m(equity), "totalWalletBalance": _m(wb),
            "totalMarginBalance": _m(equity), "totalAvailableBalance": _m(available), "totalPerpUPL": _m(upl),
            "totalInitialMargin": _m(pos_im), "totalInitialMarginByMp": _m(pos_im),
            "totalMaintenanceMargin": _m(pos_mm), "totalMaintenanceMarginByMp": _m(pos_mm),
            "coin": [coin], "accountLTV": "0", "accountType": "UNIFIED",
        }
        return {**self.wallet, "coin": [dict(coin)]}

    def _greeks(self) -> dict:
        """The option book's greeks for BTC (tests/frames/greeks.json shape). The account holds no
        options, so they drift with the event count only: drawn without the account's rng, so
        every other record stays what it was for a seed."""
        n = Decimal(self.events % 1000)
        return {"baseCoin": "BTC", "totalDelta": str(Decimal("0.41234512") + n / 10**6),
                "totalGamma": str(Decimal("0.00004512") + n / 10**9),
                "totalVega": str(Decimal("45.12340000") + n / 10**4),
                "totalTheta": str(Decimal("-310.55210000") - n / 10**3)}

    # -- delivery ----------------------------------------------------------------------

    def frames_for(self, topics, pushes, now_ms: int) -> list[tuple[str, dict]]:
        """The frames one connection subscribed to ``topics`` gets for ``pushes``."""
        out = []
        for topic in topics:
            base, cat = facts.private_parts(topic) or (topic, None)
            for kind, records in pushes:
                if kind != base:
                    continue
                data = [r for r in records if cat is None or r.get("category") == cat]
                if not data:
                    continue
                if kind == "execution.fast":
                    frame = {"topic": topic, "creationTime": now_ms, "data": data}
                else:
                    frame = {"id": f"{rng_uuid(self.rng)}-{self.events}", "topic": topic,
                             "creationTime": now_ms, "data": data}
                out.append((topic, frame))
        return out

    def record_push(self, conn_id: str, payload: bytes, at_ms: int) -> None:
        """One frame written to ``conn_id`` (``payload``: the bytes sent)."""
        self.push_log.record(conn_id, payload, at_ms)

    def ground_truth(self, now_ms: int | None = None, raw_pushes: bool = False) -> dict:
        """Everything, with the push log's window: ``pushes`` (and ``pushes_by_conn``) are the
        frames sent in the last ``push_window_s``, at most ``max_pushes``; ``pushes_evicted``
        counts the older ones no longer there. ``raw_pushes``: frames as ``orjson.Fragment``."""
        if now_ms is not None:
            self.push_log.prune(now_ms)
        pushes, by_conn = self.push_log.frames(raw_pushes)
        return {
            "orders": list(self.orders.values()),
            "open_order_ids": list(self.open),
            "executions": list(self.executions),
            "positions": list(self.positions.values()),
            "balances": self.wallet or self._wallet(0),
            "pushes": pushes,
            "pushes_by_conn": by_conn,
            "pushes_recorded": self.push_log.recorded,
            "pushes_evicted": self.push_log.evicted,
            "events": self.events,
        }


def _order_record(symbol, order_id, link_id, price, qty, side, mid, now_ms) -> dict:
    return {
        "category": "linear", "symbol": symbol, "orderId": order_id, "orderLinkId": link_id,
        "parentOrderLinkId": "", "isLeverage": "", "blockTradeId": "", "price": str(price),
        "brokerOrderPrice": "", "qty": str(qty), "side": side, "positionIdx": 0, "orderStatus": "New",
        "createType": "CreateByUser", "cancelType": "UNKNOWN", "rejectReason": "EC_NoError", "avgPrice": "",
        "leavesQty": str(qty), "leavesValue": _m(qty * price), "cumExecQty": "0", "cumExecValue": "0",
        "cumExecFee": "0", "closedPnl": "0", "feeCurrency": "", "timeInForce": "GTC", "orderType": "Limit",
        "stopOrderType": "", "ocoTriggerBy": "", "orderIv": "", "marketUnit": "",
        "slippageToleranceType": "UNKNOWN", "slippageTolerance": "0", "triggerPrice": "", "takeProfit": "",
        "stopLoss": "", "tpslMode": "", "tpLimitPrice": "", "slLimitPrice": "", "tpTriggerBy": "",
        "slTriggerBy": "", "triggerDirection": 0, "triggerBy": "", "lastPriceOnCreated": str(mid),
        "reduceOnly": False, "closeOnTrigger": False, "placeType": "", "smpType": "None", "smpGroup": 0,
        "smpOrderId": "", "createdTime": str(now_ms), "updatedTime": str(now_ms),
        "cumFeeDetail": {"USDT": "0"}, "rpiTakerAccess": False, "rpiMatchedQty": "0",
    }
