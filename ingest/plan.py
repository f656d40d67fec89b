"""Bybit's subscription limits as pure planning functions (PROTOCOL.md 4.3).

- spot: at most 10 args per subscribe request;
- option: at most 2,000 topics per connection;
- every public connection: at most 21,000 characters of topic names;
- at most 500 new connections per 5 minutes per IP and domain (ConnectionBudget).
"""
from __future__ import annotations

import collections
import time

from common.topics import MAX_ARGS_PER_REQUEST, MAX_TOPIC_CHARS_PER_CONNECTION, MAX_TOPICS_PER_CONNECTION, PRIVATE

# Requests on other endpoints have no documented arg limit; keep them modest anyway so
# one bad topic costs a small retry and acks come back quickly.
DEFAULT_ARGS_PER_REQUEST = 50


def batches(endpoint: str, topics: list[str]) -> list[list[str]]:
    size = MAX_ARGS_PER_REQUEST.get(endpoint, DEFAULT_ARGS_PER_REQUEST)
    return [topics[i:i + size] for i in range(0, len(topics), size)]


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


def backoff_delay(attempt: int, cap: float, rand: float, base: float = 0.5) -> float:
    """Attempt 0 retries at once; then exponential with full jitter in [50%, 100%], capped."""
    if attempt <= 0:
        return 0.0
    return min(cap, base * (2 ** (attempt - 1))) * (0.5 + rand / 2)
