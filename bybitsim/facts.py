"""What Bybit v5 accepts on each socket, written down for the simulator alone.

The simulator is the tests' stand-in for Bybit, so it must not borrow these facts from
the gateway: a wrong table there would be mirrored here and never caught. Everything is
pure: topic parsing, symbol shapes, limits and the failure texts Bybit is seen to send.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PUBLIC_CATEGORIES = ("spot", "linear", "inverse", "option")
PRIVATE = "private"
ENDPOINTS = (*PUBLIC_CATEGORIES, PRIVATE)
# The system-status socket (/v5/public/misc/status) carries one topic: maintenance and incidents.
STATUS_ENDPOINT = "misc"
STATUS_TOPIC = "system.status"
NOTICE_STATES = ("scheduled", "ongoing", "completed", "canceled")
MAINTAIN_TYPES = (1, 2, 3)          # planned, temporary, incident

# Order-book depths per category socket; any other depth (e.g. the withdrawn 500) is refused.
DEPTHS = {
    "spot": (1, 50, 200, 1000),
    "linear": (1, 50, 200, 1000),
    "inverse": (1, 50, 200, 1000),
    "option": (25, 100),
}
RPI_DEPTH = 50                      # orderbook.rpi.{symbol}: always 50 levels
KLINE_INTERVALS = ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M")

# Per-symbol public topics (prefix before the symbol) -> the category sockets serving them.
# publicTrade on option takes the base coin (publicTrade.BTC), not an option symbol.
SYMBOL_TOPICS = {
    "publicTrade": PUBLIC_CATEGORIES,
    "tickers": PUBLIC_CATEGORIES,
    "orderbook": PUBLIC_CATEGORIES,          # orderbook.{depth}.{symbol}, depths above
    "orderbook.rpi": ("spot", "linear", "inverse"),
    "kline": ("spot", "linear", "inverse"),  # kline.{interval}.{symbol}
    "allLiquidation": ("linear", "inverse"),
    "priceLimit": ("spot", "linear", "inverse"),
}
# Per-pool public topics: insurance funds and ADL alerts of the USDT, USDC and inverse pools.
POOL_TOPICS = {
    "spot": (),
    "linear": ("insurance.USDT", "insurance.USDC", "adlAlert.USDT", "adlAlert.USDC"),
    "inverse": ("insurance.inverse", "adlAlert.inverse"),
    "option": (),
}

# Private topics: all-in-one ones, their category-scoped variants, and the ones with neither.
PRIVATE_CATEGORISED = {
    "order": ("spot", "linear", "inverse", "option"),
    "execution": ("spot", "linear", "inverse", "option"),
    "execution.fast": ("spot", "linear", "inverse", "option"),
    "position": ("linear", "inverse", "option"),          # no position.spot
}
PRIVATE_ALL_IN_ONE = ("order", "execution", "execution.fast", "position", "wallet", "greeks")
PRIVATE_OTHER = ("dcp.future", "dcp.spot", "dcp.option", "strategy", "spread.order", "spread.execution")
PRIVATE_TOPICS = frozenset(
    {*PRIVATE_ALL_IN_ONE, *PRIVATE_OTHER}
    | {f"{base}.{cat}" for base, cats in PRIVATE_CATEGORISED.items() for cat in cats}
)

# Limits: args per subscribe request (spot only), topics per connection (option only), and
# the summed length of every topic name on one public connection.
MAX_ARGS_PER_REQUEST = {"spot": 10}
MAX_TOPICS_PER_CONNECTION = {"option": 2000}
MAX_TOPIC_CHARS_PER_CONNECTION = 21_000

# Symbols are upper case. Plain ones are letters and digits in dash-joined parts: BTCUSDT,
# BTCUSDT-21FEB25 (USDT futures), BTC-24MAR23 (USDC futures), BTCUSDH23 (inverse futures).
PLAIN_SYMBOL_RE = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)*")
# Options: base, expiry, strike (decimals allowed: XRP-30OCT26-0.4-P-USDT), C|P, optional settle coin.
OPTION_SYMBOL_RE = re.compile(
    r"(?P<base>[A-Z0-9]+)-(?P<expiry>\d{1,2}[A-Z]{3}\d{2})-(?P<strike>\d+(?:\.\d+)?)-(?P<kind>[CP])"
    r"(?:-(?P<settle>[A-Z0-9]+))?")
BASE_COIN_RE = re.compile(r"[A-Z0-9]+")


def handler_not_found(topic) -> str:
    return f"error:handler not found,topic:{topic}"


def already_subscribed(topic) -> str:
    return f"error:already subscribed,topic:{topic}"


def needs_auth(topic) -> str:
    return f"error:topic:{topic} needs auth first"


def args_size_exceeded(limit: int) -> str:
    return f"args size >{limit}"


# Bybit documents these limits but not the texts it answers with; these name what broke.
def topics_exceeded(limit: int) -> str:
    return f"error:topics exceed {limit}"


def topic_chars_exceeded(limit: int) -> str:
    return f"error:topic length exceed {limit}"


def mixed_private_request(all_in_one: str, categorised: str) -> str:
    return (f"error:all-in-one and categorised topics cannot be in the same request: "
            f"{all_in_one} and {categorised}")


def is_option_symbol(symbol: str) -> bool:
    return OPTION_SYMBOL_RE.fullmatch(symbol) is not None


def symbol_ok(category: str, symbol: str) -> bool:
    """Whether ``symbol`` is shaped like a symbol of ``category`` (option sockets: options only)."""
    if category == "option":
        return is_option_symbol(symbol)
    return PLAIN_SYMBOL_RE.fullmatch(symbol) is not None and not is_option_symbol(symbol)


@dataclass(frozen=True)
class PublicTopic:
    kind: str                 # a SYMBOL_TOPICS key, or "insurance" / "adlAlert"
    symbol: str               # the symbol, base coin (option publicTrade) or pool (USDT, inverse)
    depth: int | None = None
    interval: str | None = None


def parse_public(category: str, topic) -> PublicTopic | None:
    """The topic as the ``category`` socket reads it, or None when that socket has no such topic.

    Symbols may hold dots (option strikes), so names are split by their known prefix and
    never on every dot.
    """
    if category not in PUBLIC_CATEGORIES or not isinstance(topic, str):
        return None
    if topic in POOL_TOPICS[category]:
        kind, pool = topic.split(".")
        return PublicTopic(kind, pool)
    if topic.startswith("orderbook.rpi."):
        kind, rest = "orderbook.rpi", topic[len("orderbook.rpi."):]
    else:
        kind, _, rest = topic.partition(".")
    if category not in SYMBOL_TOPICS.get(kind, ()):
        return None
    depth = interval = None
    if kind == "orderbook":
        level, _, rest = rest.partition(".")
        if level not in {str(d) for d in DEPTHS[category]}:   # "050" is not 50
            return None
        depth = int(level)
    elif kind == "kline":
        interval, _, rest = rest.partition(".")
        if interval not in KLINE_INTERVALS:
            return None
    if kind == "publicTrade" and category == "option":
        ok = BASE_COIN_RE.fullmatch(rest) is not None
    else:
        ok = symbol_ok(category, rest)
    return PublicTopic(kind, rest, depth, interval) if ok else None


def private_parts(topic: str) -> tuple[str, str | None] | None:
    """``order.linear`` -> ("order", "linear"); ``order`` -> ("order", None); None if unknown."""
    if topic not in PRIVATE_TOPICS:
        return None
    if topic in PRIVATE_ALL_IN_ONE or topic in PRIVATE_OTHER:
        return topic, None
    base, _, category = topic.rpartition(".")
    return base, category


def mixed_private_pair(topics) -> tuple[str, str] | None:
    """The first (all-in-one, categorised) pair of one topic that ``topics`` holds together."""
    wanted = [t for t in topics if isinstance(t, str)]
    for topic in wanted:
        parts = private_parts(topic)
        if parts is None or parts[1] is None:
            continue
        if parts[0] in wanted:
            return parts[0], topic
    return None
