"""Event classification: which gateway event class and routing key a Bybit push gets.

Pure functions; the publisher and persister call them per frame, so they do no I/O.
"""
from __future__ import annotations

EVENT_CLASSES = ("trades", "tickers", "orderbook", "klines", "liquidations",
                 "order_status", "executions", "positions", "balances", "system")
MARKET_CLASSES = frozenset({"trades", "tickers", "orderbook", "klines", "liquidations"})
ACCOUNT_CLASSES = frozenset({"order_status", "executions", "positions", "balances"})

# Topic prefix (text before the first dot) -> event class.
_PREFIX = {
    "publicTrade": "trades",
    "tickers": "tickers",
    "orderbook": "orderbook",
    "kline": "klines",
    "allLiquidation": "liquidations",
    "order": "order_status",
    "execution": "executions",
    "position": "positions",
    "wallet": "balances",
}


class UnknownTopic(ValueError):
    pass


def event_class(topic: str) -> str:
    """``orderbook.50.BTCUSDT`` -> ``orderbook``; raises UnknownTopic."""
    prefix = topic.split(".", 1)[0]
    try:
        return _PREFIX[prefix]
    except KeyError:
        raise UnknownTopic(f"no event class for topic {topic!r}") from None


def topic_symbol(topic: str) -> str | None:
    """The symbol a public topic names (last dot-separated part), None for private topics."""
    prefix = topic.split(".", 1)[0]
    if _PREFIX.get(prefix) in ACCOUNT_CLASSES:
        return None
    return topic.rsplit(".", 1)[-1]


def is_account(cls: str) -> bool:
    return cls in ACCOUNT_CLASSES


def routing_key(cls: str, category: str, symbol: str | None = None) -> str:
    """DESIGN.md contract 1: ``{class}.{category}.{symbol}`` for market data,
    ``{class}.{category}`` (or ``{class}.{accountType}``) for account data.

    Dots inside words would break topic matching, so they become underscores.
    """
    parts = [cls, category.replace(".", "_")]
    if symbol:
        parts.append(symbol.replace(".", "_"))
    return ".".join(parts)


def queue_name(cls: str) -> str:
    return f"ws-gateway.{cls}"


EXCHANGE = "ws-gateway.events"
