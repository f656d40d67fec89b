"""Gateway events built from ingest's envelopes (the message contract in docs/events.md).

Pure functions: an envelope (and its parsed payload) goes in, ``Event`` records
come out, ready to publish. No I/O, no clock: the receive time comes from the
envelope. Unknown topics raise ``UnknownTopic``; malformed frames raise
``FrameError``; the caller counts and logs both.

Body fields, in order: event_id, event_class, source, category, topic, symbol,
type, exchange_ts, received_at, stream_seq, stream_epoch, version (account events),
trace_id, data. Merged ticker deltas add ``changed_keys``. An account event holds one
record (``data`` is a one-element list) so that its id can be the record's own.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import orjson

from common import classify
from common.envelope import Envelope, dumps
from common.identity import IdentityError, account_event_id, account_version, derive_id, digest, uuid8
from common.topics import PUBLIC_CATEGORIES
from publisher.shapes import ws_shape

SOURCE_BYBIT, SOURCE_GATEWAY, SOURCE_REST = "bybit", "gateway", "bybit-rest"


class FrameError(ValueError):
    """A frame or payload that cannot become an event (missing or wrong-typed field)."""


@dataclass(slots=True)
class Event:
    event_id: str
    event_class: str
    routing_key: str
    body: bytes
    headers: dict
    persistent: bool
    timestamp: int                 # AMQP timestamp property, seconds
    stream: str = ""               # "{endpoint}:{topic}" (market drop accounting)
    stream_seq: int = 0
    seq: int = 0                   # outbox order, assigned by the outbox
    extra: dict = field(default_factory=dict)
    recv_ns: int = 0               # ingest's receive time (0: unknown, e.g. read back from the spool)
    heals: bool = False            # a book or ticker snapshot for a stream consumers hold wrong (Outbox.heal)

    @property
    def is_account(self) -> bool:
        return self.event_class in classify.ACCOUNT_CLASSES

    @property
    def durable(self) -> bool:
        """Never dropped by the gateway: account data, its own notices and Bybit's status notices."""
        return self.event_class in classify.DURABLE_CLASSES

    def to_record(self) -> bytes:
        """One spool line (orjson, no newline inside)."""
        return orjson.dumps({"i": self.event_id, "c": self.event_class, "k": self.routing_key,
                             "b": self.body.decode(), "h": self.headers, "p": self.persistent,
                             "t": self.timestamp, "s": self.stream, "q": self.stream_seq})

    @classmethod
    def from_record(cls, line: bytes) -> "Event":
        r = orjson.loads(line)
        return cls(event_id=r["i"], event_class=r["c"], routing_key=r["k"], body=r["b"].encode(),
                   headers=r["h"], persistent=r["p"], timestamp=r["t"], stream=r["s"], stream_seq=r["q"])


_second = [-1, ""]   # the last whole second formatted (events arrive in bursts within one)


