"""The publisher's bounded buffer: events waiting for the broker, in arrival order.

ingest never waits for us, so while RabbitMQ is slow or away events collect
here. Two FIFO deques: account and system events leave first, market events after
them; each keeps its arrival order. Past ``bound`` events (or bytes) in memory:

- market events are dropped, the longest-bound class's oldest first (trades before books),
  counted per class (and per stream, so the outage notice can say which ranges consumers
  will never see);
- a market event older than its class's age bound (``max_age_ns``, common/freshness.py)
  is dropped when its turn comes instead of being published, counted the same way under
  reason ``too_old``; market events wait one FIFO per class and the class with the shorter
  bound leaves first, so fresh books are not held behind seconds of trades;
- account events are never dropped: once memory is full they go to an
  append-only spool file and come back, in order, as memory frees up.

Nacked or unconfirmed events come back through ``requeue`` with their original
sequence, so they go out again before anything newer.
"""
from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from pathlib import Path

from common.freshness import BUFFER_FULL, SUPERSEDED, TOO_OLD, MarketQueues
from common.runtime import LineSpool
from publisher.events import Event

SPOOL_CHUNK = 1000
MAX_DROP_STREAMS = 1000


class EventSpool:
    """Account events on a ``LineSpool`` (common/runtime.py: one orjson record per line).

    The file is replayed from its start after a restart (at-least-once: the same
    message_id may be published twice) and truncated only once every event read
    from it has been confirmed by the broker. A line a crash cut short is skipped.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lines = LineSpool(path)
        self.unconfirmed = 0               # read back, not yet confirmed
        self.corrupt = 0

    @property
    def depth(self) -> int:
        """Written, not yet read back."""
        return self._lines.depth

    @property
    def idle(self) -> bool:
        return self.depth == 0 and self.unconfirmed == 0

    def append(self, event: Event) -> None:
        self._lines.append([event.to_record()])

    def read(self, limit: int) -> list[Event]:
        out: list[Event] = []
        for line in self._lines.read(limit):
            try:
                ev = Event.from_record(line)
            except (ValueError, KeyError, TypeError):      # a torn line from a crash
                self.corrupt += 1
                continue
            ev.extra["spool"] = True
            out.append(ev)
        self.unconfirmed += len(out)
        return out

    def confirmed(self, n: int) -> None:
        self.unconfirmed -= n
        if self.idle:
            self._lines.truncate()

    def rewrite_front(self, events: list[Event]) -> None:
        """At shutdown: ``events`` (older than anything unread here) first, then the unread rest."""
        self._lines.replace(b"".join(ev.to_record() + b"\n" for ev in events) + self._lines.unread())
        self.unconfirmed = 0

    def close(self) -> None:
        self._lines.close()


OVERHEAD = 700    # bytes an Event costs beyond its body (dataclass, headers dict, strings)


def _size(ev: Event) -> int:
    return len(ev.body) + OVERHEAD


class Outbox:
    def __init__(self, bound: int, spool: EventSpool | None = None, clock=time.time_ns, bound_bytes: int = 48 << 20,
                 max_age_ns: dict[str, int] | None = None):
        """``bound`` events and ``bound_bytes`` bytes in memory, whichever comes first;
        ``max_age_ns``: the age bound per market class (None: no bound)."""
        self.bound = bound
        self.bound_bytes = bound_bytes
        self.bytes = 0
        self.spool = spool
        self._market = MarketQueues(max_age_ns or {})
        self._account: deque[Event] = deque()
        # Sequence numbers keep growing across restarts (they start at the wall clock),
        # so events read back from an old spool never wait behind newer ones.
        self._seq = itertools.count(clock())
        self.dropped: Counter[str] = Counter()
        self.dropped_by: dict[str, Counter[str]] = {BUFFER_FULL: Counter(), TOO_OLD: Counter(),
                                                    SUPERSEDED: Counter()}
        self.drop_ranges: dict[str, list[int]] = {}   # stream -> [first_seq, last_seq, count] (buffer full)
        self.age_ranges: dict[str, list[int]] = {}    # the same for events too old
        self.on_drop = None       # (event class, stream, reason) for each market event dropped
        if spool is not None and spool.depth:
            self._refill()

    def __len__(self) -> int:
        return len(self._market) + len(self._account) + (self.spool.depth if self.spool else 0)

    @property
    def in_memory(self) -> int:
        return len(self._market) + len(self._account)

    @property
    def market_waiting(self) -> int:
        return len(self._market)

    @property
    def full(self) -> bool:
        """Over a bound: drop market events until it isn't."""
        return self.in_memory > self.bound or self.bytes > self.bound_bytes

    @property
    def at_limit(self) -> bool:
        """No room for one more in memory: account events go to the spool."""
        return self.in_memory >= self.bound or self.bytes >= self.bound_bytes

    @property
    def spool_depth(self) -> int:
        return self.spool.depth if self.spool else 0

    def add(self, event: Event, front: bool = False) -> None:
        """Queue a new event (``front``: ahead of everything, e.g. an outage notice)."""
        event.seq = -1 if front else next(self._seq)
        if event.durable:
            sp = self.spool
            # Once spooling, every account event goes to the spool until it is drained: order.
            if not front and sp is not None and (sp.depth > 0 or (self.at_limit and not self._market)):
                sp.append(event)
                return
            self.bytes += _size(event)
            if front:
                self._account.appendleft(event)
            else:
                self._account.append(event)
        else:
            size = _size(event)
            self.bytes += size
            (self._market.appendleft if front else self._market.append)(event.event_class, event.recv_ns, size, event)
        # A notice put in front may exceed the bound by one: dropping for it would
        # make the notice's own drop counts stale.
        while not front and self.full and self._market:
            self._drop(self._market.pop_victim()[3], BUFFER_FULL)

    def heal(self, event: Event) -> None:
        """A book or ticker snapshot for a stream consumers hold wrong: the stream's events still waiting
        are dropped as superseded (published after it they would be applied to it; their numbers
        stay unused, a hole the snapshot closes at once, so they ask for no further snapshot), and
        it goes before every market event, in the lane that is never dropped (never spooled)."""
        for entry in self._market.remove(event.event_class, lambda ev: ev.routing_key == event.routing_key):
            self.bytes -= _size(entry[3])
            self.dropped[event.event_class] += 1
            self.dropped_by[SUPERSEDED][event.event_class] += 1
        event.seq = next(self._seq)
        self.bytes += _size(event)
        self._account.append(event)

    def _drop(self, ev: Event, reason: str) -> None:
        self.bytes -= _size(ev)
        self.note_drop(ev.event_class, ev.stream, ev.stream_seq, reason)

    def note_drop(self, cls: str, stream: str, stream_seq: int, reason: str) -> None:
        """Count a market event dropped (here, or before it was made: too old at intake)."""
        self.dropped[cls] += 1
        self.dropped_by[reason][cls] += 1
        ranges = self.age_ranges if reason == TOO_OLD else self.drop_ranges
        r = ranges.get(stream)
        if r is not None:
            r[0], r[1], r[2] = min(r[0], stream_seq), max(r[1], stream_seq), r[2] + 1
        elif len(ranges) < MAX_DROP_STREAMS:
            ranges[stream] = [stream_seq, stream_seq, 1]
        if self.on_drop is not None:
            self.on_drop(cls, stream, reason)

    def take_drop_ranges(self) -> dict[str, list[int]]:
        ranges, self.drop_ranges = self.drop_ranges, {}
        return ranges

    def take_age_ranges(self) -> dict[str, list[int]]:
        ranges, self.age_ranges = self.age_ranges, {}
        return ranges

    def expire(self, now_ns: int) -> int:
        """Drop every waiting market event past its age bound; how many."""
        gone = self._market.expired(now_ns) if self._market else ()
        for entry in gone:
            self._drop(entry[3], TOO_OLD)
        return len(gone)

    def requeue(self, events: list[Event]) -> None:
        """Put unconfirmed/nacked events back, ahead of newer ones, in their original order."""
        for ev in sorted(events, key=lambda e: e.seq, reverse=True):
            size = _size(ev)
            self.bytes += size
            if ev.durable:
                self._account.appendleft(ev)
            else:
                self._market.appendleft(ev.event_class, ev.recv_ns, size, ev)
        while self.full and self._market:
            self._drop(self._market.pop_victim()[3], BUFFER_FULL)

    def pop_many(self, n: int) -> list[Event]:
        """Up to ``n`` events, in the order ``n`` calls of ``pop`` would give them (a pump takes a
        window's worth at once: a ``pop`` per event, each picking the class again, cost 1.1 us an
        event with books, tickers and trades waiting, against 0.5 us)."""
        out: list[Event] = []
        account = self._account
        while len(out) < n:
            if not account:
                self._refill()
                if not account:
                    break
            out.append(account.popleft())
        if len(out) < n and self._market:
            out.extend([entry[3] for entry in self._market.pop_many(n - len(out))])
        if out:
            self.bytes -= sum([_size(ev) for ev in out])
        return out

    def _refill(self) -> None:
        if self.spool is not None and self.spool.depth and not self._account:
            room = max(self.bound - self.in_memory, 1)
            for ev in self.spool.read(min(SPOOL_CHUNK, room)):
                ev.seq = next(self._seq)
                self.bytes += _size(ev)
                self._account.append(ev)

    def pop(self) -> Event | None:
        """The oldest waiting account/system event, else the next market event (the shortest
        bound's class first), or None. (``expire`` first drops those already too old.)"""
        if not self._account:
            self._refill()
        # Account and system events go first: they are other streams than market data (each
        # stream keeps its order), and a market backlog must not delay an order update or
        # a "connection lost" by seconds (seen: 11-40 s behind a backlog before this).
        if self._account:
            ev = self._account.popleft()
        elif self._market:
            ev = self._market.pop()[3]
        else:
            return None
        self.bytes -= _size(ev)
        return ev
