"""Bybit v5 control frames, pure: topic checks, subscribe planning, acks, pongs, auth.

Every reply shape follows PROTOCOL.md sections 2-4 and 8 and the recorded frames in
tests/frames/. Nothing here does I/O or reads the clock; callers pass ``now_ms``.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from common.topics import PUBLIC_CATEGORIES, SYMBOL_RE, TopicError, topic_from_name

PRIVATE = "private"
ENDPOINTS = (*PUBLIC_CATEGORIES, PRIVATE)
SPOT_MAX_ARGS = 10
OPTION_MAX_TOPICS = 2000

_CATEGORISED = {
    "order": PUBLIC_CATEGORIES,
    "execution": PUBLIC_CATEGORIES,
    "execution.fast": PUBLIC_CATEGORIES,
    "position": ("linear", "inverse", "option"),
}
PRIVATE_TOPICS = frozenset(
    {"order", "execution", "execution.fast", "position", "wallet", "greeks"}
    | {f"{base}.{cat}" for base, cats in _CATEGORISED.items() for cat in cats}
)


class Symbols:
    """The configured symbol list (SIM_SYMBOLS); an empty list allows every valid symbol.

    Entries are ``SYMBOL`` (every category) or ``category:SYMBOL`` (that category only).
    """

    def __init__(self, spec: str = ""):
        self.any: set[str] = set()
        self.per: dict[str, set[str]] = {c: set() for c in PUBLIC_CATEGORIES}
        for raw in (p.strip() for p in spec.split(",")):
            if not raw:
                continue
            cat, _, sym = raw.rpartition(":")
            if cat and cat not in PUBLIC_CATEGORIES:
                raise ValueError(f"SIM_SYMBOLS: unknown category {cat!r} in {raw!r}")
            if not SYMBOL_RE.fullmatch(sym):
                raise ValueError(f"SIM_SYMBOLS: {sym!r} is not an upper-case Bybit symbol")
            (self.per[cat] if cat else self.any).add(sym)

    @property
    def configured(self) -> bool:
        return bool(self.any or any(self.per.values()))

    def in_category(self, category: str) -> list[str]:
        return sorted(self.any | self.per[category])

    def allows(self, category: str, symbol: str, base_coin: bool = False) -> bool:
        if not self.configured:
            return True
        known = self.any | self.per[category]
        if base_coin:  # option trades are per base coin: publicTrade.BTC
            return symbol in known or any(s.split("-")[0] == symbol for s in known)
        return symbol in known


def handler_not_found(topic) -> str:
    return f"error:handler not found,topic:{topic}"


def public_topic_error(endpoint: str, topic, symbols: Symbols) -> str | None:
    """None when ``topic`` exists on the ``endpoint`` socket, else Bybit's error text."""
    if not isinstance(topic, str):
        return handler_not_found(topic)
    try:
        parsed = topic_from_name(endpoint, topic)
    except (TopicError, IndexError, ValueError):
        return handler_not_found(topic)
    parts = topic.split(".")
    if parsed.channel == "trades":
        sym = parts[1]
        ok = (len(parts) == 2 and SYMBOL_RE.fullmatch(sym) is not None
              and (endpoint != "option" or "-" not in sym)
              and symbols.allows(endpoint, sym, base_coin=endpoint == "option"))
        return None if ok else handler_not_found(topic)
    if parsed.name != topic or not symbols.allows(endpoint, parsed.symbol or ""):
        return handler_not_found(topic)
    return None


def private_topic_error(topic, authenticated: bool) -> str | None:
    if not isinstance(topic, str) or topic not in PRIVATE_TOPICS:
        return handler_not_found(topic)
    if not authenticated:
        return f"error:topic:{topic} needs auth first"
    return None


@dataclass(frozen=True)
class SubscribePlan:
    accepted: tuple[str, ...]     # topics to add to the connection
    failed: tuple[str, ...]       # topics reported as failed (option failTopics)
    error: str | None             # ret_msg of a success:false ack; None = success


def plan_subscribe(endpoint: str, args, existing, topic_error, mode: str) -> SubscribePlan:
    """Decide what a subscribe request does.

    ``topic_error(topic)`` returns an error text or None; ``mode`` is "whole" (one bad topic
    fails the request, nothing from it is subscribed) or "partial" (good topics are
    subscribed, the ack names the first bad one). Bybit does not document which it does.
    """
    if not isinstance(args, list) or not args:
        return SubscribePlan((), tuple(args) if isinstance(args, list) else (), "error:args invalid")
    if endpoint == "spot" and len(args) > SPOT_MAX_ARGS:
        return SubscribePlan((), tuple(args), "args size >10")
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    seen = set(existing)
    for topic in args:
        err = topic_error(topic)
        if err is None and topic in seen:
            err = f"error:already subscribed,topic:{topic}"
        if err is None:
            good.append(topic)
            seen.add(topic)
        else:
            bad.append((topic, err))
    if endpoint == "option" and len(existing) + len(good) > OPTION_MAX_TOPICS:
        return SubscribePlan((), tuple(args), f"error:topics exceed {OPTION_MAX_TOPICS}")
    if not bad:
        return SubscribePlan(tuple(good), (), None)
    if mode == "partial":
        return SubscribePlan(tuple(good), tuple(str(t) for t, _ in bad), bad[0][1])
    return SubscribePlan((), tuple(str(t) for t in args), bad[0][1])


