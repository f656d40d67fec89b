"""Desired topics → connections, and what happens to each frame on its way out.

The manager places each topic on a connection of its endpoint (opening one with the
first topic, another only when one is full, closing one after its last topic), checks
order-book and ticker streams, stamps and hands frames off, and reports subscription
status changes and connection events downstream. It never waits on downstream.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import time

import orjson

from common import freshness
from common.classify import event_class
from common.logs import RateLimited, get_logger
from common.substatus import ACTIVE, FAILED, PENDING
from common.topics import PRIVATE, Topic
from ingest import books, metrics, parse, plan
from ingest.auth import ServerClock
from ingest.connection import Connection
from ingest.leases import ALWAYS, Lease
from ingest.supervise import TaskFailures
from ingest.tickers import KeptTicker

log = get_logger(__name__)
_clock, _CLOCK = time.clock_gettime, getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)   # as leases.clock
ROTATION_GRACE_S = 5.0       # after a rotation, how long a late copy from the closed socket is still caught
OVERLAP_MAX = 16_384         # pushes remembered per rotation (a rotation lasts a few round trips)
_BOOKS, _MERGED_TICKERS = freshness.BOOK_CLASSES, freshness.MERGED_TICKERS   # pushes whose fields are checked


def push_key(topic: str, obj: dict) -> bytes:
    """What two sockets' copies of one private push share, and two real pushes don't: topic,
    creationTime and data. Not the message id: it is opaque and need not be the same on two
    sockets. A copy whose fields differ is forwarded twice, never dropped."""
    body = orjson.dumps([topic, obj.get("creationTime"), obj.get("data")], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(body, digest_size=16).digest()


class RotationOverlap:
    """The pushes each socket of one rotating connection delivered, not yet matched by the
    other socket: a push is a duplicate when the other socket delivered one with the same key."""

    __slots__ = ("unmatched", "ends_at")

    def __init__(self):
        self.unmatched: collections.OrderedDict[bytes, list] = collections.OrderedDict()   # key -> [socket, n]
        self.ends_at: float | None = None

    def duplicate(self, socket: int, key: bytes) -> bool:
        entry = self.unmatched.get(key)
        if entry is None:
            self.unmatched[key] = [socket, 1]
            if len(self.unmatched) > OVERLAP_MAX:
                self.unmatched.popitem(last=False)
            return False
        if entry[0] == socket:          # the same socket again: a real push with the same state
            entry[1] += 1
            return False
        entry[1] -= 1
        if not entry[1]:
            del self.unmatched[key]
        return True


class TopicState:
    __slots__ = ("topic", "cls", "status", "error", "last_event_ms", "frames", "book", "ticker_ok",
                 "trace_id", "conn", "metric", "added_at", "counted", "lease", "kept", "snapshot_seq")

    def __init__(self, topic: Topic, trace_id: str, lease: Lease = ALWAYS):
        self.topic = topic
        self.cls = event_class(topic.name)
        self.status, self.error = PENDING, None
        self.last_event_ms: int | None = None
        self.frames = 0
        self.counted = 0     # frames already added to the metric (flush_metrics)
        self.book = books.BookTracker()
        # ingest's copy of a plain order book (not RPI: its levels are shaped otherwise) or of a
        # linear/inverse ticker, and the hand-off's number of the last snapshot of this topic handed off
        self.kept = books.KeptBook() if self.cls == "orderbook" else \
            KeptTicker() if self.cls == "tickers" and topic.endpoint in _MERGED_TICKERS else None
        self.snapshot_seq = 0
        self.ticker_ok = False
        self.trace_id = trace_id
        self.conn: Connection | None = None
        self.metric = metrics.FRAMES.labels(topic.endpoint, self.cls)
        self.added_at = time.time()
        self.lease = lease       # the unit's lease: frames go out only while it is valid


def _count(st: TopicState) -> None:
    n = st.frames - st.counted
    if n:
        st.metric.inc(n)
        st.counted = st.frames


class Manager:
    def __init__(self, settings, handoff):
        self.settings, self.handoff = settings, handoff
        self.budget = plan.ConnectionBudget(settings.max_new_connections_5min)
        self.clock = ServerClock(settings.rest_url)
        self.topics: dict[str, TopicState] = {}
        self.conns: dict[str, list[Connection]] = collections.defaultdict(list)
        self._index = itertools.count(1)
        self.auth = {"configured": settings.has_private, "state": "not_connected" if settings.has_private else "not_configured",
                     "error": None, "failures": 0, "since": time.time()}
        self._overlaps: dict[str, RotationOverlap] = {}     # connection id -> its rotation in progress
        self.rotation_duplicates = 0
        self.task_failures = TaskFailures()
        self._activity: dict[str, int] = {}
        self._bad = RateLimited(log, 5.0)
        self._closing: set[asyncio.Task] = set()
        self.bad_frames = 0
        self.reconciler = None     # ingest.reconcile.Reconciler when keys are configured (set by the app)
        self.ownership = None      # ingest.leases.Coordinator (set by the app); None: every topic is ours
        self.fenced = 0            # frames not handed off because their unit's lease had lapsed
        self.book_heals = 0        # snapshots handed off from ingest's copy of a book (KeptBook)
        self.ticker_heals = 0      # the same from its copy of a ticker (KeptTicker)
        if hasattr(handoff, "set_max_age"):
            handoff.set_max_age(settings.market_max_age_ns())

    def lease_for(self, topic: Topic) -> Lease | None:
        """The lease under which ``topic`` may be held here; None when another instance owns its unit."""
        return ALWAYS if self.ownership is None else self.ownership.lease_for(topic.endpoint, topic.key)

    # -- desired state -------------------------------------------------------------
    def add(self, topic: Topic, trace_id: str = "") -> str | None:
        """Start holding ``topic``; returns why not when it can't be held."""
        if topic.endpoint == PRIVATE and not self.settings.has_private:
            return "private stream not configured: set BYBIT_API_KEY and BYBIT_API_SECRET"
        lease = self.lease_for(topic)
        if lease is None:         # another instance owns its unit and holds it
            return None
        clash = plan.private_form_clash(topic.endpoint, topic.name, lambda name: (
            (other := self.topics.get(f"{PRIVATE}:{name}")) is not None and other.status != FAILED))
        if clash:
            return clash
        st = self.topics.get(topic.key)
        if st is not None:
            if st.status == FAILED:          # asked again: try again
                st.status, st.error, st.trace_id = PENDING, None, trace_id
                st.conn.add(topic.name)
            return None
        st = self.topics[topic.key] = TopicState(topic, trace_id, lease)
        st.conn = self._place(topic)
        st.conn.add(topic.name)
        log.info("topic_added", topic=topic.key, conn=st.conn.id, trace_id=trace_id or None)
        return None

    def remove(self, key: str, trace_id: str = "") -> bool:
        st = self.topics.pop(key, None)
        if st is None:
            return False
        _count(st)
        conn = st.conn
        conn.remove(st.topic.name)
        log.info("topic_removed", topic=key, conn=conn.id, trace_id=trace_id or None)
        if not conn.topics:
            self.conns[conn.endpoint].remove(conn)
            task = asyncio.create_task(conn.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            log.info("connection_closing", conn=conn.id, reason="no topics left")
        return True

    def converge(self, desired: dict[str, tuple[Topic, str, str]]) -> None:
        """Make held topics equal ``desired`` (key -> (topic, trace_id, stored status)), as far
        as this instance owns their units."""
        if self.ownership is not None:
            desired = {k: v for k, v in desired.items() if self.lease_for(v[0]) is not None
                       or v[0].endpoint == PRIVATE and not self.settings.has_private
                       and not self.ownership.private_elsewhere()}     # add() says why it cannot
        for key in [k for k in self.topics if k not in desired]:
            self.remove(key)
        for key, (topic, trace_id, stored) in desired.items():
            st = self.topics.get(key)
            if st is None:
                err = self.add(topic, trace_id)
                if err:
                    self._report(key, topic, FAILED, err, trace_id)
            elif st.lease is not (lease := self.lease_for(topic)):
                st.lease = lease          # the unit was lost and taken again: a new epoch
            elif st.status != PENDING and st.status != stored:
                # the status write was lost (persister restarted): say it again
                self._report(key, topic, st.status, st.error, st.trace_id)

    def drop_unit(self, unit: str, lease: Lease) -> int:
        """Stop holding every topic of a unit whose lease is lost (unsubscribed, no more frames)."""
        keys = [k for k, st in self.topics.items() if st.lease is lease]
        for key in keys:
            self.remove(key, "")
        return len(keys)

    def _place(self, topic: Topic) -> Connection:
        conns = self.conns[topic.endpoint]
        for conn in conns:
            if plan.has_room(topic.endpoint, conn.topics, topic.name):
                return conn
        url = self.settings.ws_private_url if topic.endpoint == PRIVATE \
            else f"{self.settings.ws_public_base}/{topic.endpoint}"
        conn = Connection(self, topic.endpoint, url, next(self._index))
        conns.append(conn)
        conn.start()
        log.info("connection_opening", conn=conn.id, url=url, reason="first topic" if len(conns) == 1 else "others full")
        return conn

    # -- called by connections ----------------------------------------------------
    def on_data(self, conn: Connection, session, obj: dict | None, topic: str, raw: bytes,
                recv_ns: int) -> None:
        """A push of ``topic``; ``obj`` is the parsed frame, or None for a public push read only
        for its topic (parsed here if its fields are checked)."""
        key = f"{conn.endpoint}:{topic}"
        st = self.topics.get(key)
        if st is None:
            self._bad("info", "frame_for_unheld_topic", topic=key)
            return
        lease = st.lease
        if lease.valid_until < _clock(_CLOCK):    # self-fenced: the unit may be someone else's by now
            self.fenced += 1
            return
        cls = st.cls
        if obj is None and (cls in _BOOKS or (cls == "tickers" and conn.endpoint in _MERGED_TICKERS)):
            try:
                obj = parse.loads(raw)
            except parse.FrameError as exc:
                self.bad_frame(conn, str(exc), raw)
                return
        if conn.endpoint == PRIVATE and self._overlaps and self._duplicate_push(conn, session, topic, obj):
            return
        if cls in _BOOKS:     # the RPI book is sequenced the same way
            try:
                upd = parse.book_update(obj)
            except parse.FrameError as exc:
                self.bad_frame(conn, str(exc), raw)
                return
            if upd.u == 1 and upd.type == "snapshot" and st.book.u not in (None, 1):
                # Bybit restarted its book: the snapshot replaces it; tell consumers
                self._announce(conn, st, "book_resync", f"u == 1 snapshot after u={st.book.u}: Bybit reset the book")
            verdict = st.book.check(upd)
            if verdict.action != books.OK:
                if verdict.action == books.RESYNC:
                    self._resync(conn, st, "book_resync", verdict.reason)
                return
            if st.kept is not None:
                st.kept.apply(obj, recv_ns, session.id)
        elif cls == "tickers" and conn.endpoint in _MERGED_TICKERS:
            if obj.get("type") == "snapshot":
                st.ticker_ok = True
            elif not st.ticker_ok:
                self._resync(conn, st, "ticker_resync", "ticker delta before any snapshot")
                return
            st.kept.apply(obj, recv_ns, session.id)
        rec = self.reconciler
        if rec is None or conn.endpoint != PRIVATE or not rec.take(topic, cls, obj, raw, recv_ns, session.id):
            seq = self.handoff.frame(conn.endpoint, topic, cls, raw, recv_ns, session.id, st.trace_id, lease.extra)
            if st.kept is not None and obj.get("type") == "snapshot":
                st.snapshot_seq = seq
        st.frames += 1
        st.last_event_ms = recv_ns // 1_000_000
        self._activity[key] = st.last_event_ms
        # wsgw_ingest_frames_total is added from st.frames by flush_metrics (every 50 ms):
        # a multiprocess Counter.inc is a lock and an mmap write, ~3 us per frame.

    def flush_metrics(self) -> None:
        """Move the frames counted since the last call into wsgw_ingest_frames_total."""
        for st in self.topics.values():
            _count(st)

    def rotation_started(self, conn: Connection) -> None:
        """``conn`` opens a second socket: until it ends, pushes both sockets deliver go out once."""
        self._overlaps[conn.id] = RotationOverlap()

    def rotation_ended(self, conn: Connection) -> None:
        """One socket is left; a copy the other socket sent just before it closed may still be
        on its way, so the overlap is kept a few seconds more."""
        ov = self._overlaps.get(conn.id)
        if ov is not None:
            ov.ends_at = time.monotonic() + ROTATION_GRACE_S

    def _duplicate_push(self, conn: Connection, session, topic: str, obj: dict) -> bool:
        """A push the other socket of a rotating connection already delivered. Outside a
        rotation nothing is a duplicate: a wallet that returns to an earlier state (order
        placed, then cancelled) is a new push with the same data."""
        ov = self._overlaps.get(conn.id)
        if ov is None:
            return False
        if ov.ends_at is not None and time.monotonic() > ov.ends_at:
            del self._overlaps[conn.id]
            return False
        if not ov.duplicate(session.serial, push_key(topic, obj)):
            return False
        self.rotation_duplicates += 1
        metrics.ROTATION_DUPLICATES.inc()
        return True

    def _resync(self, conn: Connection, st: TopicState, kind: str, reason: str) -> None:
        if st.topic.name in conn.resync:
            return
        st.book.reset()
        if st.kept is not None:
            st.kept.invalidate()
        st.ticker_ok = False
        self._announce(conn, st, kind, reason)
        conn.request_resync(st.topic.name)

    def resync_requested(self, endpoint: str, topic: str, reason: str) -> bool:
        """A downstream lost frames of ``topic`` (an order book or a linear/inverse ticker), so
        consumers' copy is wrong: resubscribe it for a fresh snapshot (``book_resync`` /
        ``ticker_resync`` says why). False when it is not held here or is not such a topic."""
        st = self.topics.get(f"{endpoint}:{topic}")
        if st is None or st.conn is None or st.status != ACTIVE or not freshness.needs_snapshot(endpoint, topic):
            return False
        if not self._heal(st, reason):
            self._resync(st.conn, st, "ticker_resync" if st.cls == "tickers" else "book_resync", reason)
        return True

    def hand_off_lost(self, endpoint: str, topic: str, seq: int, reason: str) -> None:
        """The hand-off dropped frames of a book or a linear/inverse ticker up to its number ``seq``:
        a snapshot from ingest's copy heals consumers' copy at once, unless a snapshot handed off
        after them already does.
        (Without a copy the publisher asks for a resubscribe once it sees the hole.)"""
        st = self.topics.get(f"{endpoint}:{topic}")
        if st is not None and st.conn is not None and st.status == ACTIVE and st.snapshot_seq <= seq:
            self._heal(st, f"dropped in ingest's hand-off: {reason}")

    def _heal(self, st: TopicState, reason: str) -> bool:
        """Hand off a snapshot of ``st``'s book or ticker from ingest's copy (announced as a
        ``book_resync`` / ``ticker_resync`` first; it replaces one still waiting); False when there
        is no valid copy (the caller resubscribes)."""
        kept, conn, ticker = st.kept, st.conn, st.cls == "tickers"
        # waiting for the snapshot of a (re)subscribe: the copy is not the stream's state yet
        waiting = not st.ticker_ok if ticker else st.book.resyncing
        if kept is None or not kept.valid or waiting or st.lease.valid_until < _clock(_CLOCK):
            return False
        self._announce(conn, st, "ticker_resync" if ticker else "book_resync",
                       f"{reason}; snapshot from ingest's copy of the {'ticker' if ticker else 'book'}")
        # stamped with the time it is made: it is the book as ingest knows it now (a quiet book is
        # still current), and the publisher must not drop it as too old
        st.snapshot_seq = self.handoff.heal(conn.endpoint, st.topic.name, st.cls, orjson.dumps(kept.snapshot()),
                                            time.time_ns(), kept.session, st.trace_id, st.lease.extra)
        if ticker:
            self.ticker_heals += 1
        else:
            self.book_heals += 1
        return True

    def _announce(self, conn: Connection, st: TopicState, kind: str, reason: str) -> None:
        metrics.RESYNCS.labels(conn.endpoint).inc()
        self._bad("warning", kind, topic=st.topic.key, reason=reason)
        self.handoff.system(kind, {"endpoint": conn.endpoint, "topic": st.topic.name, "reason": reason,
                                   "at": time.time()}, endpoint=conn.endpoint)

    def subscribing(self, conn: Connection, names: list[str]) -> None:
        """A (re)subscribe brings a fresh snapshot first: until it comes, deltas are not trusted.
        Reset before the request goes out, since the snapshot may be read before the ack is handled."""
        for name in names:
            st = self.topics.get(f"{conn.endpoint}:{name}")
            if st is not None:
                st.book.reset()
                st.ticker_ok = False

    def subscription_result(self, conn: Connection, name: str, ok: bool, error: str | None) -> None:
        key = f"{conn.endpoint}:{name}"
        st = self.topics.get(key)
        if st is None:
            return
        if not ok:
            conn.topics.discard(name)   # held as failed until asked again
        status = ACTIVE if ok else FAILED
        if (status, error) != (st.status, st.error):
            st.status, st.error = status, error
            if not ok:
                log.warning("subscribe_failed", topic=key, ret_msg=error, trace_id=st.trace_id or None)
            else:
                log.info("subscribed", topic=key, conn=conn.id, trace_id=st.trace_id or None)
            self._report(key, st.topic, status, error, st.trace_id)

    def _report(self, key: str, topic: Topic, status: str, error: str | None, trace_id: str) -> None:
        self.handoff.to_persister("sub_status", {"endpoint": topic.endpoint, "topic": topic.name, "status": status,
                                                 "error": error, "at_ms": int(time.time() * 1000),
                                                 "trace_id": trace_id}, trace_id=trace_id)

    def private_subscribed(self, conn: Connection) -> None:
        """A private session's topics are subscribed: what happened while it was down comes over REST."""
        if self.reconciler is not None:
            self.reconciler.request("private_connected")

    def connection_event(self, kind: str, conn: Connection, details: dict) -> None:
        self.handoff.system(kind, {"endpoint": conn.endpoint, "connection": conn.id, **details}, endpoint=conn.endpoint)

    def auth_result(self, ok: bool, message: str) -> None:
        state = "ok" if ok else "failed"
        if not ok:
            self.auth["failures"] += 1
            self.handoff.system("auth_failed", {"endpoint": PRIVATE, "ret_msg": message, "at": time.time(),
                                                "failures": self.auth["failures"]}, endpoint=PRIVATE)
        if state != self.auth["state"]:
            self.auth["since"] = time.time()
        self.auth.update(state=state, error=None if ok else message)

    def bad_frame(self, conn: Connection, error: str, raw: bytes) -> None:
        metrics.BAD_FRAMES.labels(conn.endpoint).inc()
        self.bad_frames += 1
        self._bad("warning", "bad_frame", conn=conn.id, error=error, frame=raw[:200].decode(errors="replace"))

    # -- reporting ------------------------------------------------------------------
    def take_activity(self) -> dict[str, int]:
        out, self._activity = self._activity, {}
        return out

    def status(self) -> dict:
        return {
            "connections": [c.describe() for conns in self.conns.values() for c in conns],
            "topics": {k: {"status": st.status, "error": st.error, "last_event_ms": st.last_event_ms,
                           "frames": st.frames, "conn": st.conn.id if st.conn else None}
                       for k, st in self.topics.items()},
            "private": self.auth,
            "new_connections_5min": len(self.budget.opened),
            "bad_frames": self.bad_frames,
            "fenced_frames": self.fenced,
            "book_heals": self.book_heals,
            "ticker_heals": self.ticker_heals,
            "rotation_duplicates": self.rotation_duplicates,
            "task_failures": self.task_failures.status(),
            "reconciliation": self.reconciler.status() if self.reconciler else {"configured": False},
        }

    async def close(self) -> None:
        conns = [c for cs in self.conns.values() for c in cs]
        await asyncio.gather(*(c.close() for c in conns), *self._closing, return_exceptions=True)
