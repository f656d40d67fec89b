"""Gateway events built from ingest's envelopes (DESIGN.md contract 1).

Pure functions: an envelope (and its parsed payload) goes in, ``Event`` records
come out, ready to publish. No I/O, no clock: the receive time comes from the
envelope. Unknown topics raise ``UnknownTopic``; malformed frames raise
``FrameError``; the caller counts and logs both.

Body fields, in order: event_id, event_class, source, category, topic, symbol,
type, exchange_ts, received_at, stream_seq, trace_id, data. Merged ticker deltas
add ``changed_keys`` (see publisher/README.md).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import orjson

from common import classify
from common.envelope import Envelope, dumps
from common.topics import PUBLIC_CATEGORIES

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

    @property
    def is_account(self) -> bool:
        return self.event_class in classify.ACCOUNT_CLASSES

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


def _uuid8(prefix: bytes, payload: bytes = b"") -> str:
    h = hashlib.blake2b(prefix, digest_size=16)
    if payload:
        h.update(b"|")
        h.update(payload)
    d = bytearray(h.digest())
    d[6] = (d[6] & 0x0F) | 0x80      # version 8
    d[8] = (d[8] & 0x3F) | 0x80      # RFC 4122 variant
    x = d.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def derive_id(*parts: object, payload: bytes = b"") -> str:
    """A deterministic UUID (RFC 9562 version 8, BLAKE2b-128) of identifying content.

    Same role as uuid5 but one hash instead of two (uuid5 over a digest) on the hot path.
    """
    return _uuid8("|".join(str(p) for p in parts).encode(), payload)


def digest(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def make_event(*, event_id: str, event_class: str, source: str, category: str | None, topic: str,
               symbol: str | None, type_: str, exchange_ts: int | None, recv_ns: int, stream_seq: int,
               trace_id: str, data, routing_key: str, stream: str = "",
               changed_keys: list[str] | None = None) -> Event:
    body = {"event_id": event_id, "event_class": event_class, "source": source, "category": category,
            "topic": topic, "symbol": symbol, "type": type_, "exchange_ts": exchange_ts,
            "received_at": iso_utc(recv_ns), "stream_seq": stream_seq, "trace_id": trace_id, "data": data}
    headers = {"event_class": event_class, "category": category or "", "symbol": symbol or "",
               "trace_id": trace_id, "stream_seq": stream_seq}
    if changed_keys is not None:
        body["changed_keys"] = changed_keys
        headers["changed_keys"] = ",".join(changed_keys)
    persistent = event_class in classify.ACCOUNT_CLASSES or event_class == "system"
    return Event(event_id=event_id, event_class=event_class, routing_key=routing_key,
                 body=dumps(body), headers=headers, persistent=persistent,
                 timestamp=int(recv_ns) // 1_000_000_000, stream=stream, stream_seq=stream_seq,
                 recv_ns=int(recv_ns))


def _int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FrameError(f"{name}: expected an integer, got {value!r}")
    return value


_ROUTES: dict[tuple[str, str], tuple[str, str | None, str, str, bytes]] = {}
_MAX_ROUTES = 100_000


def _route(endpoint: str, topic: str) -> tuple[str, str | None, str, str, bytes]:
    """(class, symbol, routing key, stream, id prefix) of a public topic, cached (pure, bounded)."""
    r = _ROUTES.get((endpoint, topic))
    if r is None:
        cls = classify.event_class(topic)
        if cls in classify.ACCOUNT_CLASSES:
            raise FrameError(f"account topic {topic!r} on public endpoint {endpoint!r}")
        symbol = classify.topic_symbol(topic)
        r = (cls, symbol, classify.routing_key(cls, endpoint, symbol), f"{endpoint}:{topic}",
             f"{endpoint}|{topic}".encode())
        if len(_ROUTES) >= _MAX_ROUTES:
            _ROUTES.clear()
        _ROUTES[(endpoint, topic)] = r
    return r


def market_event(env: Envelope, frame: dict, *, data=None, type_: str | None = None,
                 changed_keys: list[str] | None = None) -> Event:
    """A public push -> one event. ``data``/``type_`` override the frame's (merged tickers)."""
    topic = frame.get("topic")
    if not isinstance(topic, str):
        raise FrameError("frame has no topic")
    category = env.endpoint
    if not category:
        raise FrameError("envelope has no endpoint")
    cls, symbol, routing_key, stream, prefix = _route(category, topic)
    if "data" not in frame:
        raise FrameError(f"{topic}: frame has no data")
    return make_event(event_id=_uuid8(prefix, env.payload), event_class=cls, source=SOURCE_BYBIT,
                      category=category, topic=topic, symbol=symbol, type_=type_ or frame.get("type") or "snapshot",
                      exchange_ts=_int(frame.get("ts"), "ts"), recv_ns=env.recv_ns, stream_seq=env.stream_seq,
                      trace_id=env.trace_id, data=frame["data"] if data is None else data,
                      routing_key=routing_key, stream=stream, changed_keys=changed_keys)


