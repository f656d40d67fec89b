"""Public data frames, one stream object per subscribed topic, pure given a seed.

``stream.next(ts_ms)`` returns the next frame (a dict shaped like the recorded frames in
tests/frames/) for a push at ``ts_ms``. Streams keep their own state (book, ticker,
candle, sequence numbers) and read prices from the shared Market.
"""
from __future__ import annotations

import random
from datetime import datetime, timezone
from decimal import Decimal
from operator import itemgetter

import orjson

from . import facts
from .market import Instrument, Market, default_option_symbol, rng_uuid, stable_hash

_TICK_DIR = {1: "PlusTick", 0: "ZeroPlusTick", -1: "MinusTick"}


def _s(value: Decimal) -> str:
    return str(value)


class _Rng(random.Random):
    """The stdlib generator with cheap small draws: ``randint`` and ``choice`` from one
    ``random()`` (0.1 us) instead of rejection sampling over ``getrandbits`` (1.2 us), which
    was a fifth of the simulator's CPU in a flood. Still reproducible from the seed."""

    def randint(self, a: int, b: int) -> int:
        return a + int(self.random() * (b - a + 1))

    def choice(self, seq):
        return seq[int(self.random() * len(seq))]


class Stream:
    def __init__(self, market: Market, category: str, topic: str, seed: int, parsed: facts.PublicTopic):
        self.market, self.category, self.topic = market, category, topic
        self.rng = _Rng(stable_hash(seed, category, topic))
        self.symbol = parsed.symbol       # symbols may hold dots (option strikes): never split the topic
        self.inst: Instrument = market.instrument(category, self.symbol)
        self.seq = 400_000_000_000 + self.rng.randrange(10**9)

    def mid(self, ts_ms: int) -> Decimal:
        return self.market.mid(self.inst, ts_ms)

    def size(self, max_steps: int = 500) -> Decimal:
        return self.inst.qty_step * self.rng.randint(1, max_steps)

    def next(self, ts_ms: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def encoded(self, ts_ms: int) -> bytes:
        """The next frame as the socket carries it (``orjson.dumps(next(ts_ms))``)."""
        return orjson.dumps(self.next(ts_ms))


class TradeStream(Stream):
    """``publicTrade.{symbol}``; on option ``publicTrade.{base}`` with option trades."""

    def __init__(self, market, category, topic, seed, parsed):
        if category == "option":
            option = default_option_symbol(parsed.symbol)
            super().__init__(market, category, f"publicTrade.{option}", seed,
                             facts.PublicTopic(parsed.kind, option))
            self.topic, self.base = topic, parsed.symbol
        else:
            super().__init__(market, category, topic, seed, parsed)
        self.last: int | None = None        # the last trade's price in ticks
        self.last_dir = 0
        self.n = 0
        # Trade ids: a random UUID head per stream and the trade's number as its tail, unique
        # like Bybit's; drawing 128 random bits per trade was a seventh of a flood's CPU.
        self.id_head = rng_uuid(self.rng)[:24]
        # trade sizes as sent, by qty steps - 1 (str of a Decimal per trade is slow)
        self.sizes = [_s(self.inst.qty_step * k) for k in range(1, 51)]
        self.prices: dict[int, str] = {}    # price in ticks -> as sent
        if category != "option":
            # ``encoded``: the frame's JSON written from templates, the same bytes as orjson.dumps
            # of ``next`` (tests/sim/test_data.py); a dict per trade and its serialisation were
            # most of a trade push's cost. The symbol and topic as JSON strings, escaped by orjson.
            sym, top = orjson.dumps(self.inst.symbol).decode(), orjson.dumps(self.topic).decode()
            self._frame_fmt = '{"topic":' + top.replace("%", "%%") + ',"type":"snapshot","ts":%d,"data":[%s]}'
            sym = sym.replace("%", "%%")
            if category == "spot":
                self._trade_fmt = ('{"T":%d,"s":' + sym
                                   + ',"S":"%s","v":"%s","p":"%s","i":"%d","BT":false,"RPI":false,"seq":%d}')
            else:
                self._trade_fmt = ('{"T":%d,"s":' + sym + ',"S":"%s","v":"%s","p":"%s","L":"%s","i":"'
                                   + orjson.dumps(self.id_head).decode()[1:-1] + '%012x","BT":false,"RPI":false,"seq":%d}')

    def next(self, ts_ms: int) -> dict:
        self.seq += self.rng.randint(1, 50)
        trades = [self._trade(ts_ms) for _ in range(self.rng.choice((1, 1, 1, 2, 3)))]
        frame = {"topic": self.topic, "type": "snapshot", "ts": ts_ms, "data": trades}
        if self.category == "option":
            frame = {"id": f"{self.topic}-{ts_ms}-{self.rng.getrandbits(32):08x}", **frame}
        return frame

    def encoded(self, ts_ms: int) -> bytes:
        if self.category == "option":
            return orjson.dumps(self.next(ts_ms))
        random = self.rng.random
        # the draws of ``next`` in the same order: ``_Rng.randint(1, 50)``, ``_Rng.choice((1, 1, 1, 2, 3))``
        self.seq += 1 + int(random() * 50)
        count = (1, 1, 1, 2, 3)[int(random() * 5)]
        fmt, spot, seq = self._trade_fmt, self.category == "spot", self.seq
        trades = []
        for _ in range(count):
            at, side, size, p, direction = self._draw(ts_ms)
            if spot:
                trades.append(fmt % (at, side, size, p, 2290000000000000000 + self.n, seq))
            else:
                trades.append(fmt % (at, side, size, p, direction, self.n, seq))
        return (self._frame_fmt % (ts_ms, ",".join(trades))).encode()

    def _trade(self, ts_ms: int) -> dict:
        at, side, size, p, direction = self._draw(ts_ms)
        if self.category == "option":
            trade = {"T": at, "s": self.inst.symbol, "S": side, "v": size, "p": p}
            index = self.market.index_price(self.base, ts_ms)
            iv = Decimal("0.45") + Decimal(self.rng.randint(-200, 200)) / 10000
            trade.update({"i": f"{self.id_head}{self.n:012x}", "BT": False, "seq": self.seq,
                          "mP": p, "iP": _s(index), "mIv": _s(iv), "iv": _s(iv + Decimal("0.0010"))})
            return trade
        if self.category == "spot":
            return {"T": at, "s": self.inst.symbol, "S": side, "v": size, "p": p, "i": str(2290000000000000000 + self.n),
                    "BT": False, "RPI": False, "seq": self.seq}
        return {"T": at, "s": self.inst.symbol, "S": side, "v": size, "p": p, "L": direction,
                "i": f"{self.id_head}{self.n:012x}", "BT": False, "RPI": False, "seq": self.seq}

    def _draw(self, ts_ms: int) -> tuple:
        """(time, side, size, price, tick direction) of the next trade, as sent.

        In whole ticks (ints): Decimal arithmetic and str() per trade were a fifth of its cost;
        the draws inlined (``_Rng.randint`` exactly): a call per draw was a fifth of what was left."""
        random = self.rng.random
        ticks = self.market.mid_ticks(self.inst, ts_ms) - 2 + int(random() * 5)
        last = self.last
        if last is None:
            direction = _TICK_DIR[self.last_dir]
        elif ticks != last:
            self.last_dir = 1 if ticks > last else -1
            direction = _TICK_DIR[self.last_dir]
        else:
            direction = "ZeroPlusTick" if self.last_dir >= 0 else "ZeroMinusTick"
        self.last = ticks
        self.n += 1
        p = self.prices.get(ticks)
        if p is None:
            if len(self.prices) > 1000:
                self.prices.clear()
            p = self.prices[ticks] = _s(self.inst.tick * ticks)
        at = ts_ms - int(random() * 4)
        side = "Sell" if random() >= 0.5 else "Buy"
        return at, side, self.sizes[int(random() * 50)], p, direction


class BookStream(Stream):
    """``orderbook.{depth}.{symbol}``: a snapshot, then deltas with ``u`` +1 (depth 1: snapshots).

    The book is held in whole ticks (price) and qty steps (size), each made a string once:
    Decimal arithmetic and str() per level were most of a book push's cost."""

    def __init__(self, market, category, topic, seed, parsed):
        super().__init__(market, category, topic, seed, parsed)
        self.depth = parsed.depth or facts.RPI_DEPTH
        self.u = self.rng.randint(1_000_000, 90_000_000)
        self.bids: dict[int, int] = {}       # price in ticks -> size in qty steps
        self.asks: dict[int, int] = {}
        self.best_ticks = 0
        self.started = False
        self.gap_next = False      # hooks: the next delta skips one u
        self.reset_next = False    # hooks: the next frame is a snapshot with u == 1
        self._prices: dict[int, str] = {}
        self._sizes: dict[int, str] = {0: "0"}     # 0: a level deleted

    def levels(self) -> tuple[dict[str, str], dict[str, str]]:
        """The book as sent: (bids, asks), each {price: size}."""
        return ({self._price(p): self._size(q) for p, q in self.bids.items()},
                {self._price(p): self._size(q) for p, q in self.asks.items()})

    def _price(self, ticks: int) -> str:
        p = self._prices.get(ticks)
        if p is None:
            if len(self._prices) > 4096:
                self._prices.clear()
            p = self._prices[ticks] = _s(self.inst.tick * ticks)
        return p

    def _size(self, steps: int) -> str:
        q = self._sizes.get(steps)
        if q is None:
            q = self._sizes[steps] = _s(self.inst.qty_step * steps)
        return q

    def _target(self, ts_ms: int) -> tuple[dict, dict, tuple[dict, dict] | None]:
        """The book at ``ts_ms``: ``depth`` levels each side of the mid, a few re-quoted; and per
        side the re-quoted levels' sizes before (None: absent), or None when the book moved
        (every level may differ). An unmoved book is changed in place."""
        rng, depth = self.rng, self.depth
        # the mid is on the tick grid: the best bid is the mid (at least depth + 1 ticks)
        best = max(self.market.mid_ticks(self.inst, ts_ms), depth + 1)
        if self.bids and best == self.best_ticks:
            bids, asks = self.bids, self.asks
            touched = ({}, {})
        else:
            bids, asks, old_bids, old_asks = {}, {}, self.bids, self.asks
            for i in range(depth):
                bp, ap = best - i, best + i + 1
                bids[bp] = old_bids.get(bp) or rng.randint(1, 500)
                asks[ap] = old_asks.get(ap) or rng.randint(1, 500)
            touched = None
        self.best_ticks = best
        for side, book in enumerate((bids, asks)):
            for _ in range(rng.randint(1, 3)):
                size = rng.randint(1, 500)      # drawn before the price, as the seeded streams always were
                price = best + rng.randint(1 - depth, 0) if side == 0 else best + rng.randint(1, depth)
                if touched is not None and price not in touched[side]:
                    touched[side][price] = book.get(price)
                book[price] = size
        return bids, asks, touched

    def next(self, ts_ms: int) -> dict:
        if self.reset_next:
            self.reset_next, self.started, self.u = False, False, 0
            self.bids, self.asks = {}, {}
        if self.depth == 1 and self.started and self.rng.random() < 0.25:
            return self._frame("snapshot", ts_ms, self.bids, self.asks)   # unchanged: same u
        bids, asks, touched = self._target(ts_ms)
        self.seq += self.rng.randint(1, 40)
        if not self.started or self.depth == 1:
            self.started = True
            self.u += 1
            self.bids, self.asks = bids, asks
            return self._frame("snapshot", ts_ms, bids, asks)
        self.u += 2 if self.gap_next else 1
        self.gap_next = False
        if touched is None:
            db, da = _diff(self.bids, bids), _diff(self.asks, asks)
        else:       # only the re-quoted levels can differ: no need to compare all of them
            db, da = _requoted(touched[0], bids), _requoted(touched[1], asks)
        self.bids, self.asks = bids, asks
        return self._frame("delta", ts_ms, dict(db), dict(da), ordered=False)

    def _frame(self, kind, ts_ms, bids, asks, ordered=True) -> dict:
        b = sorted(bids.items(), reverse=True) if ordered else bids.items()
        a = sorted(asks.items()) if ordered else asks.items()
        price, size = self._price, self._size
        data = {"s": self.inst.symbol, "b": [[price(p), size(q)] for p, q in b],
                "a": [[price(p), size(q)] for p, q in a], "u": self.u, "seq": self.seq}
        return {"topic": self.topic, "type": kind, "ts": ts_ms, "data": data, "cts": ts_ms - self.rng.randint(1, 3)}


def _diff(old: dict, new: dict) -> list:
    """The levels that changed, by price ascending (a level gone has size 0). Only the few
    changed levels are sorted: sorting the whole book was a fifth of a flood's CPU here."""
    get = old.get
    changed = [(p, q) for p, q in new.items() if get(p) != q]
    changed += [(p, 0) for p in old if p not in new]
    changed.sort(key=itemgetter(0))
    return changed


def _requoted(before: dict, new: dict) -> list:
    """``_diff`` when only the levels in ``before`` (price -> size before) were set in ``new``."""
    return sorted([(p, new[p]) for p, q in before.items() if q != new[p]], key=itemgetter(0))


class TickerStream(Stream):
    """``tickers.{symbol}``: linear/inverse snapshot then changed-field deltas; spot and
    option full snapshots in their own field sets."""

    def __init__(self, market, category, topic, seed, parsed):
        super().__init__(market, category, topic, seed, parsed)
        self.fields: dict[str, str] | None = None
        self.n = 0
        p = self.inst.ref_price
        self.prev24 = self.inst.q_price(p * Decimal("0.988"))
        self.high, self.low = self.inst.q_price(p * Decimal("1.006")), self.inst.q_price(p * Decimal("0.985"))
        self.volume = self.size(10**6)
        self.oi = self.size(10**7)
        # strings of values that change seldom, made again only when the value object changes
        # (str() and arithmetic of Decimals were most of a ticker push's cost)
        self._prev24_s = _s(self.prev24)
        self._prev1h_s = _s(self.inst.q_price(self.prev24 * Decimal("1.01")))
        self._by_last: tuple | None = None     # (last, its str, price24hPcnt, last + tick as str)
        self._high_low: tuple | None = None    # (high, low, their strs)
        self._prev_last: Decimal | None = None

    def next(self, ts_ms: int) -> dict:
        self.n += 1
        self.seq += self.rng.randint(1, 40)
        last = self.mid(ts_ms)
        self.high, self.low = max(self.high, last), min(self.low, last)
        self.volume += self.size(20)
        if self.category == "spot":
            return {"topic": self.topic, "ts": ts_ms, "type": "snapshot", "cs": self.seq, "data": self._spot(last)}
        if self.category == "option":
            return {"id": f"{self.topic}-{self.seq}-{ts_ms}", "topic": self.topic, "ts": ts_ms,
                    "data": self._option(last, ts_ms), "type": "snapshot"}
        fields = self._linear(last, ts_ms)
        if self.fields is None:
            self.fields = fields
            kind, data = "snapshot", fields
        else:
            kind = "delta"
            data = {"symbol": self.inst.symbol}
            data.update({k: v for k, v in fields.items() if self.fields.get(k) != v})
            self.fields = fields
        return {"topic": self.topic, "type": kind, "data": data, "cs": self.seq, "ts": ts_ms}

    def _last(self, last: Decimal) -> tuple:
        by = self._by_last
        if by is None or by[0] is not last:
            pcnt = ((last - self.prev24) / self.prev24).quantize(Decimal("0.000001"))
            by = self._by_last = (last, _s(last), _s(pcnt), _s(last + self.inst.tick))
        return by

    def _common(self, last: Decimal) -> dict:
        _, last_s, pcnt_s, _ = self._last(last)
        hl = self._high_low
        if hl is None or hl[0] is not self.high or hl[1] is not self.low:
            hl = self._high_low = (self.high, self.low, _s(self.high), _s(self.low))
        turnover = (self.volume * last).quantize(Decimal("0.0001"))
        return {"lastPrice": last_s, "highPrice24h": hl[2], "lowPrice24h": hl[3],
                "prevPrice24h": self._prev24_s, "volume24h": _s(self.volume), "turnover24h": _s(turnover),
                "price24hPcnt": pcnt_s}

    def _spot(self, last: Decimal) -> dict:
        c = self._common(last)
        index = last + self.inst.tick * self.rng.randint(-20, 20)
        return {"symbol": self.inst.symbol, "lastPrice": c["lastPrice"], "highPrice24h": c["highPrice24h"],
                "lowPrice24h": c["lowPrice24h"], "prevPrice24h": c["prevPrice24h"], "volume24h": c["volume24h"],
                "turnover24h": c["turnover24h"], "price24hPcnt": c["price24hPcnt"], "usdIndexPrice": _s(index)}

    def _linear(self, last: Decimal, ts_ms: int) -> dict:
        tick, c = self.inst.tick, self._common(last)
        mark = self.inst.q_price(last + tick * self.rng.randint(-3, 3))
        index = self.inst.q_price(last + tick * self.rng.randint(-10, 10))
        self.oi += self.inst.qty_step * self.rng.randint(-20, 20)
        oi_value = (self.oi * mark).quantize(Decimal("0.01"))
        half, half_value = self.oi / 2, (self.oi * mark / 2).quantize(Decimal("0.01"))
        prev_last = self._prev_last if self.fields else last
        self._prev_last = last
        direction = "PlusTick" if last > prev_last else "MinusTick" if last < prev_last else (
            self.fields["tickDirection"] if self.fields else "ZeroPlusTick")
        funding_at = (ts_ms // 28_800_000 + 1) * 28_800_000
        return {"symbol": self.inst.symbol, "tickDirection": direction, "price24hPcnt": c["price24hPcnt"],
                "lastPrice": c["lastPrice"], "prevPrice24h": c["prevPrice24h"], "highPrice24h": c["highPrice24h"],
                "lowPrice24h": c["lowPrice24h"], "prevPrice1h": self._prev1h_s,
                "markPrice": _s(mark), "indexPrice": _s(index), "openInterest": _s(self.oi),
                "openInterestValue": _s(oi_value), "singleOpenInterest": _s(half),
                "singleOpenInterestValue": _s(half_value), "turnover24h": c["turnover24h"],
                "volume24h": c["volume24h"], "fundingIntervalHour": "8", "fundingCap": "0.005",
                "nextFundingTime": str(funding_at), "fundingRate": "0.0001",
                "bid1Price": c["lastPrice"], "bid1Size": _s(self.size()), "ask1Price": self._last(last)[3],
                "ask1Size": _s(self.size()), "preOpenPrice": "", "preQty": "", "curPreListingPhase": ""}

    def _option(self, last: Decimal, ts_ms: int) -> dict:
        tick, c = self.inst.tick, self._common(last)
        index = self.market.index_price(self.inst.base, ts_ms)
        iv = Decimal("0.45") + Decimal(self.rng.randint(-100, 100)) / 10000
        return {"symbol": self.inst.symbol, "bidPrice": _s(last - tick), "bidSize": _s(self.size(400)),
                "bidIv": _s(iv - Decimal("0.003")), "askPrice": _s(last + tick), "askSize": _s(self.size(400)),
                "askIv": _s(iv + Decimal("0.003")), "lastPrice": c["lastPrice"], "highPrice24h": c["highPrice24h"],
                "lowPrice24h": c["lowPrice24h"], "markPrice": _s(last), "indexPrice": _s(index),
                "markPriceIv": _s(iv), "underlyingPrice": _s(index + tick), "openInterest": _s(self.oi),
                "turnover24h": c["turnover24h"], "volume24h": c["volume24h"], "totalVolume": _s(self.volume * 3),
                "totalTurnover": _s((self.volume * 3 * last).quantize(Decimal(1))), "delta": "0.412345",
                "gamma": "0.00004512", "vega": "45.1234", "theta": "-310.5521", "predictedDeliveryPrice": "0",
                "change24h": c["price24hPcnt"]}


def candle_bounds(interval: str, ts_ms: int) -> tuple[int, int]:
    """(start, end) of the candle holding ``ts_ms``; end = next start - 1."""
    if interval.isdigit() or interval == "D":
        length = 86_400_000 if interval == "D" else int(interval) * 60_000
        start = ts_ms // length * length
        return start, start + length - 1
    if interval == "W":  # weeks start on Monday; 1970-01-05 was a Monday
        week, monday = 7 * 86_400_000, 4 * 86_400_000
        start = (ts_ms - monday) // week * week + monday
        return start, start + week - 1
    day = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
    first = datetime(day.year, day.month, 1, tzinfo=timezone.utc)
    following = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=timezone.utc)
    return int(first.timestamp() * 1000), int(following.timestamp() * 1000) - 1


class KlineStream(Stream):
    """``kline.{interval}.{symbol}``: the forming candle; a closed one is sent with confirm true."""

    def __init__(self, market, category, topic, seed, parsed):
        super().__init__(market, category, topic, seed, parsed)
        self.interval = parsed.interval
        self.candle: dict | None = None

    def next(self, ts_ms: int) -> dict:
        start, end = candle_bounds(self.interval, ts_ms)
        c = self.candle
        if c is not None and c["start"] != start:
            self.candle = None
            return self._frame({**c, "confirm": True}, ts_ms)
        price = self.mid(ts_ms)
        if c is None:
            open_ = self.market.mid(self.inst, start)
            c = self.candle = {"start": start, "end": end, "interval": self.interval, "open": _s(open_),
                               "close": _s(price), "high": _s(max(open_, price)), "low": _s(min(open_, price)),
                               "volume": "0", "turnover": "0", "confirm": False, "timestamp": ts_ms}
        volume = Decimal(c["volume"]) + self.size(20)
        c.update({"close": _s(price), "high": _s(max(Decimal(c["high"]), price)),
                  "low": _s(min(Decimal(c["low"]), price)), "volume": _s(volume),
                  "turnover": _s((Decimal(c["turnover"]) + (volume - Decimal(c["volume"])) * price)
                                 .quantize(Decimal("0.0001"))),
                  "timestamp": ts_ms})
        return self._frame(dict(c), ts_ms)

    def _frame(self, candle: dict, ts_ms: int) -> dict:
        return {"topic": self.topic, "data": [candle], "ts": ts_ms, "type": "snapshot"}


class LiquidationStream(Stream):
    """``allLiquidation.{symbol}``: an array of liquidations (side of the liquidated position)."""

    def next(self, ts_ms: int) -> dict:
        items = []
        for _ in range(self.rng.choice((1, 1, 2))):
            side = self.rng.choice(("Buy", "Sell"))
            off = self.mid(ts_ms) * Decimal("0.004") * (-1 if side == "Buy" else 1)
            items.append({"T": ts_ms - self.rng.randint(0, 200), "s": self.inst.symbol, "S": side,
                          "v": _s(self.size(300)), "p": _s(self.inst.q_price(self.mid(ts_ms) + off))})
        return {"topic": self.topic, "type": "snapshot", "ts": ts_ms, "data": items}


class RpiBookStream(BookStream):
    """``orderbook.rpi.{symbol}``: 50 levels of ``[price, nonRpiSize, rpiSize]``; a level is
    deleted when its non-RPI size is "0", so the RPI size rides along with it."""

    def _frame(self, kind, ts_ms, bids, asks, ordered=True) -> dict:
        frame = super()._frame(kind, ts_ms, bids, asks, ordered)
        for side in (frame["data"]["b"], frame["data"]["a"]):
            for level in side:
                level.append("0" if level[1] == "0" else _s(self._rpi(level[0])))
        return frame

    def _rpi(self, price: str) -> Decimal:
        return self.inst.qty_step * (stable_hash(self.topic, price) % 4)


class PriceLimitStream(Stream):
    """``priceLimit.{symbol}``: the highest buy and lowest sell price allowed now; no ``type``."""

    def next(self, ts_ms: int) -> dict:
        mid = self.mid(ts_ms)
        band = mid * Decimal("0.02")
        return {"topic": self.topic, "data": {"symbol": self.inst.symbol,
                                              "buyLmt": _s(self.inst.q_price(mid + band)),
                                              "sellLmt": _s(self.inst.q_price(mid - band))}, "ts": ts_ms}


# The isolated fund pushed per pool (shared pools are never pushed): (coin, its one contract).
_POOL_FUND = {"USDT": ("USDT", "FOOUSDT"), "USDC": ("USDC", "FOOPERP"), "inverse": ("FOO", "FOOUSD")}


class PoolStream:
    """``insurance.{pool}`` and ``adlAlert.{pool}`` (pool USDT, USDC or inverse): per pool, not
    per symbol. Insurance sends a snapshot, then a delta each time the fund's balance moves."""

    def __init__(self, market: Market, category: str, topic: str, seed: int, parsed: facts.PublicTopic):
        self.category, self.topic, self.kind = category, topic, parsed.kind
        self.rng = _Rng(stable_hash(seed, category, topic))
        self.coin, self.contract = _POOL_FUND[parsed.symbol]
        self.balance = Decimal(self.rng.randint(10_000_00, 9_000_000_00)) / 100
        self.started = False

    def next(self, ts_ms: int) -> dict:
        if self.started:
            self.balance += Decimal(self.rng.choice((-1, 1)) * self.rng.randint(1, 50_000)) / 100
        kind, self.started = ("delta" if self.started else "snapshot"), True
        if self.kind == "adlAlert":
            # Numbers, as Bybit's example sends them (its field table says strings).
            ratio = round(self.rng.uniform(-0.2, 0.0), 4)
            item = {"c": self.coin, "s": self.contract, "b": float(self.balance), "mb": float(self.balance),
                    "i_pr": ratio, "pr": ratio, "adl_tt": -0.3, "adl_sr": -0.25}
            return {"topic": self.topic, "type": "snapshot", "ts": ts_ms, "data": [item]}
        return {"topic": self.topic, "type": kind, "ts": ts_ms,
                "data": [{"coin": self.coin, "symbols": self.contract, "balance": _s(self.balance),
                          "updateTime": str(ts_ms)}]}

    encoded = Stream.encoded


_KINDS = {"publicTrade": TradeStream, "orderbook": BookStream, "orderbook.rpi": RpiBookStream,
          "tickers": TickerStream, "kline": KlineStream, "allLiquidation": LiquidationStream,
          "priceLimit": PriceLimitStream, "insurance": PoolStream, "adlAlert": PoolStream}


def make_stream(market: Market, category: str, topic: str, seed: int) -> Stream:
    """The stream for a public topic the ``category`` socket accepts; ValueError otherwise."""
    parsed = facts.parse_public(category, topic)
    if parsed is None:
        raise ValueError(f"no {topic!r} on the {category} socket")
    return _KINDS[parsed.kind](market, category, topic, seed, parsed)