def iso_utc(ns: int) -> str:
    """ns since the epoch -> ``2026-11-21T10:00:00.123456Z``."""
    sec, rem = divmod(int(ns), 1_000_000_000)
    if sec != _second[0]:
        _second[0], _second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second[1]}.{rem // 1000:06d}Z"


class StreamNumbers:
    """``stream_seq`` per routing key: +1 per event a consumer bound to that key receives.

    Numbers are given when an event is made, so an event dropped later (buffer full, too
    old) leaves a gap the consumer sees. ``epoch`` names this run of the numbering: after a
    publisher restart numbers start again at 1 under a new epoch, never mistaken for repeats.
    """

    __slots__ = ("epoch", "_last")

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or uuid.uuid4().hex[:12]
        self._last: dict[str, int] = {}

    def next(self, key: str) -> int:
        n = self._last.get(key, 0) + 1
        self._last[key] = n
        return n

    def skip(self, key: str, count: int) -> tuple[int, int]:
        """Leave ``count`` numbers unused (events lost before they were made): the range skipped."""
        first = self._last.get(key, 0) + 1
        self._last[key] = first + count - 1
        return first, first + count - 1

    def last(self, key: str) -> int:
        return self._last.get(key, 0)

    def __len__(self) -> int:
        return len(self._last)


NUMBERS = StreamNumbers()     # this process's numbering; tests make their own


def make_event(*, event_id: str, event_class: str, source: str, category: str | None, topic: str,
               symbol: str | None, type_: str, exchange_ts: int | None, recv_ns: int,
               trace_id: str, data, routing_key: str, numbers: StreamNumbers | None = None,
               version: int | None = None, changed_keys: list[str] | None = None,
               owner: dict | None = None) -> Event:
    """One event, numbered in its routing key's stream (``numbers``, default this process's).
    ``owner``: the envelope's extras; the instance that owned the event's unit and its lease
    epoch become headers ``instance`` and ``owner_epoch``, so a late event from an instance
    that has since lost the unit can be told apart."""
    numbers = NUMBERS if numbers is None else numbers
    stream_seq = numbers.next(routing_key)
    body = {"event_id": event_id, "event_class": event_class, "source": source, "category": category,
            "topic": topic, "symbol": symbol, "type": type_, "exchange_ts": exchange_ts,
            "received_at": iso_utc(recv_ns), "stream_seq": stream_seq, "stream_epoch": numbers.epoch}
    headers = {"event_class": event_class, "category": category or "", "symbol": symbol or "",
               "trace_id": trace_id, "stream_epoch": numbers.epoch}
    if owner:
        instance, epoch = owner.get("oi"), owner.get("oe")
        if instance.__class__ is str and epoch.__class__ is int:
            headers["instance"], headers["owner_epoch"] = instance, epoch
    if version is not None:
        body["version"] = version
        headers["version"] = version
    body["trace_id"] = trace_id
    body["data"] = data
    if changed_keys is not None:
        body["changed_keys"] = changed_keys
        headers["changed_keys"] = ",".join(changed_keys)
    # last: the rest of a market event's headers repeat per stream, and their encoding is kept
    # (publisher/pika_fast.py EventProperties)
    headers["stream_seq"] = stream_seq
    persistent = event_class in classify.DURABLE_CLASSES
    return Event(event_id=event_id, event_class=event_class, routing_key=routing_key,
                 body=dumps(body), headers=headers, persistent=persistent,
                 timestamp=int(recv_ns) // 1_000_000_000, stream=routing_key, stream_seq=stream_seq,
                 recv_ns=int(recv_ns))


def _int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FrameError(f"{name}: expected an integer, got {value!r}")
    return value


_ROUTES: dict[tuple[str, str], tuple[str, str | None, str, str, bytes, str | None]] = {}
_MAX_ROUTES = 100_000


def _route(endpoint: str, topic: str) -> tuple[str, str | None, str, str, bytes, str | None]:
    """(class, symbol, routing key, stream, id prefix, category) of a public topic, cached (pure, bounded)."""
    r = _ROUTES.get((endpoint, topic))
    if r is None:
        cls, category, symbol, key = classify.public_route(endpoint, topic)
        if cls in classify.ACCOUNT_CLASSES:
            raise FrameError(f"account topic {topic!r} on public endpoint {endpoint!r}")
        r = (cls, symbol, key, f"{endpoint}:{topic}", f"{endpoint}|{topic}".encode(), category)
        if len(_ROUTES) >= _MAX_ROUTES:
            _ROUTES.clear()
        _ROUTES[(endpoint, topic)] = r
    return r


def market_event(env: Envelope, frame: dict, *, data=None, type_: str | None = None,
                 changed_keys: list[str] | None = None, numbers: StreamNumbers | None = None) -> Event:
    """A public push -> one event. ``data``/``type_`` override the frame's (merged tickers)."""
    topic = frame.get("topic")
    if not isinstance(topic, str):
        raise FrameError("frame has no topic")
    if not env.endpoint:
        raise FrameError("envelope has no endpoint")
    cls, symbol, routing_key, _stream, prefix, category = _route(env.endpoint, topic)
    if "data" not in frame:
        raise FrameError(f"{topic}: frame has no data")
    return make_event(event_id=uuid8(prefix, env.payload), event_class=cls, source=SOURCE_BYBIT,
                      category=category, topic=topic, symbol=symbol, type_=type_ or frame.get("type") or "snapshot",
                      exchange_ts=_int(frame.get("ts"), "ts"), recv_ns=env.recv_ns,
                      trace_id=env.trace_id, data=frame["data"] if data is None else data,
                      routing_key=routing_key, numbers=numbers, changed_keys=changed_keys, owner=env.extra)


def market_routing_key(endpoint: str, topic: str) -> str:
    """The routing key a public topic's events go out under."""
    return _route(endpoint, topic)[2]


def _group_of(cls: str, topic: str, item) -> str:
    """A private record's category (its accountType for wallet records; option for greeks)."""
    if not isinstance(item, dict):
        raise FrameError(f"{topic}: data element is not an object")
    if cls == "greeks":
        return "option"           # greeks are per option base coin and name no category
    key = "accountType" if cls == "balances" else "category"
    group = item.get(key)
    if not group:
        last = topic.rsplit(".", 1)[-1]
        group = last if last in PUBLIC_CATEGORIES else None     # order.linear -> linear
    if not isinstance(group, str) or not group:
        raise FrameError(f"{topic}: data element has no {key}")
    return group


def _account_event(cls: str, topic: str, record: dict, group: str, *, source: str, stamped_ms: int,
                   env: Envelope, numbers: StreamNumbers | None) -> Event:
    try:
        event_id = account_event_id(cls, record, stamped_ms)
    except IdentityError as exc:
        raise FrameError(f"{topic}: {exc}") from None
    return make_event(event_id=event_id, event_class=cls, source=source, category=group, topic=topic,
                      symbol=record.get("symbol") if isinstance(record.get("symbol"), str) else None,
                      type_="snapshot", exchange_ts=stamped_ms, recv_ns=env.recv_ns, trace_id=env.trace_id,
                      data=[record], routing_key=classify.routing_key(cls, group), numbers=numbers,
                      version=account_version(cls, record, stamped_ms), owner=env.extra)


def account_events(env: Envelope, frame: dict, numbers: StreamNumbers | None = None) -> list[Event]:
    """A private push -> one event per record, identified by Bybit's business keys.

    A fill pushed here and fetched again by a reconciliation gets the same id (see
    common/identity.py), so a consumer de-duplicating on ``message_id`` counts it once.
    """
    topic = frame.get("topic")
    if not isinstance(topic, str):
        raise FrameError("frame has no topic")
    cls = classify.event_class(topic)
    if cls not in classify.ACCOUNT_CLASSES:
        raise FrameError(f"market topic {topic!r} on the private endpoint")
    ts = _int(frame.get("creationTime"), "creationTime")
    items = frame.get("data")
    if not isinstance(items, list):
        raise FrameError(f"{topic}: data is not a list")
    # Every record is checked before any event is made: a bad record refuses the whole push
    # rather than leaving numbers used by events that were never published.
    groups = [_group_of(cls, topic, item) for item in items]
    for item in items:
        try:
            account_event_id(cls, item, ts)
        except IdentityError as exc:
            raise FrameError(f"{topic}: {exc}") from None
    return [_account_event(cls, topic, item, group, source=SOURCE_BYBIT, stamped_ms=ts, env=env, numbers=numbers)
            for item, group in zip(items, groups)]


def rest_events(env: Envelope, payload: dict, numbers: StreamNumbers | None = None) -> list[Event]:
    """Reconciled account state (kind ``rest``): ``{"topic", "category", "list", "fetched_at_ms"}``.

    Each REST record becomes one event in the shape of the WebSocket push of its class
    (publisher/shapes.py), with the id that push would have had.
    """
    if not isinstance(payload, dict):
        raise FrameError("rest payload is not an object")
    topic = payload.get("topic") or env.topic
    if not isinstance(topic, str) or not topic:
        raise FrameError("rest payload has no topic")
    cls = classify.event_class(topic)
    if cls not in classify.ACCOUNT_CLASSES:
        raise FrameError(f"rest payload for non-account topic {topic!r}")
    items = payload.get("list", payload.get("data"))
    if not isinstance(items, list):
        raise FrameError(f"{topic}: rest list is not a list")
    fetched = payload.get("fetched_at_ms")
    stamped = _int(fetched, "fetched_at_ms") if fetched is not None else env.recv_ns // 1_000_000
    category = payload.get("category")
    category = category if cls != "balances" and isinstance(category, str) and category else None
    records = []
    for item in items:
        if not isinstance(item, dict):
            raise FrameError(f"{topic}: rest record is not an object")
        record = ws_shape(topic, item, category)
        try:
            account_event_id(cls, record, stamped)
        except IdentityError as exc:
            raise FrameError(f"{topic}: {exc}") from None
        records.append((record, _group_of(cls, topic, record)))
    return [_account_event(cls, topic, record, group, source=SOURCE_REST, stamped_ms=stamped, env=env,
                           numbers=numbers) for record, group in records]


def system_event(kind: str, details: dict, *, recv_ns: int, category: str | None = None,
                 trace_id: str = "", event_id: str | None = None, numbers: StreamNumbers | None = None,
                 owner: dict | None = None) -> Event:
    """A gateway event for ``ws-gateway.system`` (routing key ``system.{kind}``)."""
    if not kind or "." in kind or "#" in kind or "*" in kind:
        raise FrameError(f"bad system event kind {kind!r}")
    if event_id is None:
        event_id = derive_id("system", kind, recv_ns, digest(orjson.dumps(details, default=str)))
    return make_event(event_id=event_id, event_class="system", source=SOURCE_GATEWAY, category=category,
                      topic=kind, symbol=symbol if isinstance(symbol := details.get("symbol"), str) else None,
                      type_="event", exchange_ts=None, recv_ns=recv_ns, numbers=numbers,
                      trace_id=trace_id, data=details, routing_key=f"system.{kind}", owner=owner)


def envelope_system_event(env: Envelope, numbers: StreamNumbers | None = None) -> Event:
    """A ``system`` envelope from ingest, published as it is."""
    try:
        details = orjson.loads(env.payload)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"system payload is not JSON: {exc}") from None
    if not isinstance(details, dict):
        raise FrameError("system payload is not an object")
    return system_event(env.topic, details, recv_ns=env.recv_ns, category=env.endpoint or None,
                        trace_id=env.trace_id, numbers=numbers, owner=env.extra,
                        event_id=derive_id("system", env.epoch, env.topic, env.recv_ns, digest(env.payload)))
