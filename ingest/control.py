"""The control socket: the API's subscription changes, each answered (accepted or refused, with why).

The API tells ingest after its commit, so two changes of one topic can arrive in the other
order (a DELETE's ``remove`` after the ``add`` of a POST committed later). A message is
therefore only a cue: ingest re-reads the topic's row and applies what the table says now.
Reads run one at a time, each for the messages that arrived while the previous one ran, so
a read sees at least the changes its messages announce, and never less than an earlier
read. Reads are numbered so that the periodic converge (which reads the whole table) and
these reads never undo a newer one's result. When the table cannot be read the message
is applied as sent, and the next converge corrects it.
"""
from __future__ import annotations

import asyncio
import time

import psycopg2
import zmq
import zmq.asyncio

from common import addresses, control
from common.substatus import HELD
from common.logs import RateLimited, get_logger
from common.topics import TopicError, build_topic

log = get_logger(__name__)
RETRY_CONNECT_S = 1.0       # after a failed read, messages are applied as sent for this long

LIVE_QUERY = """
SELECT endpoint, topic, status, coalesce(trace_id, '') FROM subscriptions
WHERE status <> 'removed' AND (endpoint, topic) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""
WANTED = HELD                       # the rows ingest holds (as desired.load_desired)


def parse_request(request: dict):
    """(op, topic or None, immediate reply or None) for one control request; pure."""
    rid = request.get("id")
    op = request.get("op")
    if op in (control.SYNC, control.STATUS, control.RESYNC):
        return op, None, None
    sub = request.get("subscription")
    if op not in control.SUBSCRIPTION_OPS or not isinstance(sub, dict):
        return op, None, {"id": rid, "ok": False, "error": f"unknown op {op!r} or missing subscription"}
    try:
        topic = build_topic(sub.get("channel"), sub.get("category"), sub.get("symbol"),
                            sub.get("depth"), sub.get("interval"))
    except TopicError as exc:
        log.info("control_refused", op=op, error=str(exc), trace_id=str(request.get("trace_id") or "") or None)
        return op, None, {"id": rid, "ok": False, "error": f"{exc.field}: {exc}"}
    return op, topic, None


MAX_RESYNC_TOPICS = 10_000


def resync_topics(request: dict) -> list[tuple[str, str, str]]:
    """(endpoint, topic, reason) of a ``resync`` request: ``{"op": "resync", "where": "publisher",
    "topics": [{"endpoint", "topic", "reason"}]}`` (a downstream dropped frames of those topics);
    pure. Raises ValueError naming what is wrong."""
    topics = request.get("topics")
    if not isinstance(topics, list) or len(topics) > MAX_RESYNC_TOPICS:
        raise ValueError(f"resync: topics must be a list of at most {MAX_RESYNC_TOPICS}")
    where = str(request.get("where") or "a downstream")[:40]
    out = []
    for t in topics:
        if not (isinstance(t, dict) and isinstance(t.get("endpoint"), str) and isinstance(t.get("topic"), str)):
            raise ValueError("resync: each topic needs endpoint and topic strings")
        reason = str(t.get("reason") or "frames dropped")[:200]
        out.append((t["endpoint"], t["topic"], f"dropped in the {where}: {reason}"))
    return out


def should_hold(op: str, wanted: bool | None) -> bool:
    """What to do with a topic: the table's word when it was read (``wanted``), else the message's."""
    return op == "add" if wanted is None else wanted


class ReadOrder:
    """Which read of the table last set each topic. Reads are numbered as they start; one
    started later sees every commit an earlier one saw, so an older read never overrides a
    newer one's result."""

    def __init__(self):
        self.started = 0
        self.converged = 0                  # number of the read the last converge applied
        self.applied: dict[str, int] = {}   # topic key -> number of the control read that set it

    def begin(self) -> int:
        self.started += 1
        return self.started

    def take(self, key: str, seq: int) -> bool:
        """Whether control read ``seq`` may set ``key`` (no newer read did); recorded if so."""
        if seq < self.converged or seq < self.applied.get(key, 0):
            return False
        self.applied[key] = seq
        return True

    def for_converge(self, desired: dict, seq: int, held: dict) -> dict:
        """``desired`` as read by converge read ``seq``, with each topic a newer control read set
        left as it is now (``held``: key -> the manager's state of that topic)."""
        out = dict(desired)
        for key, applied in self.applied.items():
            if applied > seq:
                st = held.get(key)
                if st is None:
                    out.pop(key, None)
                elif key not in out:
                    out[key] = (st.topic, st.trace_id, st.status)
        self.converged = max(self.converged, seq)
        self.applied = {k: v for k, v in self.applied.items() if v > seq}
        return out


