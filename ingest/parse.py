"""Classify what Bybit sends on a socket (docs/bybit.md#push-envelope-and-frame-classification).
Pure: bytes in, record out."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson

DATA = "data"
AUTH = "auth"
SUB_ACK = "sub_ack"
PONG = "pong"
ERROR = "error"
OTHER = "other"


class FrameError(ValueError):
    """The bytes are not a JSON object we can classify."""


@dataclass(slots=True)
class Control:
    kind: str                     # AUTH | SUB_ACK | PONG | ERROR | OTHER
    success: bool = True
    ret_msg: str = ""
    req_id: str = ""
    op: str = ""
    conn_id: str = ""
    success_topics: list[str] = field(default_factory=list)   # option COMMAND_RESP only
    fail_topics: list[str] = field(default_factory=list)
    per_topic: bool = False       # True when the ack lists topics (option)


def loads(raw: bytes) -> dict:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


_TOPIC_HEAD = b'{"topic":"'
_HEAD_LEN = len(_TOPIC_HEAD)


def leading_topic(raw: bytes) -> str | None:
    """The topic of a push that starts with it, as Bybit writes public pushes
    (``{"topic":"publicTrade.BTCUSDT",...``), read without parsing the rest; None for any
    other layout (another key first, spaces, an escape), which then goes through ``loads``."""
    if not raw.startswith(_TOPIC_HEAD):
        return None
    end = raw.find(b'"', _HEAD_LEN)
    if end <= _HEAD_LEN or raw.find(b"\\", _HEAD_LEN, end) != -1:
        return None
    try:
        return raw[_HEAD_LEN:end].decode()
    except UnicodeDecodeError:
        return None


def classify_control(obj: dict) -> Control:
    """A frame without ``topic``: auth result, subscription ack, pong, or error reply."""
    op = obj.get("op") or ""
    success = obj.get("success")
    ret_msg = obj.get("ret_msg") or ""
    req_id = str(obj.get("req_id") or "")
    conn_id = str(obj.get("conn_id") or "")
    if op == "pong" or (op == "ping" and ret_msg == "pong"):
        return Control(PONG, True, ret_msg, req_id, op, conn_id)
    if op == "auth":
        return Control(AUTH, success is True, ret_msg, req_id, op, conn_id)
    if op in ("subscribe", "unsubscribe"):
        return Control(SUB_ACK, success is True, ret_msg, req_id, op, conn_id)
    if obj.get("type") == "COMMAND_RESP":
        data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
        ok_topics = [t for t in data.get("successTopics") or [] if isinstance(t, str)]
        bad_topics = [t for t in data.get("failTopics") or [] if isinstance(t, str)]
        return Control(SUB_ACK, success is True and not bad_topics, ret_msg, req_id,
                       obj.get("op") or "subscribe", conn_id, ok_topics, bad_topics, per_topic=True)
    if success is False:
        return Control(ERROR, False, ret_msg, req_id, op, conn_id)
    return Control(OTHER, bool(success), ret_msg, req_id, op, conn_id)


_TOPIC_IN_MSG = re.compile(r"topic:\s*\[?([A-Za-z0-9_.\-]+)\]?")
_INVALID_SYMBOL = re.compile(r"Invalid symbol\s*:\s*\[([^\]]+)\]")


def topic_named_in(ret_msg: str) -> str | None:
    """The topic a failure text names, if any. Texts are undocumented: match leniently
    (``error:handler not found,topic:X``, ``error:already subscribed,topic:X``,
    ``Invalid symbol :[X]``)."""
    m = _TOPIC_IN_MSG.search(ret_msg) or _INVALID_SYMBOL.search(ret_msg)
    return m.group(1) if m else None


def is_already_subscribed(ret_msg: str) -> bool:
    return "already subscribed" in ret_msg


@dataclass(slots=True)
class BookUpdate:
    type: str      # snapshot | delta
    u: int
    seq: int | None


def book_update(obj: dict) -> BookUpdate:
    """The sequencing fields of an orderbook push; raises FrameError if they are missing."""
    data = obj.get("data")
    if not isinstance(data, dict):
        raise FrameError("orderbook push without a data object")
    u, seq, typ = data.get("u"), data.get("seq"), obj.get("type")
    if typ not in ("snapshot", "delta") or isinstance(u, bool) or not isinstance(u, int):
        raise FrameError(f"orderbook push with type={typ!r} u={u!r}")
    return BookUpdate(typ, u, seq if isinstance(seq, int) and not isinstance(seq, bool) else None)
