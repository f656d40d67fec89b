"""Books and tickers that heal: which streams consumers hold wrong, and when to ask ingest for a
fresh snapshot. Pure (times are passed in); the service sends the requests (control op ``resync``).

An order-book delta (or a linear/inverse ticker delta whose fields the publisher could not
merge) that consumers never get leaves their copy wrong until the next snapshot, and Bybit
sends a snapshot only when a topic is subscribed. So a stream is *broken* when one of its
frames is dropped here (too old, buffer full), when frames from ingest went missing (a
``seq_jump``), or when a delta comes with no snapshot seen since this publisher started
(after a restart). A broken stream is asked for once at once, then again every ``RETRY_S``
while no snapshot arrives; never more often than ``MIN_INTERVAL_S`` per topic. Plain order books
and tickers are asked for up to every ``BOOK_INTERVAL_S``: ingest answers them from its own copy
of the book or ticker, no request to Bybit (RPI books are resubscribed).
"""
from __future__ import annotations

MIN_INTERVAL_S = 0.5      # per topic: at most two requests a second
BOOK_INTERVAL_S = 0.1     # the same for a plain order book or a ticker (ingest's copy, no resubscribe)
RETRY_S = 2.0             # asked, and still no snapshot this long after: ask again
MAX_STREAMS = 100_000     # streams remembered (the subscribed books and tickers: far fewer)


class Healer:
    __slots__ = ("ok", "broken", "by_key", "last_ask", "requests", "healed")

    def __init__(self) -> None:
        self.ok: set[str] = set()                    # "endpoint:topic" with a snapshot, nothing lost since
        self.broken: dict[str, list] = {}            # stream -> [reason, since_s, asked_s or None]
        self.by_key: dict[str, set[str]] = {}        # routing key -> streams (books of several depths share one)
        self.last_ask: dict[str, float] = {}
        self.requests = 0                            # topics asked for, in total
        self.healed = 0                              # broken streams that got their snapshot

    def register(self, stream: str, routing_key: str) -> None:
        if stream not in self.ok and stream not in self.broken:
            if len(self.by_key) >= MAX_STREAMS:
                self.by_key.clear()
            self.by_key.setdefault(routing_key, set()).add(stream)

    def frame(self, stream: str, snapshot: bool, now_s: float) -> bool:
        """A frame of a book/ticker stream goes out (to be published); True for a snapshot that
        heals a broken stream."""
        if snapshot:
            healed = self.broken.pop(stream, None) is not None
            if healed:
                self.healed += 1
            if len(self.ok) < MAX_STREAMS:
                self.ok.add(stream)
            return healed
        if stream not in self.ok and stream not in self.broken:
            self.broken[stream] = ["no snapshot since the publisher started", now_s, None]
        return False

    def lost(self, stream: str, reason: str, now_s: float) -> None:
        """A frame of ``stream`` will never reach consumers."""
        self.ok.discard(stream)
        if stream not in self.broken:
            self.broken[stream] = [reason, now_s, None]

    def lost_key(self, routing_key: str, reason: str, now_s: float) -> None:
        """An event of ``routing_key`` was dropped: every stream published under it is broken."""
        for stream in self.by_key.get(routing_key, ()):
            self.lost(stream, reason, now_s)

    def due(self, now_s: float) -> list[tuple[str, str]]:
        """(stream, reason) to ask for now; marks them asked."""
        out = []
        for stream, entry in self.broken.items():
            asked = entry[2]
            if asked is None:
                if now_s - self.last_ask.get(stream, -1e18) < _interval(stream):
                    continue
            elif now_s - asked < RETRY_S:
                continue
            entry[2] = self.last_ask[stream] = now_s
            out.append((stream, entry[0]))
        if out:
            self.requests += len(out)
            if len(self.last_ask) > MAX_STREAMS:
                self.last_ask = {k: v for k, v in self.last_ask.items() if k in self.broken}
        return out

    def unasked(self, streams: list[str]) -> None:
        """The request for ``streams`` could not be sent: ask again at the next chance."""
        for stream in streams:
            entry = self.broken.get(stream)
            if entry is not None:
                entry[2] = None
                self.last_ask.pop(stream, None)

    def status(self) -> dict:
        return {"requests": self.requests, "healed": self.healed, "awaiting_snapshot": len(self.broken),
                "awaiting": dict(list({s: e[0] for s, e in self.broken.items()}.items())[:20])}


def _interval(stream: str) -> float:
    """``endpoint:topic`` -> the least time between two requests for it."""
    topic = stream.partition(":")[2]
    kept = topic.startswith("tickers.") or (topic.startswith("orderbook.") and not topic.startswith("orderbook.rpi"))
    return BOOK_INTERVAL_S if kept else MIN_INTERVAL_S
