"""How old market data may be when it goes out, and the queues that enforce it. Pure (no I/O;
the caller passes the time).

Market data is worth little once it is late: a book or ticker a second old misleads more than
it informs. Each market class has an age bound, measured from ingest's receive time
(``recv_ns``); past it an event is dropped instead of published. Account and system events have
no bound: they are never dropped.

``MarketQueues`` holds waiting market items one FIFO per class. The class with the shortest
bound goes first (books and tickers before trades; between equal bounds the older head), and
when memory is full the oldest item of the class with the longest bound is dropped: so a book
received now is never stuck behind seconds of trades, whatever the load. (Earliest deadline
first, tried before, fails exactly under overload: trades about to expire always had the
earlier deadline, a fresh book waited behind them until it expired too, and a flood could
deliver no ticker at all.) Expired heads are taken out first.
"""
from __future__ import annotations

from collections import deque

from common.classify import MARKET_CLASSES

BOOK_CLASSES = frozenset({"orderbook", "orderbook_rpi"})
MERGED_TICKERS = frozenset({"linear", "inverse"})   # endpoints whose ticker deltas carry only what changed
# class -> the setting group that bounds it (MARKET_MAX_AGE_MS_{GROUP})
GROUPS = {"orderbook": "books", "orderbook_rpi": "books", "tickers": "tickers", "trades": "trades",
          "liquidations": "liquidations"}
NEVER = 1 << 62           # the deadline of an item with no bound or an unknown receive time
TOO_OLD, BUFFER_FULL = "too_old", "buffer_full"
SUPERSEDED = "superseded"     # a book's frames still waiting when a snapshot that replaces them is handed off


def age_bounds(books_ms: int = 500, tickers_ms: int = 500, trades_ms: int = 5_000,
               liquidations_ms: int = 30_000, other_ms: int = 5_000) -> dict[str, int]:
    """{market class: bound in ns}; classes not listed (account, system) have none."""
    ms = {"books": books_ms, "tickers": tickers_ms, "trades": trades_ms, "liquidations": liquidations_ms}
    return {cls: ms.get(GROUPS.get(cls, ""), other_ms) * 1_000_000 for cls in MARKET_CLASSES}


def too_old(bounds: dict[str, int], cls: str, recv_ns: int, now_ns: int) -> bool:
    """Whether an item of ``cls`` received at ``recv_ns`` is past its bound at ``now_ns``."""
    bound = bounds.get(cls)
    return bound is not None and recv_ns > 0 and now_ns - recv_ns > bound


def needs_snapshot(endpoint: str, topic: str) -> bool:
    """Whether losing one frame of this topic leaves consumers' state wrong until the next
    snapshot: order books (not depth 1, which is snapshots only) and linear/inverse tickers
    (deltas carry only the fields that changed)."""
    if topic.startswith("orderbook."):
        return not topic.startswith("orderbook.1.")
    return topic.startswith("tickers.") and endpoint in MERGED_TICKERS


