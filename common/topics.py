"""What can be subscribed: the REST API's channels mapped to Bybit topic names.

Pure functions over Bybit's topic tables, shared by the API (validation) and ingest
(refusing before anything is sent to Bybit). Topic names are read back by their known
prefix, never by splitting on every dot: option symbols may carry a decimal strike
(``tickers.XRP-30OCT26-0.4-P-USDT``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PUBLIC_CATEGORIES = ("spot", "linear", "inverse", "option")
PRIVATE = "private"                       # the endpoint key of the private stream
ENDPOINTS = (*PUBLIC_CATEGORIES, PRIVATE)
# Bybit's system-status socket (/v5/public/misc/status): one topic, subscribed by ingest itself.
STATUS_ENDPOINT = "misc"
STATUS_PATH = "misc/status"
STATUS_TOPIC = "system.status"

PUBLIC_CHANNELS = ("trades", "tickers", "orderbook", "kline", "liquidation",
                   "orderbook_rpi", "price_limit", "insurance", "adl_alert")
PRIVATE_CHANNELS = ("order", "execution", "position", "wallet", "execution_fast", "greeks")
CHANNELS = (*PUBLIC_CHANNELS, *PRIVATE_CHANNELS)

DEPTHS = {
    "spot": (1, 50, 200, 1000),
    "linear": (1, 50, 200, 1000),
    "inverse": (1, 50, 200, 1000),
    "option": (25, 100),
}
INTERVALS = ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M")
# Which public channels exist on which category's socket.
CHANNEL_CATEGORIES = {
    "trades": PUBLIC_CATEGORIES,
    "tickers": PUBLIC_CATEGORIES,
    "orderbook": PUBLIC_CATEGORIES,
    "kline": ("spot", "linear", "inverse"),
    "liquidation": ("linear", "inverse"),
    "orderbook_rpi": ("spot", "linear", "inverse"),
    "price_limit": ("spot", "linear", "inverse"),
    "insurance": ("linear", "inverse"),
    "adl_alert": ("linear", "inverse"),
}
# Insurance funds and ADL alerts are per pool, not per symbol: the pool goes in ``symbol``.
POOLS = {"linear": ("USDT", "USDC"), "inverse": ("inverse",)}
POOL_CHANNELS = ("insurance", "adl_alert")
# Channel -> Bybit topic prefix (the text before the symbol, depth or interval).
PREFIXES = {
    "trades": "publicTrade", "tickers": "tickers", "orderbook": "orderbook", "kline": "kline",
    "liquidation": "allLiquidation", "orderbook_rpi": "orderbook.rpi", "price_limit": "priceLimit",
    "insurance": "insurance", "adl_alert": "adlAlert",
    "order": "order", "execution": "execution", "position": "position", "wallet": "wallet",
    "execution_fast": "execution.fast", "greeks": "greeks",
}
# Category-scoped private topics (order.linear ...); position has no spot, wallet and greeks none.
PRIVATE_CATEGORIES = {
    "order": PUBLIC_CATEGORIES,
    "execution": PUBLIC_CATEGORIES,
    "execution_fast": PUBLIC_CATEGORIES,
    "position": ("linear", "inverse", "option"),
    "wallet": (),
    "greeks": (),
}
# Private channels with an all-in-one and category-scoped topics (Bybit refuses both in one request).
TWO_FORM_CHANNELS = tuple(c for c, cats in PRIVATE_CATEGORIES.items() if cats)
# Upper-case letters, digits and dashes (BTCUSDT, BTC-31JUL26-120000-C, BTCUSDH23); an option's
# strike may have decimals (XRP-30OCT26-0.4-P-USDT). No underscore: routing keys use it for dots.
PLAIN_SYMBOL_RE = re.compile(r"[A-Z0-9][A-Z0-9-]{1,39}")
OPTION_SYMBOL_RE = re.compile(r"[A-Z0-9]+-\d{1,2}[A-Z]{3}\d{2}-\d+(?:\.\d+)?-[CP](?:-[A-Z0-9]+)?")
MAX_SYMBOL_LEN = 40
# symbol "*": every symbol Bybit lists as trading in the category (ingest expands it, and keeps up
# with listings); one subscription row, topic ``tickers.*``. Pools (insurance, adl_alert) have none.
WILDCARD = "*"
WILDCARD_CHANNELS = ("trades", "tickers", "orderbook", "kline", "liquidation", "orderbook_rpi", "price_limit")
# Options are listed per base coin, thousands of strikes, at most 2,000 topics per connection: not by "*".
WILDCARD_CATEGORIES = ("spot", "linear", "inverse")
# Spot allows at most 10 args per subscribe request; option 2,000 topics per connection;
# every public connection at most 21,000 characters of topic names.
MAX_ARGS_PER_REQUEST = {"spot": 10}
MAX_TOPICS_PER_CONNECTION = {"option": 2000}
MAX_TOPIC_CHARS_PER_CONNECTION = 21_000


class TopicError(ValueError):
    """A subscription request that Bybit would refuse; ``field`` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Topic:
    channel: str
    endpoint: str          # spot | linear | inverse | option | private
    name: str              # Bybit topic string, e.g. publicTrade.BTCUSDT
    category: str | None   # None for all-in-one private topics
    symbol: str | None = None
    depth: int | None = None
    interval: str | None = None

    @property
    def key(self) -> str:
        """Unique across the gateway: one subscription per endpoint and topic."""
        return f"{self.endpoint}:{self.name}"

    @property
    def whole_category(self) -> bool:
        """Every listed symbol of the category (symbol "*"), not one topic at Bybit."""
        return self.symbol == WILDCARD

    def for_symbol(self, symbol: str) -> "Topic":
        """This whole-category topic made concrete for one listed ``symbol``. Raises TopicError."""
        return build_topic(self.channel, self.category, symbol, self.depth, self.interval)


