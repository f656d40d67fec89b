"""Market state: instruments and their mid price as a pure function of (seed, time).

Every stream of one symbol (trades, book, ticker, kline) reads the same mid price at
the same instant, so the frames agree with each other, and a run is reproducible from
its seed and timestamps. Prices are Decimal, quantised to the instrument's tick.
"""
from __future__ import annotations

import math
import random
import re
import zlib
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from . import facts

_BASE_PRICES = {
    "BTC": "118000", "ETH": "3500", "SOL": "180", "BNB": "650", "XRP": "2.5", "DOGE": "0.2",
    "ADA": "0.8", "LTC": "95", "TON": "5.5", "AVAX": "35", "LINK": "18", "DOT": "7",
}
_QUOTE = re.compile(r"(USDT|USDC|USD|PERP|EUR|BTC)([FGHJKMNQUVXZ]\d\d)?$")


def stable_hash(*parts) -> int:
    """A hash that does not change between runs (unlike ``hash()`` on str)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode())


def base_coin(symbol: str) -> str:
    head = symbol.split("-")[0]
    stripped = _QUOTE.sub("", head)
    return stripped or head


def option_parts(symbol: str) -> tuple[str, Decimal, str] | None:
    """``BTC-31JUL26-120000-C(-USDT)`` -> (base, strike, "C"|"P"); None if not an option symbol.
    Strikes may have decimals (``XRP-30OCT26-0.4-P-USDT``)."""
    m = facts.OPTION_SYMBOL_RE.fullmatch(symbol)
    return (m["base"], Decimal(m["strike"]), m["kind"]) if m else None


def default_option_symbol(base: str) -> str:
    spot = Decimal(_BASE_PRICES.get(base, "100"))
    strike = (spot / 1000).to_integral_value() * 1000 if spot >= 1000 else spot.to_integral_value()
    return f"{base}-31JUL26-{int(strike)}-C"


def _tick(price: Decimal) -> Decimal:
    if price >= 1000:
        return Decimal("0.10")
    if price >= 10:
        return Decimal("0.01")
    if price >= 1:
        return Decimal("0.0001")
    return Decimal("0.00001")


def _qty_step(price: Decimal) -> Decimal:
    if price >= 1000:
        return Decimal("0.001")
    if price >= 10:
        return Decimal("0.01")
    if price >= 1:
        return Decimal("0.1")
    return Decimal("1")


@dataclass(frozen=True, eq=False)   # one per (category, symbol), made by Market: hashed by identity
class Instrument:
    category: str
    symbol: str
    base: str
    ref_price: Decimal    # centre of the price path
    tick: Decimal
    qty_step: Decimal
    phase1: float
    phase2: float

    def q_price(self, value: Decimal) -> Decimal:
        return (value / self.tick).quantize(Decimal(1), ROUND_HALF_UP) * self.tick

    def q_qty(self, value: Decimal) -> Decimal:
        steps = max(1, int(value / self.qty_step))
        return self.qty_step * steps


class Market:
    """Instruments by (category, symbol), with a deterministic, smoothly moving mid price."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._instruments: dict[tuple[str, str], Instrument] = {}
        self._last: dict[Instrument, tuple] = {}   # (ms, mid in ticks, 250 ms bucket, its noise): many frames share one ms
        self._mids: dict[Instrument, tuple[int, Decimal]] = {}   # the last mid made a Decimal: (ticks, price)
        self._ref_ticks: dict[Instrument, float] = {}

    def instrument(self, category: str, symbol: str) -> Instrument:
        key = (category, symbol)
        inst = self._instruments.get(key)
        if inst is None:
            inst = self._instruments[key] = self._make(category, symbol)
        return inst

    def _make(self, category: str, symbol: str) -> Instrument:
        base = base_coin(symbol)
        h = stable_hash(self.seed, category, symbol)
        spot = Decimal(_BASE_PRICES.get(base) or str(1 + h % 997))
        opt = option_parts(symbol)
        if category == "option" and opt:
            # A rough call/put premium: intrinsic value plus some time value.
            _, strike, kind = opt
            intrinsic = max(Decimal(0), spot - strike if kind == "C" else strike - spot)
            ref, step = intrinsic + spot * Decimal("0.02"), Decimal("0.01")
            tick = Decimal("5") if ref >= 100 else _tick(ref)   # a cheap option is not priced in 5s
        elif category == "inverse":
            ref, tick, step = spot, Decimal("0.50") if spot >= 1000 else _tick(spot), Decimal("1")
        else:
            ref, tick, step = spot, _tick(spot), _qty_step(spot)
        return Instrument(category, symbol, base, ref, tick, step,
                          phase1=(h % 1000) / 1000 * math.tau, phase2=(h // 1000 % 1000) / 1000 * math.tau)

    def index_price(self, base: str, ts_ms: int) -> Decimal:
        """The underlying's index price (for option tickers and trades)."""
        return self.mid(self.instrument("linear", f"{base}USDT"), ts_ms)

    def mid(self, inst: Instrument, ts_ms: int) -> Decimal:
        """Mid price at ``ts_ms``: two slow waves plus a few ticks of per-250 ms noise. Worked
        in whole ticks (float), made a Decimal once: the Decimal arithmetic per call was a
        third of the cost of a trade push."""
        ticks = self.mid_ticks(inst, ts_ms)
        made = self._mids.get(inst)
        if made is None or made[0] != ticks:
            made = self._mids[inst] = (ticks, inst.tick * ticks)
        return made[1]

    def mid_ticks(self, inst: Instrument, ts_ms: int) -> int:
        """``mid`` in whole ticks."""
        last = self._last.get(inst)
        if last is not None and last[0] == ts_ms:
            return last[1]
        bucket = ts_ms // 250
        if last is None or last[2] != bucket:
            noise = stable_hash(self.seed, inst.symbol, bucket) % 7 - 3
        else:
            noise = last[3]
        t = ts_ms / 1000.0
        move = 0.001 * math.sin(math.tau * t / 300.0 + inst.phase1) + 0.0003 * math.sin(math.tau * t / 30.0 + inst.phase2)
        ref_ticks = self._ref_ticks.get(inst)
        if ref_ticks is None:
            ref_ticks = self._ref_ticks[inst] = float(inst.ref_price / inst.tick)
        ticks = max(int(ref_ticks * (1 + move) + 0.5) + noise, 10)
        self._last[inst] = (ts_ms, ticks, bucket, noise)
        return ticks


def rng_uuid(rng) -> str:
    """A version-4 UUID string drawn from ``rng`` (reproducible, unlike uuid.uuid4)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


# -- a realistic listing (SIM_LISTING=realistic) ------------------------------------------------
LISTING_SIZES = {"linear": 800, "spot": 700}
QUIET_WEIGHT = 0.003      # the tail: a topic of a quiet symbol sends SIM_RATE * this frames/s
NEW_LISTING_WEIGHT = 0.5  # a fresh listing trades busily
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Listing:
    """The symbols listed as trading per category, each with its share of SIM_RATE (its activity).

    Deterministic from the seed: the well-known coins first and busiest, then generated coins,
    activity falling as 1/rank down to a quiet floor, so a whole category costs about eight
    busy topics' worth of frames. Symbols may be listed and delisted while it runs."""

    def __init__(self, seed: int = 0, sizes: dict[str, int] | None = None):
        self.seed = seed
        self.listed: dict[str, dict[str, float]] = {}
        self.serial = 0            # symbols listed while running
        rng = random.Random(stable_hash(seed, "listing"))
        bases = list(_BASE_PRICES)
        taken = set(bases)
        total = max((sizes or LISTING_SIZES).values())
        while len(bases) < total:
            name = "".join(rng.choice(_LETTERS) for _ in range(rng.choice((3, 4, 4, 5, 6))))
            if name not in taken and not _QUOTE.search(name):
                taken.add(name)
                bases.append(name)
        self._taken = taken
        for category, size in (sizes or LISTING_SIZES).items():
            symbols = [f"{b}USDT" for b in bases[:size]]
            # a few other quotes, as Bybit lists them (USDC perpetuals are BASEPERP; spot pairs in USDC)
            other = "PERP" if category == "linear" else "USDC"
            for i in range(0, size, 20):
                symbols[i] = f"{bases[i]}{other}" if i else symbols[i]
            self.listed[category] = {s: max(1.0 / (rank + 1), QUIET_WEIGHT) for rank, s in enumerate(symbols)}

    def symbols(self, category: str) -> list[str] | None:
        """The listed symbols (sorted); None when this listing does not cover ``category``."""
        listed = self.listed.get(category)
        return None if listed is None else sorted(listed)

    def weight(self, category: str, symbol: str) -> float | None:
        listed = self.listed.get(category)
        return None if listed is None else listed.get(symbol)

    def list_symbol(self, category: str, symbol: str | None = None) -> str:
        """List ``symbol`` (default: a new coin's USDT pair); returns it. Raises ValueError."""
        listed = self._category(category)
        if symbol is None:
            while True:
                self.serial += 1
                base = "NEW" + "".join(_LETTERS[(self.serial // 26 ** i) % 26] for i in range(3))
                if base not in self._taken:
                    break
            self._taken.add(base)
            symbol = f"{base}USDT"
        if symbol in listed:
            raise ValueError(f"{symbol} is already listed on {category}")
        listed[symbol] = NEW_LISTING_WEIGHT
        return symbol

    def delist_symbol(self, category: str, symbol: str | None = None) -> str:
        """Delist ``symbol`` (default: a quiet one, chosen from the seed); returns it. Raises ValueError."""
        listed = self._category(category)
        if symbol is None:
            quiet = sorted(s for s, w in listed.items() if w <= QUIET_WEIGHT)
            if not quiet:
                raise ValueError(f"no quiet symbol left to delist on {category}")
            symbol = quiet[stable_hash(self.seed, category, len(listed)) % len(quiet)]
        if listed.pop(symbol, None) is None:
            raise ValueError(f"{symbol} is not listed on {category}")
        return symbol

    def _category(self, category: str) -> dict[str, float]:
        listed = self.listed.get(category)
        if listed is None:
            raise ValueError(f"category must be one of {', '.join(self.listed)}")
        return listed