def _account_groups(cls: str, topic: str, items) -> list[tuple[str, list]]:
    """Split a private push's data by category (accountType for wallet), keeping order."""
    if not isinstance(items, list):
        raise FrameError(f"{topic}: data is not a list")
    key = "accountType" if cls == "balances" else "category"
    last = topic.rsplit(".", 1)[-1]
    fallback = last if last in PUBLIC_CATEGORIES else None     # order.linear -> linear
    groups: dict[str, list] = {}
    for item in items:
        if not isinstance(item, dict):
            raise FrameError(f"{topic}: data element is not an object")
        group = item.get(key) or fallback
        if not isinstance(group, str) or not group:
            raise FrameError(f"{topic}: data element has no {key}")
        groups.setdefault(group, []).append(item)
    return list(groups.items())


def account_events(env: Envelope, frame: dict) -> list[Event]:
    """A private push -> one event per category (per accountType for wallet)."""
    topic = frame.get("topic")
    if not isinstance(topic, str):
        raise FrameError("frame has no topic")
    cls = classify.event_class(topic)
    if cls not in classify.ACCOUNT_CLASSES:
        raise FrameError(f"market topic {topic!r} on the private endpoint")
    ts = _int(frame.get("creationTime"), "creationTime")
    # Bybit's message id identifies the push; execution.fast has none, so hash the bytes.
    ident = frame.get("id") or digest(env.payload)
    out = []
    for category, items in _account_groups(cls, topic, frame.get("data")):
        out.append(make_event(
            event_id=derive_id(env.endpoint, topic, ident, category), event_class=cls, source=SOURCE_BYBIT,
            category=category, topic=topic, symbol=None, type_="snapshot", exchange_ts=ts,
            recv_ns=env.recv_ns, stream_seq=env.stream_seq, trace_id=env.trace_id, data=items,
            routing_key=classify.routing_key(cls, category), stream=f"{env.endpoint}:{topic}"))
    return out


def rest_events(env: Envelope, payload: dict) -> list[Event]:
    """Reconciled account state (kind ``rest``): ``{"topic", "category", "list", "fetched_at_ms"}``."""
    if not isinstance(payload, dict):
        raise FrameError("rest payload is not an object")
    topic = payload.get("topic") or env.topic
    if not isinstance(topic, str) or not topic:
        raise FrameError("rest payload has no topic")
    cls = classify.event_class(topic)
    if cls not in classify.ACCOUNT_CLASSES:
        raise FrameError(f"rest payload for non-account topic {topic!r}")
    items = payload.get("list", payload.get("data"))
    fetched = payload.get("fetched_at_ms")
    exchange_ts = _int(fetched, "fetched_at_ms") if fetched is not None else env.recv_ns // 1_000_000
    category = payload.get("category")
    if cls != "balances" and isinstance(category, str) and category and isinstance(items, list):
        groups = [(category, items)]
    else:
        groups = _account_groups(cls, topic, items)
    ident = digest(env.payload)
    return [make_event(
        event_id=derive_id("rest", topic, ident, group), event_class=cls, source=SOURCE_REST,
        category=group, topic=topic, symbol=None, type_="snapshot", exchange_ts=exchange_ts,
        recv_ns=env.recv_ns, stream_seq=env.stream_seq, trace_id=env.trace_id, data=part,
        routing_key=classify.routing_key(cls, group), stream=f"rest:{topic}")
        for group, part in groups]


def system_event(kind: str, details: dict, *, recv_ns: int, category: str | None = None,
                 trace_id: str = "", event_id: str | None = None, stream_seq: int = 0) -> Event:
    """A gateway event for ``ws-gateway.system`` (routing key ``system.{kind}``)."""
    if not kind or "." in kind or "#" in kind or "*" in kind:
        raise FrameError(f"bad system event kind {kind!r}")
    if event_id is None:
        event_id = derive_id("system", kind, recv_ns, digest(orjson.dumps(details, default=str)))
    return make_event(event_id=event_id, event_class="system", source=SOURCE_GATEWAY, category=category,
                      topic=kind, symbol=symbol if isinstance(symbol := details.get("symbol"), str) else None,
                      type_="event", exchange_ts=None, recv_ns=recv_ns, stream_seq=stream_seq,
                      trace_id=trace_id, data=details, routing_key=f"system.{kind}", stream=f"system:{kind}")


def envelope_system_event(env: Envelope) -> Event:
    """A ``system`` envelope from ingest, published as it is."""
    try:
        details = orjson.loads(env.payload)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"system payload is not JSON: {exc}") from None
    if not isinstance(details, dict):
        raise FrameError("system payload is not an object")
    return system_event(env.topic, details, recv_ns=env.recv_ns, category=env.endpoint or None,
                        trace_id=env.trace_id, stream_seq=env.stream_seq,
                        event_id=derive_id("system", env.epoch, env.topic, env.recv_ns, digest(env.payload)))
