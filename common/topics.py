"""What can be subscribed: the REST API's channels mapped to Bybit topic names.

Pure functions over PROTOCOL.md's tables (sections 4, 6, 7), shared by the API
(validation) and ingest (refusing before anything is sent to Bybit).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PUBLIC_CATEGORIES = ("spot", "linear", "inverse", "option")
PRIVATE = "private"                       # the endpoint key of the private stream
ENDPOINTS = (*PUBLIC_CATEGORIES, PRIVATE)

PUBLIC_CHANNELS = ("trades", "tickers", "orderbook", "kline", "liquidation")
PRIVATE_CHANNELS = ("order", "execution", "position", "wallet")
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
}
# Category-scoped private topics (order.linear ...); position has no spot, wallet none.
PRIVATE_CATEGORIES = {
    "order": PUBLIC_CATEGORIES,
    "execution": PUBLIC_CATEGORIES,
    "position": ("linear", "inverse", "option"),
    "wallet": (),
}
# Uppercase letters, digits and dashes: BTCUSDT, BTC-31JUL26-120000-C, BTCUSDH23.
SYMBOL_RE = re.compile(r"[A-Z0-9][A-Z0-9-]{1,39}")
# Spot allows at most 10 args per subscribe request; option 2,000 topics per connection;
# every public connection at most 21,000 characters of topic names (PROTOCOL.md 4.3).
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
        raise TopicError("symbol", f"symbol is required for channel {channel!r}")
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        raise TopicError("symbol", "symbol must be 2-40 uppercase letters, digits or '-' (e.g. BTCUSDT)")
    if channel != "orderbook" and depth is not None:
        raise TopicError("depth", "depth applies to channel 'orderbook' only")
    if channel != "kline" and interval is not None:
        raise TopicError("interval", "interval applies to channel 'kline' only")
    if channel == "trades":
        # Option trades are per base coin: publicTrade.BTC (PROTOCOL.md 6.1).
        name = f"publicTrade.{symbol.split('-')[0] if category == 'option' else symbol}"
    elif channel == "tickers":
        name = f"tickers.{symbol}"
    elif channel == "orderbook":
        if depth is None:
            raise TopicError("depth", f"depth is required for orderbook; {category} allows {_list(DEPTHS[category])}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth not in DEPTHS[category]:
            raise TopicError("depth", f"depth {depth!r} is not valid on {category}; allowed: {_list(DEPTHS[category])}")
        name = f"orderbook.{depth}.{symbol}"
    elif channel == "kline":
        if interval is None:
            raise TopicError("interval", f"interval is required for kline; allowed: {_list(INTERVALS)}")
        if interval not in INTERVALS:
            raise TopicError("interval", f"interval {interval!r} is not valid; allowed: {_list(INTERVALS)}")
        name = f"kline.{interval}.{symbol}"
    else:  # liquidation
        name = f"allLiquidation.{symbol}"
    return Topic(channel, category, name, category, symbol, depth, interval)


def _private_topic(channel, category, symbol, depth, interval) -> Topic:
    for field, value in (("symbol", symbol), ("depth", depth), ("interval", interval)):
        if value is not None:
            raise TopicError(field, f"private channel {channel!r} takes no {field}")
    if category is None:
        return Topic(channel, PRIVATE, channel, None)
    allowed = PRIVATE_CATEGORIES[channel]
    if category not in allowed:
        hint = f"use one of {_list(allowed)} or none" if allowed else "it takes no category"
        raise TopicError("category", f"private channel {channel!r} has no {category!r} variant; {hint}")
    return Topic(channel, PRIVATE, f"{channel}.{category}", category)


def topic_from_name(endpoint: str, name: str) -> Topic:
    """Inverse of build_topic, for topics read back from storage or a frame."""
    parts = name.split(".")
    if endpoint == PRIVATE:
        category = parts[1] if len(parts) > 1 else None
        return build_topic(parts[0], category)
    head = parts[0]
    if head == "publicTrade":
        return Topic("trades", endpoint, name, endpoint, parts[1])
    if head == "tickers":
        return build_topic("tickers", endpoint, parts[1])
    if head == "orderbook":
        return build_topic("orderbook", endpoint, parts[2], depth=int(parts[1]))
    if head == "kline":
        return build_topic("kline", endpoint, parts[2], interval=parts[1])
    if head == "allLiquidation":
        return build_topic("liquidation", endpoint, parts[1])
    raise TopicError("topic", f"unknown topic {name!r}")


def _list(values) -> str:
    return ", ".join(str(v) for v in values)
