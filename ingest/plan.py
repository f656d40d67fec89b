"""Bybit's subscription limits as pure planning functions (docs/bybit.md#subscription-limits).

- spot: at most 10 args per subscribe request;
- option: at most 2,000 topics per connection;
- every public connection: at most 21,000 characters of topic names;
- at most 500 new connections per 5 minutes per IP and domain (ConnectionBudget).
"""
from __future__ import annotations

import collections
import time

from common.topics import (MAX_ARGS_PER_REQUEST, MAX_TOPIC_CHARS_PER_CONNECTION, MAX_TOPICS_PER_CONNECTION, PREFIXES,
                           PRIVATE, PRIVATE_CATEGORIES, TWO_FORM_CHANNELS, split_private)

# Requests on other endpoints have no documented arg limit; keep them modest anyway so
# one bad topic costs a small retry and acks come back quickly.
DEFAULT_ARGS_PER_REQUEST = 50


# Private channels with an all-in-one topic (order, execution.fast) and category-scoped ones
# (order.linear, execution.fast.linear): Bybit refuses the two forms in one subscribe request,
# and both held would push each event twice.
ALL_IN_ONE = frozenset(PREFIXES[c] for c in TWO_FORM_CHANNELS)


def batches(endpoint: str, topics: list[str]) -> list[list[str]]:
    """Subscribe requests for ``topics``: within the endpoint's arg limit, and on the private
    stream all-in-one topics never in the same request as category-scoped ones."""
    size = MAX_ARGS_PER_REQUEST.get(endpoint, DEFAULT_ARGS_PER_REQUEST)
    groups = [topics]
    if endpoint == PRIVATE:
        whole = [t for t in topics if t in ALL_IN_ONE]
        groups = [whole, [t for t in topics if t not in ALL_IN_ONE]]
    return [group[i:i + size] for group in groups for i in range(0, len(group), size)]


def other_private_forms(name: str) -> list[str]:
    """The topics of the other form of a two-form private channel: ``order`` -> ``order.spot`` ...
    ``order.option``; ``order.linear`` -> ``order``; ``execution.fast.linear`` -> ``execution.fast``
    (not ``execution``: a channel of its own); anything else -> []."""
    parts = split_private(name)
    if parts is None or parts[0] not in TWO_FORM_CHANNELS:
        return []
    channel, category = parts
    prefix = PREFIXES[channel]
    if category is None:
        return [f"{prefix}.{c}" for c in PRIVATE_CATEGORIES[channel]]
    return [prefix]


def private_form_clash(endpoint: str, name: str, is_held) -> str | None:
    """Why ``name`` cannot be held while ``is_held(other)`` says a topic of the other form of its
    channel is; None when it can."""
    if endpoint != PRIVATE:
        return None
    held = [other for other in other_private_forms(name) if is_held(other)]
    if not held:
        return None
    return (f"{name} conflicts with {', '.join(held)}, already held: Bybit refuses an all-in-one private topic "
            f"and a category-scoped one together and would push each event under both; remove one")


def has_room(endpoint: str, topics: list[str] | set[str], new_topic: str) -> bool:
    """Whether ``new_topic`` fits on a connection already holding ``topics``."""
    if endpoint == PRIVATE:
        return True
    limit = MAX_TOPICS_PER_CONNECTION.get(endpoint)
    if limit is not None and len(topics) + 1 > limit:
        return False
    chars = sum(len(t) for t in topics) + len(new_topic)
    return chars <= MAX_TOPIC_CHARS_PER_CONNECTION


class ConnectionBudget:
    """Sliding-window cap on new connections (Bybit: 500 per 5 minutes per IP/domain).

    ``delay()`` says how long to wait before the next connection may open; ``take()``
    records one. Shared by every connection of the process, so no reconnect storm
    can exceed it, whatever happens.
    """

    def __init__(self, limit: int, window_s: float = 300.0, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window_s, clock
        self.opened: collections.deque[float] = collections.deque()

    def delay(self) -> float:
        now = self.clock()
        while self.opened and now - self.opened[0] >= self.window:
            self.opened.popleft()
        if len(self.opened) < self.limit:
            return 0.0
        return self.window - (now - self.opened[0])

    def take(self) -> None:
        self.opened.append(self.clock())