def sub_ack(endpoint: str, op: str, conn_id: str, req_id, plan: SubscribePlan,
            requested=()) -> dict:
    """The (un)subscribe ack in the endpoint's shape (PROTOCOL.md 4.2)."""
    ok = plan.error is None
    if endpoint == "option":
        frame = {"success": ok, "conn_id": conn_id}
        if req_id is not None:
            frame["req_id"] = req_id
        frame["data"] = {"failTopics": list(plan.failed),
                         "successTopics": list(plan.accepted if op == "subscribe" else requested)}
        frame["type"] = "COMMAND_RESP"
        if not ok:
            frame["ret_msg"] = plan.error
        return frame
    if endpoint == "spot":
        frame = {"success": ok, "ret_msg": op if ok else plan.error, "conn_id": conn_id}
        if req_id is not None:
            frame["req_id"] = req_id
        frame["op"] = op
        return frame
    if endpoint == PRIVATE:
        frame = {"req_id": req_id} if req_id is not None else {}
        frame.update({"success": ok, "ret_msg": "" if ok else plan.error, "op": op, "conn_id": conn_id})
        return frame
    return {"success": ok, "ret_msg": "" if ok else plan.error, "conn_id": conn_id,
            "req_id": "" if req_id is None else req_id, "op": op}


def pong(endpoint: str, conn_id: str, req_id, now_ms: int) -> dict:
    """The reply to a JSON ``{"op":"ping"}`` (PROTOCOL.md 3.3)."""
    if endpoint == "option":
        frame = {"args": [str(now_ms)], "op": "pong"}
        if req_id is not None:
            frame["req_id"] = req_id
        return frame
    if endpoint == PRIVATE:
        frame = {"req_id": req_id} if req_id is not None else {}
        frame.update({"op": "pong", "args": [str(now_ms)], "conn_id": conn_id})
        return frame
    frame = {"success": True, "ret_msg": "pong", "conn_id": conn_id}
    if endpoint != "spot" or req_id is not None:
        frame["req_id"] = "" if req_id is None else req_id
    frame["op"] = "ping"
    return frame


def error_reply(endpoint: str, conn_id: str, req_id, op, ret_msg: str) -> dict:
    """A ``success:false`` reply to something that is not a subscribe (bad JSON, unknown op)."""
    frame = {"success": False, "ret_msg": ret_msg, "conn_id": conn_id}
    if req_id is not None or endpoint in ("linear", "inverse"):
        frame["req_id"] = "" if req_id is None else req_id
    frame["op"] = op if isinstance(op, str) else ""
    return frame


def sign(secret: str, expires: int) -> str:
    """PROTOCOL.md 2.2: lowercase hex HMAC-SHA256 of ``GET/realtime{expires}``."""
    return hmac.new(secret.encode(), f"GET/realtime{expires}".encode(), hashlib.sha256).hexdigest()


def auth_ok(args, api_key: str, api_secret: str, now_ms: int) -> bool:
    """True when ``args`` is ``[key, expires_ms, signature]`` valid now."""
    if not isinstance(args, list) or len(args) != 3:
        return False
    key, expires, signature = args
    if isinstance(expires, str) and expires.isdigit():
        expires = int(expires)
    if isinstance(expires, bool) or not isinstance(expires, int) or not isinstance(signature, str):
        return False
    if not isinstance(key, str) or not hmac.compare_digest(key.encode(), api_key.encode()):
        return False
    if expires <= now_ms:
        return False
    return hmac.compare_digest(signature.encode(), sign(api_secret, expires).encode())


def auth_reply(conn_id: str, req_id, ok: bool) -> dict:
    frame = {"req_id": req_id} if req_id is not None else {}
    frame.update({"success": ok, "ret_msg": "" if ok else "Params Error", "op": "auth", "conn_id": conn_id})
    return frame


_MAX_ACTIVE = re.compile(r"(\d+)([sm])")
DEFAULT_MAX_ACTIVE_S = 600.0


def parse_max_active_time(value: str | None) -> float:
    """``30s``..``600s`` or ``1m``..``10m`` -> seconds; None -> Bybit's 10-minute default."""
    if value is None:
        return DEFAULT_MAX_ACTIVE_S
    m = _MAX_ACTIVE.fullmatch(value)
    seconds = int(m.group(1)) * (60 if m.group(2) == "m" else 1) if m else -1
    if not 30 <= seconds <= 600:
        raise ValueError(f"max_active_time must be 30s..600s or 1m..10m, got {value!r}")
    return float(seconds)