class MarketQueues:
    """Waiting market items, one FIFO per class, taken shortest bound first (``pop``); the
    longest-bound class gives way when memory is full (``pop_victim``).

    An entry is ``(deadline_ns, size, cls, item)``; ``size`` counts towards ``bytes``. A tuple, not
    a list: a tuple of bytes, strings and ints (ingest's waiting frames) is left alone by Python's
    garbage collector, which otherwise walked 100,000 waiting frames again and again in a flood.
    """

    __slots__ = ("bounds", "queues", "n", "bytes")

    def __init__(self, bounds: dict[str, int]):
        self.bounds = bounds
        self.queues: dict[str, deque] = {}
        self.n = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def _entry(self, cls: str, recv_ns: int, size: int, item) -> tuple:
        bound = self.bounds.get(cls)
        return (recv_ns + bound if bound is not None and recv_ns > 0 else NEVER, size, cls, item)

    def append(self, cls: str, recv_ns: int, size: int, item) -> None:
        q = self.queues.get(cls)
        if q is None:
            q = self.queues[cls] = deque()
        q.append(self._entry(cls, recv_ns, size, item))
        self.n += 1
        self.bytes += size

    def appendleft(self, cls: str, recv_ns: int, size: int, item) -> None:
        """Back in front of its class (an item taken out that could not go)."""
        q = self.queues.get(cls)
        if q is None:
            q = self.queues[cls] = deque()
        q.appendleft(self._entry(cls, recv_ns, size, item))
        self.n += 1
        self.bytes += size

    def put_back(self, entries: list[tuple]) -> None:
        """Entries just taken (``pop``, in that order) back where they were."""
        for entry in reversed(entries):
            self.queues[entry[2]].appendleft(entry)
            self.n += 1
            self.bytes += entry[1]

    def next_queue(self) -> deque | None:
        """The class queue to send from: the shortest bound, between equal bounds the earliest
        head (None when empty)."""
        return self._pick(1)

    def _pick(self, sign: int) -> deque | None:
        """The non-empty class queue with the smallest ``sign * bound`` (1: shortest bound,
        -1: longest), between equal bounds the one with the earliest head."""
        best, best_b, best_d, bounds = None, 0, 0, self.bounds
        for cls, q in self.queues.items():
            if q:
                b, d = sign * bounds.get(cls, NEVER), q[0][0]
                if best is None or b < best_b or (b == best_b and d < best_d):
                    best, best_b, best_d = q, b, d
        return best

    def take(self, q: deque) -> tuple:
        """Remove and return the head entry of ``q`` (from ``next_queue``)."""
        entry = q.popleft()
        self.n -= 1
        self.bytes -= entry[1]
        return entry

    def pop(self) -> tuple | None:
        """The next entry to send, removed (None when empty)."""
        q = self.next_queue()
        return None if q is None else self.take(q)

    def pop_victim(self) -> tuple | None:
        """The entry to drop when memory is full, removed: the oldest of the class with the
        longest bound (trades before books), between equal bounds the earliest head."""
        q = self._pick(-1)
        return None if q is None else self.take(q)

    def pop_many(self, n: int) -> list[tuple]:
        """Up to ``n`` entries, removed, in the order ``n`` calls of ``pop`` would give."""
        return self._run(1, n, -1, -1)

    def trim(self, count: int, size: int) -> list[tuple]:
        """The entries ``pop_victim`` would give up, removed, until at most ``count`` entries and
        ``size`` bytes are left."""
        return self._run(-1, NEVER, count, size)

    def _run(self, sign: int, most: int, count: int, size: int) -> list[tuple]:
        """Up to ``most`` entries, taken as repeated ``_pick(sign)`` + ``take`` would take them while
        more than ``count`` entries or ``size`` bytes are left, picking the queue once per run: its
        heads keep winning until it is empty, or (another queue with the same bound) until its head
        is no earlier than that queue's. Two queues of one bound (books and tickers, which an
        exchange interleaves frame by frame) are merged on their heads in one run. A flood takes
        or drops a frame for every one read: a pick per frame was a tenth of ingest's CPU, and with
        books and tickers alternating a pick per frame cost six times the merge."""
        out, bounds, queues = [], self.bounds, self.queues
        n, nbytes = self.n, self.bytes
        append = out.append
        while len(out) < most and (n > count or nbytes > size):
            q = self._pick(sign)
            if q is None:
                break
            b = bounds.get(q[0][2], NEVER)
            rivals = [o for c, o in queues.items() if o and o is not q and bounds.get(c, NEVER) == b]
            if len(rivals) == 1:
                # between equal heads _pick takes the queue it meets first (dict order)
                r = rivals[0]
                r_first = next(o for o in queues.values() if o is q or o is r) is r
                while True:
                    entry = q.popleft()
                    n -= 1
                    nbytes -= entry[1]
                    append(entry)
                    if len(out) >= most or (n <= count and nbytes <= size) or not q or not r:
                        break
                    d, e = q[0][0], r[0][0]
                    if e < d or (e == d and r_first):
                        q, r, r_first = r, q, not r_first
            else:
                rival = min((o[0][0] for o in rivals), default=NEVER + 1)
                popleft = q.popleft
                while True:
                    entry = popleft()
                    n -= 1
                    nbytes -= entry[1]
                    append(entry)
                    if not q or q[0][0] >= rival or len(out) >= most or (n <= count and nbytes <= size):
                        break
            self.n, self.bytes = n, nbytes
        return out

    def remove(self, cls: str, pred) -> list[tuple]:
        """Remove and return the entries of ``cls`` whose item ``pred`` accepts, the rest kept in order."""
        q = self.queues.get(cls)
        if not q:
            return []
        out, keep = [], []
        for e in q:
            (out if pred(e[3]) else keep).append(e)
        if out:
            q.clear()
            q.extend(keep)
            self.n -= len(out)
            self.bytes -= sum(e[1] for e in out)
        return out

    def expired(self, now_ns: int) -> list[tuple]:
        """Remove and return every entry whose deadline has passed (the heads of each class:
        within a class entries arrive in receive order)."""
        out = []
        for q in self.queues.values():
            while q and q[0][0] < now_ns:
                entry = q.popleft()
                self.n -= 1
                self.bytes -= entry[1]
                out.append(entry)
        return out
