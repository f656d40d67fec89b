"""Event classification: which gateway event class and routing key a Bybit push gets.

Pure functions; the publisher and persister call them per frame, so they do no I/O.
Topics are read by their known prefix, never by splitting on every dot: an option
symbol may hold one (``tickers.XRP-30OCT26-0.4-P-USDT``).
"""
from __future__ import annotations

from common.topics import STATUS_TOPIC, split_public

MARKET_CLASSES = frozenset({"trades", "tickers", "orderbook", "klines", "liquidations",
                            "orderbook_rpi", "price_limits", "insurance", "adl_alerts"})
ACCOUNT_CLASSES = frozenset({"order_status", "executions", "positions", "balances", "executions_fast", "greeks"})
EVENT_CLASSES = ("trades", "tickers", "orderbook", "klines", "liquidations",
                 "order_status", "executions", "positions", "balances", "system",
                 "orderbook_rpi", "price_limits", "insurance", "adl_alerts", "executions_fast", "greeks",
                 "exchange_status")
# Published persistent (delivery mode 2): account data, the gateway's notices and Bybit's.
DURABLE_CLASSES = ACCOUNT_CLASSES | {"system", "exchange_status"}
# Bybit's maintenance and incident notices (system.status): one routing key.
EXCHANGE_STATUS_KEY = "exchange_status.bybit"

# Topic head (text before the first dot) -> event class; two heads have a longer form.
_HEAD = {
    "publicTrade": "trades",
    "tickers": "tickers",
    "orderbook": "orderbook",
    "kline": "klines",
    "allLiquidation": "liquidations",
    "priceLimit": "price_limits",
    "insurance": "insurance",
    "adlAlert": "adl_alerts",
    "order": "order_status",
    "execution": "executions",
    "position": "positions",
    "wallet": "balances",
    "greeks": "greeks",
}


class UnknownTopic(ValueError):
    pass


def event_class(topic: str) -> str:
    """``orderbook.50.BTCUSDT`` -> ``orderbook``; ``orderbook.rpi.BTCUSDT`` -> ``orderbook_rpi``;
    ``execution.fast.linear`` -> ``executions_fast``. Raises UnknownTopic."""
    head, _, rest = topic.partition(".")
    if head == "orderbook" and rest.startswith("rpi."):
        return "orderbook_rpi"
    if head == "execution" and (rest == "fast" or rest.startswith("fast.")):
        return "executions_fast"
    if topic == STATUS_TOPIC:
        return "exchange_status"
    try:
        return _HEAD[head]
    except KeyError:
        raise UnknownTopic(f"no event class for topic {topic!r}") from None


def topic_symbol(topic: str) -> str | None:
    """The symbol (or pool, or option base coin) a public topic names: everything after its
    known prefix, dots included. None for private topics and system.status."""
    parts = split_public(topic)
    return parts[2] if parts else None


def is_account(cls: str) -> bool:
    return cls in ACCOUNT_CLASSES


def routing_word(text: str) -> str:
    """One routing-key word: a dot would split it in two for AMQP topic matching, so it
    becomes an underscore. Reversible: symbols, categories and pools never hold an underscore."""
    return text.replace(".", "_")


def word_text(word: str) -> str:
    """Inverse of ``routing_word``: ``XRP-30OCT26-0_4-P-USDT`` -> ``XRP-30OCT26-0.4-P-USDT``."""
    return word.replace("_", ".")


def routing_key(cls: str, category: str, symbol: str | None = None) -> str:
    """``{class}.{category}.{symbol}`` for market data, ``{class}.{category}`` (or
    ``{class}.{accountType}``) for account data; each word through ``routing_word``."""
    parts = [cls, routing_word(category)]
    if symbol:
        parts.append(routing_word(symbol))
    return ".".join(parts)


def public_route(endpoint: str, topic: str) -> tuple[str, str | None, str | None, str]:
    """(class, category, symbol, routing key) of a public topic on ``endpoint``'s socket.
    Raises UnknownTopic; an account topic here is the caller's to refuse."""
    cls = event_class(topic)
    if cls == "exchange_status":
        return cls, None, None, EXCHANGE_STATUS_KEY
    symbol = topic_symbol(topic)
    return cls, endpoint, symbol, routing_key(cls, endpoint, symbol)


def queue_name(cls: str) -> str:
    return f"ws-gateway.{cls}"


EXCHANGE = "ws-gateway.events"
