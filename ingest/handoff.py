"""Hand-off to publisher and persister over ZeroMQ PUSH; never blocks the reader.

Each frame gets its per-(endpoint, topic) ``stream_seq`` here. Sends use NOBLOCK;
when a downstream can't take more (its HWM is reached), frames wait in a bounded
buffer: past the bound, market frames are dropped oldest first and counted per
class, account frames are kept.
"""
from __future__ import annotations

import collections
import time
import uuid

import zmq

from common import addresses
from common.classify import ACCOUNT_CLASSES
from common.envelope import FRAME, Envelope, json_envelope
from common.logs import RateLimited, get_logger
from ingest import metrics

log = get_logger(__name__)
# ZeroMQ's own queue per downstream (messages). Small on purpose: in a flood the excess
# waits in our buffer, where it is bounded in bytes and dropped by class, not in ZeroMQ's.
HWM = 2_000
OVERHEAD = 200            # Python objects around each buffered frame, bytes (approximate)


class Downstream:
    def __init__(self, ctx: zmq.Context, name: str, address: str, bound: int, bound_bytes: int):
        self.name = name
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, HWM)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.connect(address)
        self.bound, self.bound_bytes = bound, bound_bytes
        self.account: collections.deque = collections.deque()
        self.market: collections.deque = collections.deque()   # (parts, class, size)
        self.market_bytes = 0
        self.dropped: collections.Counter = collections.Counter()
        self.sent = 0
        self._warn = RateLimited(log, 10.0)

    @property
    def buffered(self) -> int:
        return len(self.account) + len(self.market)

    def send(self, parts: list[bytes], cls: str) -> None:
        if not self.account and not self.market and self._try(parts):
            return
        if cls in ACCOUNT_CLASSES or cls == "system" or cls == "":
            self.account.append(parts)      # never dropped
        else:
            size = len(parts[1]) + len(parts[2]) + OVERHEAD
            self.market.append((parts, cls, size))
            self.market_bytes += size
            while len(self.market) > self.bound or self.market_bytes > self.bound_bytes:
                _, dropped_cls, dropped_size = self.market.popleft()
                self.market_bytes -= dropped_size
                self.dropped[dropped_cls] += 1
                metrics.DROPPED.labels(self.name, dropped_cls).inc()
                self._warn("warning", "handoff_dropping", downstream=self.name, dropped=sum(self.dropped.values()),
                           buffered=len(self.market), buffered_mb=round(self.market_bytes / 2 ** 20, 1))
        self.flush()

    def _try(self, parts) -> bool:
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK)   # copy: frames are small; zero-copy costs more below ~64 KB
        except zmq.Again:
            return False
        self.sent += 1
        return True

    def flush(self) -> None:
        while self.account:
            if not self._try(self.account[0]):
                return
            self.account.popleft()
        while self.market:
            if not self._try(self.market[0][0]):
                return
            self.market_bytes -= self.market.popleft()[2]

    def close(self) -> None:
        self.sock.close(linger=1000)


class Handoff:
    def __init__(self, run_dir, bound: int, bound_mb: int = 32, ctx: zmq.Context | None = None):
        self.ctx = ctx or zmq.Context.instance()
        self.epoch = uuid.uuid4().hex[:12]
        self.publisher = Downstream(self.ctx, "publisher", addresses.publisher_frames(run_dir), bound,
                                    bound_mb * 2 ** 20)
        self.persister = Downstream(self.ctx, "persister", addresses.persister_frames(run_dir), bound,
                                    bound_mb * 2 ** 20)
        self._seq: dict[tuple[str, str], int] = {}

    def frame(self, endpoint: str, topic: str, cls: str, raw: bytes, recv_ns: int, conn_id: str,
              trace_id: str = "", extra: dict | None = None) -> int:
        """``trace_id``: the request that created the subscription, so its events can be traced to it.
        ``extra``: the owner of the topic's unit and its lease epoch (ingest/leases.py)."""
        key = (endpoint, topic)
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        parts = Envelope(FRAME, raw, endpoint, topic, recv_ns, seq, self.epoch, conn_id, trace_id,
                         extra or {}).encode()
        self.publisher.send(parts, cls)
        if cls in ACCOUNT_CLASSES:
            self.persister.send(parts, cls)
        return seq

    def system(self, kind: str, body: dict, endpoint: str = "", trace_id: str = "",
               extra: dict | None = None) -> None:
        env = json_envelope("system", body, endpoint=endpoint, topic=kind, recv_ns=time.time_ns(),
                            epoch=self.epoch, trace_id=trace_id, extra=extra or {})
        self.publisher.send(env.encode(), "system")

    def to_persister(self, kind: str, body: dict, trace_id: str = "") -> None:
        env = json_envelope(kind, body, recv_ns=time.time_ns(), epoch=self.epoch, trace_id=trace_id)
        self.persister.send(env.encode(), "")

    def flush(self) -> None:
        for d in (self.publisher, self.persister):
            d.flush()
            metrics.BUFFERED.labels(d.name).set(d.buffered)

    def stats(self) -> dict:
        return {d.name: {"sent": d.sent, "buffered": d.buffered, "buffered_mb": round(d.market_bytes / 2 ** 20, 1),
                         "dropped": dict(d.dropped)}
                for d in (self.publisher, self.persister)}

    def close(self) -> None:
        self.publisher.close()
        self.persister.close()