def symbol_ok(symbol) -> bool:
    """A Bybit symbol's shape: plain (BTCUSDT) or an option, whose strike may have decimals."""
    return (isinstance(symbol, str) and len(symbol) <= MAX_SYMBOL_LEN
            and (PLAIN_SYMBOL_RE.fullmatch(symbol) is not None or OPTION_SYMBOL_RE.fullmatch(symbol) is not None))


def build_topic(channel: str, category: str | None = None, symbol: str | None = None,
                depth: int | None = None, interval: str | None = None) -> Topic:
    """Validate a subscription request and return its Bybit topic. Raises TopicError."""
    if channel not in CHANNELS:
        raise TopicError("channel", f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    if channel in PRIVATE_CHANNELS:
        return _private_topic(channel, category, symbol, depth, interval)
    if category is None:
        raise TopicError("category", f"category is required for channel {channel!r}")
    if category not in PUBLIC_CATEGORIES:
        raise TopicError("category", f"unknown category {category!r}; expected one of {', '.join(PUBLIC_CATEGORIES)}")
    if category not in CHANNEL_CATEGORIES[channel]:
        raise TopicError("category", f"channel {channel!r} is not available on {category!r}; "
                                     f"use one of {', '.join(CHANNEL_CATEGORIES[channel])}")
    if symbol is None:
        what = "pool" if channel in POOL_CHANNELS else "symbol"
        raise TopicError("symbol", f"symbol (the {what}) is required for channel {channel!r}")
    if symbol == WILDCARD:
        if channel not in WILDCARD_CHANNELS:
            raise TopicError("symbol", f"symbol '*' (every symbol of the category) is not available for {channel!r}; "
                                       f"use it with {_list(WILDCARD_CHANNELS)}")
        if category not in WILDCARD_CATEGORIES:
            raise TopicError("symbol", f"symbol '*' is available on {_list(WILDCARD_CATEGORIES)}, not on {category!r} "
                                       "(options are listed per base coin, thousands of strikes): name the symbols")
    elif channel in POOL_CHANNELS:
        if symbol not in POOLS[category]:
            raise TopicError("symbol", f"{channel} on {category} is per pool: symbol must be one of "
                                       f"{_list(POOLS[category])}")
    elif not symbol_ok(symbol):
        raise TopicError("symbol", "symbol must be 2-40 uppercase letters, digits or '-' (e.g. BTCUSDT); "
                                   "an option's strike may have decimals (XRP-30OCT26-0.4-P-USDT); '*' means every symbol "
                                   "of the category")
    if channel != "orderbook" and depth is not None:
        raise TopicError("depth", "depth applies to channel 'orderbook' only")
    if channel != "kline" and interval is not None:
        raise TopicError("interval", "interval applies to channel 'kline' only")
    prefix = PREFIXES[channel]
    if channel == "trades":
        # Option trades are per base coin: publicTrade.BTC.
        name = f"{prefix}.{symbol.split('-')[0] if category == 'option' else symbol}"
    elif channel == "orderbook":
        if depth is None:
            raise TopicError("depth", f"depth is required for orderbook; {category} allows {_list(DEPTHS[category])}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth not in DEPTHS[category]:
            raise TopicError("depth", f"depth {depth!r} is not valid on {category}; allowed: {_list(DEPTHS[category])}")
        name = f"{prefix}.{depth}.{symbol}"
    elif channel == "kline":
        if interval is None:
            raise TopicError("interval", f"interval is required for kline; allowed: {_list(INTERVALS)}")
        if interval not in INTERVALS:
            raise TopicError("interval", f"interval {interval!r} is not valid; allowed: {_list(INTERVALS)}")
        name = f"{prefix}.{interval}.{symbol}"
    else:
        name = f"{prefix}.{symbol}"
    return Topic(channel, category, name, category, symbol, depth, interval)


def _private_topic(channel, category, symbol, depth, interval) -> Topic:
    for field, value in (("symbol", symbol), ("depth", depth), ("interval", interval)):
        if value is not None:
            raise TopicError(field, f"private channel {channel!r} takes no {field}")
    prefix = PREFIXES[channel]
    if category is None:
        return Topic(channel, PRIVATE, prefix, None)
    allowed = PRIVATE_CATEGORIES[channel]
    if category not in allowed:
        hint = f"use one of {_list(allowed)} or none" if allowed else "it takes no category"
        raise TopicError("category", f"private channel {channel!r} has no {category!r} variant; {hint}")
    return Topic(channel, PRIVATE, f"{prefix}.{category}", category)


# Longest prefix first: orderbook.rpi.X is not an orderbook of depth "rpi", execution.fast not execution.
_PUBLIC_BY_PREFIX = sorted(((PREFIXES[c], c) for c in PUBLIC_CHANNELS), key=lambda p: -len(p[0]))
_PRIVATE_BY_PREFIX = sorted(((PREFIXES[c], c) for c in PRIVATE_CHANNELS), key=lambda p: -len(p[0]))


def split_private(name: str) -> tuple[str, str | None] | None:
    """``execution.fast.linear`` -> ("execution_fast", "linear"); ``order`` -> ("order", None);
    None when ``name`` is no private topic the gateway knows."""
    for prefix, channel in _PRIVATE_BY_PREFIX:
        if name == prefix:
            return channel, None
        if name.startswith(prefix + "."):
            category = name[len(prefix) + 1:]
            if category in PRIVATE_CATEGORIES[channel]:
                return channel, category
    return None


def split_public(name: str) -> tuple[str, str, str] | None:
    """``orderbook.50.BTCUSDT`` -> ("orderbook", "50", "BTCUSDT"): (channel, depth or interval or "",
    symbol); everything after the known prefix (and level) is the symbol, dots included."""
    for prefix, channel in _PUBLIC_BY_PREFIX:
        if not name.startswith(prefix + "."):
            continue
        rest = name[len(prefix) + 1:]
        level = ""
        if channel in ("orderbook", "kline"):
            level, sep, rest = rest.partition(".")
            if not sep:
                return None
        return (channel, level, rest) if rest else None
    return None


def topic_from_name(endpoint: str, name: str) -> Topic:
    """Inverse of build_topic, for topics read back from storage or a frame. Raises TopicError."""
    if endpoint == PRIVATE:
        parts = split_private(name)
        if parts is None:
            raise TopicError("topic", f"unknown private topic {name!r}")
        return build_topic(parts[0], parts[1])
    parts = split_public(name)
    if parts is None:
        raise TopicError("topic", f"unknown topic {name!r}")
    channel, level, symbol = parts
    if channel == "trades" and endpoint == "option":
        return Topic("trades", endpoint, name, endpoint, symbol)       # the base coin
    if channel == "orderbook":
        if not level.isdigit() or level != str(int(level)):
            raise TopicError("depth", f"bad depth in {name!r}")
        return build_topic("orderbook", endpoint, symbol, depth=int(level))
    if channel == "kline":
        return build_topic("kline", endpoint, symbol, interval=level)
    return build_topic(channel, endpoint, symbol)


def _list(values) -> str:
    return ", ".join(str(v) for v in values)
