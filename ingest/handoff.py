"""Hand-off to publisher and persister over ZeroMQ PUSH; never blocks the reader.

Each frame gets its per-(endpoint, topic) ``stream_seq`` here. Sends use NOBLOCK;
when a downstream can't take more (its HWM is reached), frames wait in a bounded
buffer, one FIFO per market class, the shortest bound's class sent first (common/freshness.py):
a market frame older than its class's age bound is dropped rather than sent, and past
the count or byte bound the oldest frame of the longest-bound class goes; both are counted per class
and stream and announced (``system.events_dropped``, ``where: ingest``). Account frames
are kept. The publisher sees the hole in ``stream_seq`` and heals books and tickers.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import time
import uuid

import zmq

from common import addresses
from common import freshness
from common.classify import ACCOUNT_CLASSES, DURABLE_CLASSES, UnknownTopic, public_route
from common.envelope import FRAME, VERSION, Socket, dumps, json_envelope, pack
from common.logs import RateLimited, get_logger
from ingest import metrics

log = get_logger(__name__)
# ZeroMQ's own queue per downstream (messages of up to MAX_BATCH frames). Small on purpose: in a
# flood the excess waits in our buffer, where it is bounded in bytes, sent books and tickers first
# and dropped by class, not in ZeroMQ's FIFO. (At 2,000 frames here and 2,000 in the publisher's
# receive queue a saturated publisher read books 0.5-0.6 s old at 6,000 frames/s, most dropped
# as too old.)
HWM = 8
MAX_BATCH = 32            # frames per message when several go at once (common/envelope.py pack)
OVERHEAD = 200            # Python objects around each buffered frame, bytes (approximate)
DROP_NOTICE_EVERY_S = 5.0
# At a stop, how long the sockets stay open after the last frame went to ZeroMQ. Its linger only
# writes what is queued to the connection; a reader whose receive queue is full has not taken it
# yet, and what it has not taken when the connection closes is lost (seen: the last 3-8 messages).
STOP_GRACE_S = 0.5
_EVENTS, _POLLOUT, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLOUT), int(zmq.NOBLOCK)   # ints: enums cost ~1 us
MAX_DROP_STREAMS = 1000
MAX_HEADS = 100_000        # topics whose envelope header start is kept
_KEPT = frozenset({"orderbook", "tickers"})   # classes ingest keeps a copy of, to heal from
# Frames never dropped: account data, system events ("system") and the persister's own ("")
_ACCOUNT_LANE = DURABLE_CLASSES | {""}


class Downstream:
    def __init__(self, ctx: zmq.Context, name: str, address: str, bound: int, bound_bytes: int,
                 max_age_ns: dict[str, int] | None = None, priority_address: str | None = None):
        """``priority_address``: where account frames and system events go on a socket of their
        own (the publisher reads its pipes in turn), so they never wait behind market frames in
        ZeroMQ's queues; None: one socket for everything."""
        self.name = name
        self.sock = self._connect(ctx, address)
        # account frames and system events (the account lane); healing snapshots stay on ``sock``,
        # where they must come before the book's later deltas
        self.account_sock = self.sock if priority_address is None else self._connect(ctx, priority_address)
        self.bound, self.bound_bytes = bound, bound_bytes
        self.account: collections.deque = collections.deque()
        # market frames waiting: item (parts, cls, recv_ns, endpoint, topic, seq), as handed in
        self.market = freshness.MarketQueues(freshness.age_bounds() if max_age_ns is None else max_age_ns)
        self.dropped: collections.Counter = collections.Counter()
        self.dropped_by: dict[str, collections.Counter] = {freshness.TOO_OLD: collections.Counter(),
                                                           freshness.BUFFER_FULL: collections.Counter(),
                                                           freshness.SUPERSEDED: collections.Counter()}
        # reason -> "endpoint:topic" -> [first seq, last seq, count], for the next notice
        self.drop_ranges: dict[str, dict[str, list[int]]] = {freshness.TOO_OLD: {}, freshness.BUFFER_FULL: {},
                                                             freshness.SUPERSEDED: {}}
        self._dropped_counted: dict[str, int] = {}
        # (endpoint, topic) -> [the last frame number dropped, reason] for plain order books and
        # linear/inverse tickers, which ingest heals from its copy (taken by Handoff.flush; RPI
        # books are healed through the publisher, which sees the hole)
        self.lost: dict[tuple[str, str], list] = {}
        # (endpoint, topic) -> (parts, cls, recv_ns, endpoint, topic, seq) of a healing snapshot waiting, in hand-off
        # order: sent on ``sock`` ahead of every market frame
        self.healing: dict[tuple[str, str], tuple] = {}
        self.sent = 0
        self.batches_sent = 0
        self._warn = RateLimited(log, 10.0)

    @staticmethod
    def _connect(ctx: zmq.Context, address: str) -> zmq.Socket:
        sock = ctx.socket(zmq.PUSH, socket_class=Socket)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(address)
        return sock

    @property
    def market_bytes(self) -> int:
        return self.market.bytes

    @property
    def buffered(self) -> int:
        return len(self.account) + len(self.healing) + len(self.market)

    def _idle(self, account: bool) -> bool:
        """Nothing waits that a frame of this lane would overtake on its socket."""
        if account:
            return not self.account and (self.account_sock is not self.sock or not (self.healing or self.market))
        return not self.healing and not self.market and (self.account_sock is not self.sock or not self.account)

    def send(self, parts: tuple, cls: str, recv_ns: int = 0, endpoint: str = "", topic: str = "",
             seq: int = 0) -> None:
        account = cls in _ACCOUNT_LANE
        if self._idle(account) and self._try(parts, self.account_sock if account else self.sock):
            return
        self._wait((parts, cls, recv_ns, endpoint, topic, seq))
        self.flush()

    def send_many(self, entries: list[tuple], market_only: bool = False) -> None:
        """Several frames ``(parts, cls, recv_ns, endpoint, topic, seq)`` in order, MAX_BATCH to a message
        (account frames and the rest on their own sockets, each in order). ``market_only``: the
        caller knows none is in the account lane (a flood's batches), so none is looked for."""
        if self.account_sock is not self.sock and not market_only:
            account = [e for e in entries if e[1] in _ACCOUNT_LANE]
            if account:
                if len(account) < len(entries):
                    self._send_lane([e for e in entries if e[1] not in _ACCOUNT_LANE], False)
                self._send_lane(account, True)
                return
        self._send_lane(entries, False)

    def _send_lane(self, entries: list[tuple], account: bool) -> None:
        i, n = 0, len(entries)
        if self._idle(account):
            sock = self.account_sock if account else self.sock
            while i < n:
                chunk = entries[i:i + MAX_BATCH]
                if not self._try_batch([e[0] for e in chunk], sock):
                    break
                i += len(chunk)
        if i < n:
            rest = entries[i:] if i else entries
            if account:
                self.account.extend([e[0] for e in rest])
            elif self.account_sock is self.sock:      # one socket for both lanes: sorted one by one
                for e in rest:
                    self._wait(e)
            else:
                # in a flood every frame read comes here: one loop, no call per frame
                append = self.market.append
                for e in rest:
                    parts = e[0]
                    append(e[1], e[2], len(parts[1]) + len(parts[2]) + OVERHEAD, e)
                self._trim()
            self.flush()

    def _wait(self, entry: tuple) -> None:
        """``entry``: ``(parts, cls, recv_ns, endpoint, topic, seq)``, waiting in its lane."""
        parts, cls = entry[0], entry[1]
        if cls in _ACCOUNT_LANE:
            self.account.append(parts)      # never dropped
            return
        self.market.append(cls, entry[2], len(parts[1]) + len(parts[2]) + OVERHEAD, entry)
        self._trim()

    def heal(self, parts: tuple, cls: str, endpoint: str, topic: str, seq: int) -> None:
        """A snapshot that replaces the book's (or ticker's) ``topic`` frames still waiting, and an
        earlier such snapshot still waiting (dropped as superseded: sent after it they would be
        applied to it), and goes before every market frame, in the account lane, where neither the
        age nor the memory bound drops it: at most one per topic waits there."""
        key = (endpoint, topic)
        gone = self.market.remove(cls, lambda item: item[3] == endpoint and item[4] == topic)
        old = self.healing.pop(key, None)
        if old is not None:
            gone.append((0, 0, cls, old))
        self._drop(gone, freshness.SUPERSEDED)
        if not self.healing and (self.account_sock is not self.sock or not self.account) and self._try(parts):
            return
        self.healing[key] = (parts, cls, 0, endpoint, topic, seq)
        self.flush()

    def _trim(self) -> None:
        """Back within the count and byte bounds, dropping what ``pop_victim`` would give up."""
        market, bound, bound_bytes = self.market, self.bound, self.bound_bytes
        if len(market) > bound or market.bytes > bound_bytes:
            self._drop(market.trim(bound, bound_bytes), freshness.BUFFER_FULL)

    def _drop(self, entries: list[tuple], reason: str) -> None:
        """Count dropped entries per class and reason, and the frame numbers per stream for the
        next notice. Counted a batch at a time: in a flood a drop per frame read is the norm."""
        if not entries:
            return
        ranges, heals = self.drop_ranges[reason], reason != freshness.SUPERSEDED
        per_class = collections.Counter([entry[2] for entry in entries])
        self.dropped.update(per_class)      # into the metric by flush_metrics (a labelled inc costs ~5 us)
        self.dropped_by[reason].update(per_class)
        for entry in entries:
            cls, (_, _, _, endpoint, topic, seq) = entry[2], entry[3]
            if heals and cls in _KEPT and freshness.needs_snapshot(endpoint, topic):
                lost = self.lost.get((endpoint, topic))
                if lost is None:
                    self.lost[(endpoint, topic)] = [seq, reason]
                elif seq > lost[0]:
                    lost[0], lost[1] = seq, reason
            stream = endpoint + ":" + topic
            r = ranges.get(stream)
            if r is not None:
                if seq < r[0]:
                    r[0] = seq
                elif seq > r[1]:
                    r[1] = seq
                r[2] += 1
            elif len(ranges) < MAX_DROP_STREAMS:
                ranges[stream] = [seq, seq, 1]
        self._warn("warning", "handoff_dropping", downstream=self.name, reason=reason,
                   dropped=sum(self.dropped.values()), buffered=len(self.market),
                   buffered_mb=round(self.market.bytes / 2 ** 20, 1))

    def flush_metrics(self) -> None:
        """Add the drops counted since the last call to wsgw_ingest_dropped_total."""
        for cls, n in self.dropped.items():
            new = n - self._dropped_counted.get(cls, 0)
            if new:
                metrics.DROPPED.labels(self.name, cls).inc(new)
                self._dropped_counted[cls] = n

    def _try(self, parts, sock: zmq.Socket | None = None) -> bool:
        try:
            # copy: frames are small; zero-copy costs more below ~64 KB
            (self.sock if sock is None else sock).send_multipart(parts, _NOBLOCK)
        except zmq.Again:
            return False
        self.sent += 1
        return True

    def _try_batch(self, envelopes: list[tuple], sock: zmq.Socket | None = None) -> bool:
        """Several envelopes (their frames) as one message; one goes as itself."""
        if len(envelopes) == 1:
            return self._try(envelopes[0], sock)
        try:
            (self.sock if sock is None else sock).send_multipart(pack([(e[1], e[2]) for e in envelopes]), _NOBLOCK)
        except zmq.Again:
            return False
        self.sent += len(envelopes)
        self.batches_sent += 1
        return True

    def writable(self, sock: zmq.Socket | None = None) -> bool:
        """Room for one more message in ZeroMQ's queue: asked before trying to send from our
        buffer, since a refused send (an exception) costs three times as much as asking."""
        return bool((self.sock if sock is None else sock).get(_EVENTS) & _POLLOUT)

    def flush(self, now_ns: int | None = None) -> None:
        account, shared = self.account, self.account_sock is self.sock
        if account and (shared or self.writable(self.account_sock)):
            while account:
                chunk = list(itertools.islice(account, MAX_BATCH))
                if not self._try_batch(chunk, self.account_sock):
                    break
                for _ in chunk:
                    account.popleft()
        market = self.market
        if (shared and account) or ((self.healing or market) and not self.writable()):
            if market:
                self._expire(now_ns)
            return
        healing = self.healing
        while healing:
            key = next(iter(healing))
            if not self._try(healing[key][0]):
                if market:
                    self._expire(now_ns)
                return
            del healing[key]
        if not market:
            return
        self._expire(now_ns)
        while market:
            taken = market.pop_many(MAX_BATCH)
            if not self._try_batch([entry[3][0] for entry in taken]):
                market.put_back(taken)
                return

    def _expire(self, now_ns: int | None) -> None:
        """Drop the waiting market frames past their age bound."""
        self._drop(self.market.expired(time.time_ns() if now_ns is None else now_ns), freshness.TOO_OLD)

    def take_drop_notices(self) -> list[dict]:
        """``system.events_dropped`` details for the drops since the last call, one per reason."""
        out = []
        for reason, ranges in self.drop_ranges.items():
            if not ranges:
                continue
            self.drop_ranges[reason] = {}
            streams = {}
            for stream, (first, last, n) in ranges.items():
                endpoint, _, topic = stream.partition(":")
                try:
                    key = public_route(endpoint, topic)[3]
                except (UnknownTopic, ValueError):
                    key = None
                streams[stream] = {"routing_key": key, "ingest_seq_from": first, "ingest_seq_to": last, "count": n}
            out.append({"where": "ingest", "reason": reason, "downstream": self.name,
                        # not "dropped_streams": these are ingest's frame numbers, not the consumers'
                        # stream_seq (the publisher's stream_gap names those)
                        "dropped_total": dict(self.dropped_by[reason]), "dropped_frames": streams,
                        "max_age_ms": {c: b // 1_000_000 for c, b in sorted(self.market.bounds.items())}
                        if reason == freshness.TOO_OLD else None})
        return out

    def close(self) -> None:
        if self.account_sock is not self.sock:
            self.account_sock.close(linger=1000)
        self.sock.close(linger=1000)


class Handoff:
    """``linger_s``: how long a frame may wait for others to go with it. Each message handed to
    ZeroMQ costs a wake-up of its I/O thread, a socket write, and a wake-up of the publisher and a
    write to RabbitMQ downstream (at 5,000 frames/s one by one, these were most of the gateway's CPU).
    Frames closer together than ``linger_s`` go out together at the end of it, so the whole chain
    works in batches; a frame after a quiet spell goes at once. 0: the frames read in one turn of
    the event loop go together at its end (a flood is read many frames a turn). Without a running
    loop (tests, tools) every frame goes at once."""

    def __init__(self, run_dir, bound: int, bound_mb: int = 32, ctx: zmq.Context | None = None,
                 max_age_ns: dict[str, int] | None = None, linger_s: float = 0.0):
        self.ctx = ctx or zmq.Context.instance()
        self.epoch = uuid.uuid4().hex[:12]
        self.publisher = Downstream(self.ctx, "publisher", addresses.publisher_frames(run_dir), bound,
                                    bound_mb * 2 ** 20, max_age_ns, addresses.publisher_priority(run_dir))
        self.persister = Downstream(self.ctx, "persister", addresses.persister_frames(run_dir), bound,
                                    bound_mb * 2 ** 20, max_age_ns)
        self._seq: dict[tuple[str, str], int] = {}
        # (endpoint, topic) -> (conn_id, trace_id, extra, the header's bytes up to its receive time)
        self._heads: dict[tuple[str, str], tuple] = {}
        self._last_notice = 0.0
        self.linger_s = linger_s
        self._held: list[tuple] = []           # (parts, cls, recv_ns, endpoint, topic, seq) waiting for linger
        self._held_account = 0                 # how many of them are in the account lane
        self._release_at: asyncio.Handle | None = None
        self._released = 0.0                   # monotonic time of the last release
        self.batches = self.batched = 0        # releases of held frames, and the frames in them
        # (endpoint, topic, last frame number dropped, reason): a plain order book or a linear/inverse
        # ticker lost frames here, so consumers' copy is wrong until a snapshot
        self.on_lost = None

    def set_max_age(self, max_age_ns: dict[str, int]) -> None:
        """The age bound per market class (Settings.market_max_age_ns)."""
        for d in (self.publisher, self.persister):
            d.market.bounds = max_age_ns

    def frame(self, endpoint: str, topic: str, cls: str, raw: bytes, recv_ns: int, conn_id: str,
              trace_id: str = "", extra: dict | None = None) -> int:
        """``trace_id``: the request that created the subscription, so its events can be traced to it.
        ``extra``: the owner of the topic's unit and its lease epoch (ingest/leases.py)."""
        parts, seq = self._parts(endpoint, topic, raw, recv_ns, conn_id, trace_id, extra)
        if self._release_at is not None or (
                (self.linger_s <= 0 or time.monotonic() - self._released < self.linger_s) and self._hold()):
            self._held.append((parts, cls, recv_ns, endpoint, topic, seq))
            if cls in _ACCOUNT_LANE:
                self._held_account += 1
        else:
            self._released = time.monotonic()
            self._send(parts, cls, recv_ns, endpoint, topic, seq)
        return seq

    def _parts(self, endpoint: str, topic: str, raw: bytes, recv_ns: int, conn_id: str, trace_id: str,
               extra: dict | None) -> tuple[tuple, int]:
        key = (endpoint, topic)
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        # Envelope(...).encode()'s header (the same JSON object, keys in another order) from the
        # part that stays the same for a topic plus the two numbers: a third of a dict + dumps
        head = self._heads.get(key)
        if head is None or head[0] != conn_id or head[1] != trace_id or head[2] is not extra:
            head = self._head(key, conn_id, trace_id, extra)
        return (VERSION, head[3] + b'%d,"s":%d}' % (recv_ns, seq), raw), seq   # a tuple: untracked by the GC

    def heal(self, endpoint: str, topic: str, cls: str, raw: bytes, recv_ns: int, conn_id: str,
             trace_id: str = "", extra: dict | None = None) -> int:
        """Hand off ``raw``, a snapshot of a book or ticker made by ingest, in place of its frames still
        waiting and ahead of all other market frames (Downstream.heal); its frame number."""
        self.release()      # frames held for company are queued first: this topic's are superseded
        parts, seq = self._parts(endpoint, topic, raw, recv_ns, conn_id, trace_id, extra)
        self.publisher.heal(parts, cls, endpoint, topic, seq)
        return seq

    def _head(self, key: tuple[str, str], conn_id: str, trace_id: str, extra: dict | None) -> tuple:
        header = {"k": FRAME, "e": key[0], "t": key[1], "p": self.epoch, "c": conn_id, "tr": trace_id}
        if extra:
            header["x"] = extra
        if len(self._heads) >= MAX_HEADS:
            self._heads.clear()
        # ``extra`` (a lease's, never changed in place) is held, so a new lease is a new object
        head = self._heads[key] = (conn_id, trace_id, extra, dumps(header)[:-1] + b',"r":')
        return head

    def _send(self, parts: tuple, cls: str, recv_ns: int, endpoint: str, topic: str, seq: int) -> None:
        self.publisher.send(parts, cls, recv_ns, endpoint, topic, seq)
        if cls in ACCOUNT_CLASSES:
            self.persister.send(parts, cls)

    def _hold(self) -> bool:
        """Schedule the release of held frames at the end of the linger, or of this loop turn
        (False: no loop to do it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self.linger_s <= 0:
            self._release_at = loop.call_soon(self.release)
        else:
            self._release_at = loop.call_at(loop.time() + self.linger_s - (time.monotonic() - self._released),
                                            self.release)
        return True

    def release(self) -> None:
        """Send the frames held for company now, in the order they came."""
        if self._release_at is not None:
            self._release_at.cancel()
            self._release_at = None
        held = self._held
        if not held:
            return
        self._held = []
        self._released = time.monotonic()
        self.batches += 1
        self.batched += len(held)
        if not self._held_account:
            self.publisher.send_many(held, market_only=True)
            return
        self._held_account = 0
        self.publisher.send_many(held)
        account = [e for e in held if e[1] in ACCOUNT_CLASSES]
        if account:
            self.persister.send_many(account)

    def system(self, kind: str, body: dict, endpoint: str = "", trace_id: str = "",
               extra: dict | None = None) -> None:
        self.release()      # after the frames that came before it
        env = json_envelope("system", body, endpoint=endpoint, topic=kind, recv_ns=time.time_ns(),
                            epoch=self.epoch, trace_id=trace_id, extra=extra or {})
        self.publisher.send(tuple(env.encode()), "system")

    def to_persister(self, kind: str, body: dict, trace_id: str = "") -> None:
        self.release()
        env = json_envelope(kind, body, recv_ns=time.time_ns(), epoch=self.epoch, trace_id=trace_id)
        self.persister.send(tuple(env.encode()), "")

    def flush(self) -> None:
        self.release()
        for d in (self.publisher, self.persister):
            d.flush()
            d.flush_metrics()
            metrics.BUFFERED.labels(d.name).set(d.buffered)
        lost = self.publisher.lost
        if lost:
            self.publisher.lost = {}
            if self.on_lost is not None:
                for (endpoint, topic), (seq, reason) in lost.items():
                    self.on_lost(endpoint, topic, seq, reason)
        if time.monotonic() - self._last_notice >= DROP_NOTICE_EVERY_S:
            notices = self.publisher.take_drop_notices() + self.persister.take_drop_notices()
            if notices:
                self._last_notice = time.monotonic()
                for body in notices:
                    self.system("events_dropped", {**body, "at": time.time()})

    def stats(self) -> dict:
        out = {d.name: {"sent": d.sent, "buffered": d.buffered, "buffered_mb": round(d.market_bytes / 2 ** 20, 1),
                        "dropped": dict(d.dropped),
                        "dropped_by_reason": {r: dict(c) for r, c in d.dropped_by.items()}}
               for d in (self.publisher, self.persister)}
        # frames that waited for company (linger_s), and in how many batches they went
        out["publisher"]["lingered"] = {"frames": self.batched, "batches": self.batches}
        for d in (self.publisher, self.persister):
            out[d.name]["messages_batched"] = d.batches_sent     # messages that carried several frames
        return out

    def close(self, drain_s: float = 2.0) -> None:
        """Send what still waits, for up to ``drain_s`` (the publisher and the persister keep
        reading while the gateway stops), give the readers STOP_GRACE_S to take it, then close.
        ZeroMQ's own queues are small, so at a stop under load most of what is left waits here,
        account frames included."""
        self.release()
        deadline = time.monotonic() + drain_s
        while True:
            self.publisher.flush()
            self.persister.flush()
            if not (self.publisher.buffered or self.persister.buffered) or time.monotonic() >= deadline:
                break
            time.sleep(0.005)       # ZeroMQ's queue frees as the reader takes; nothing to wait on here
        for d in (self.publisher, self.persister):
            if d.buffered:
                log.warning("handoff_unsent_at_stop", downstream=d.name, account=len(d.account), market=len(d.market))
        if self.publisher.sent or self.persister.sent:
            time.sleep(STOP_GRACE_S)
        self.publisher.close()
        self.persister.close()