class TableReader:
    """Reads the live rows of a few topics on one kept connection (used from one worker
    thread at a time). After a failure it does not try again for ``RETRY_CONNECT_S``, so
    messages are not held up by a database that is down."""

    def __init__(self, database_url: str):
        self.url = database_url
        self.conn = None
        self.retry_at = 0.0

    def wanted(self, pairs: list[tuple[str, str]]) -> dict[str, str]:
        """{"endpoint:topic": trace_id} for the given pairs that have a pending or active row."""
        if time.monotonic() < self.retry_at:
            raise ConnectionError("subscriptions table unreadable a moment ago")
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg2.connect(self.url, connect_timeout=3, application_name="ws-gateway-ingest-control",
                                             options="-c statement_timeout=2000")
                self.conn.autocommit = True
            with self.conn.cursor() as cur:
                cur.execute(LIVE_QUERY, ([e for e, _ in pairs], [t for _, t in pairs]))
                rows = cur.fetchall()
        except psycopg2.Error:
            self.retry_at = time.monotonic() + RETRY_CONNECT_S
            self.close()
            raise
        return {f"{endpoint}:{topic}": trace for endpoint, topic, status, trace in rows if status in WANTED}

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass


class ControlServer:
    def __init__(self, run_dir, mgr, request_sync):
        self.mgr, self.request_sync = mgr, request_sync
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(addresses.ingest_control(run_dir))
        self.reader = TableReader(mgr.settings.database_url)
        self.reads = ReadOrder()
        self._queue: list[tuple] = []
        self._queued = asyncio.Event()
        self._bad = RateLimited(log, 5.0)
        self._unread = RateLimited(log, 5.0)

    def converge_view(self, desired: dict, seq: int) -> dict:
        """What converge may apply from its read ``seq`` (taken with ``reads.begin()`` before it)."""
        return self.reads.for_converge(desired, seq, self.mgr.topics)

    async def serve(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._receive(), name="control-receive")
            tg.create_task(self._resolve(), name="control-resolve")

    async def _receive(self) -> None:
        while True:
            parts = await self.sock.recv_multipart()
            ident, delims, payload = parts[0], parts[1:-1], parts[-1]
            try:
                request = control.decode(payload)
                op, topic, reply = parse_request(request)
                if op == control.SYNC:
                    self.request_sync(str(request.get("trace_id") or ""))
                    reply = {"id": request.get("id"), "ok": True}
                elif op == control.RESYNC:     # fire-and-forget from the publisher; answered all the same
                    done = [f"{e}:{t}" for e, t, why in resync_topics(request) if self.mgr.resync_requested(e, t, why)]
                    reply = {"id": request.get("id"), "ok": True, "resynced": done}
                elif op == control.STATUS:
                    reply = {"id": request.get("id"), "ok": True, "status": self.mgr.status()}
            except Exception as exc:   # a bad request is answered, never fatal
                self._bad("warning", "control_bad_request", error=str(exc))
                reply, topic = {"id": None, "ok": False, "error": f"bad request: {exc}"}, None
            if reply is None:
                self._queue.append((ident, delims, request, op, topic))
                self._queued.set()
                continue
            await self._send(ident, delims, reply)

    async def _send(self, ident: bytes, delims: list, reply: dict) -> None:
        # echo any delimiter frames back, so REQ-style and plain DEALER clients both work
        await self.sock.send_multipart([ident, *delims, control.encode(reply)])

    async def _resolve(self) -> None:
        """One table read for every change queued since the last, then each applied and answered."""
        while True:
            if not self._queue:
                await self._queued.wait()
            self._queued.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            seq = self.reads.begin()
            pairs = sorted({(topic.endpoint, topic.name) for *_, topic in batch})
            try:
                wanted = await asyncio.to_thread(self.reader.wanted, pairs)
            except Exception as exc:
                self._unread("warning", "control_table_unreadable", error=str(exc).strip()[:200],
                             action="applying changes as sent; the next converge corrects them")
                wanted = None
            for ident, delims, request, op, topic in batch:
                await self._send(ident, delims, self._apply(request, op, topic, wanted, seq))

    def _apply(self, request: dict, op: str, topic, wanted: dict | None, seq: int) -> dict:
        rid, key = request.get("id"), topic.key
        trace_id = str(request.get("trace_id") or "")
        table = None if wanted is None else key in wanted
        if table is not None and not self.reads.take(key, seq):
            # a newer read (converge) already set this topic: leave it as it is
            held = key in self.mgr.topics
            log.info("control_superseded", op=op, topic=key, held=held, trace_id=trace_id or None)
            return {"id": rid, "ok": True, "held": held, "topic": topic.name}
        stale = table is not None and table != (op == "add")
        if should_hold(op, table):
            error = None
            if op == "add" or key not in self.mgr.topics:
                error = self.mgr.add(topic, trace_id if op == "add" else wanted[key])
            log.info("control_add" if op == "add" else "control_remove_ignored", topic=key, accepted=error is None,
                     error=error, stale=stale or None, trace_id=trace_id or None)
            # a stale remove is answered ok: the topic stays because the table still wants it
            return {"id": rid, "ok": error is None or op == "remove", "error": error, "held": error is None,
                    "stale": stale, "topic": topic.name}
        removed = self.mgr.remove(key, trace_id)
        log.info("control_remove" if op == "remove" else "control_add_ignored", topic=key, held=removed,
                 stale=stale or None, trace_id=trace_id or None)
        return {"id": rid, "ok": True, "held": False, "removed": removed, "stale": stale, "topic": topic.name}

    def close(self) -> None:
        self.sock.close(linger=0)
        self.reader.close()
