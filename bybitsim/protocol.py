"""Bybit v5 control frames, pure: topic checks, subscribe planning, acks, pongs, auth.

Every reply has the shape of Bybit's recorded control frames; what is accepted comes
from ``facts``. Nothing here does I/O or reads the clock; callers pass ``now_ms``.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from . import facts
from .facts import ENDPOINTS, PRIVATE, PUBLIC_CATEGORIES, handler_not_found

__all__ = ["ENDPOINTS", "PRIVATE", "PUBLIC_CATEGORIES", "Symbols", "SubscribePlan", "handler_not_found",
           "public_topic_error", "private_topic_error", "plan_subscribe", "sub_ack", "pong",
           "error_reply", "sign", "auth_ok", "auth_reply", "parse_max_active_time"]


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
            shaped = facts.symbol_ok(cat, sym) if cat else (
                facts.PLAIN_SYMBOL_RE.fullmatch(sym) is not None or facts.is_option_symbol(sym))
            if not shaped:
                raise ValueError(f"SIM_SYMBOLS: {sym!r} is not an upper-case Bybit symbol"
                                 + (f" of {cat}" if cat else ""))
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


def public_topic_error(endpoint: str, topic, symbols: Symbols) -> str | None:
    """None when ``topic`` exists on the ``endpoint`` socket, else Bybit's error text."""
    parsed = facts.parse_public(endpoint, topic)
    if parsed is None:
        return handler_not_found(topic)
    if parsed.kind in ("insurance", "adlAlert"):
        return None                                   # pools exist whatever symbols are listed
    base_coin = parsed.kind == "publicTrade" and endpoint == "option"
    return None if symbols.allows(endpoint, parsed.symbol, base_coin=base_coin) else handler_not_found(topic)


def private_topic_error(topic, authenticated: bool) -> str | None:
    if not isinstance(topic, str) or facts.private_parts(topic) is None:
        return handler_not_found(topic)
    if not authenticated:
        return facts.needs_auth(topic)
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
    max_args = facts.MAX_ARGS_PER_REQUEST.get(endpoint)
    if max_args is not None and len(args) > max_args:
        return SubscribePlan((), tuple(args), facts.args_size_exceeded(max_args))
    if endpoint == PRIVATE:
        pair = facts.mixed_private_pair(args)
        if pair is not None:
            return SubscribePlan((), tuple(str(t) for t in args), facts.mixed_private_request(*pair))
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    seen = set(existing)
    for topic in args:
        err = topic_error(topic)
        if err is None and topic in seen:
            err = facts.already_subscribed(topic)
        if err is None:
            good.append(topic)
            seen.add(topic)
        else:
            bad.append((topic, err))
    max_topics = facts.MAX_TOPICS_PER_CONNECTION.get(endpoint)
    if max_topics is not None and len(existing) + len(good) > max_topics:
        return SubscribePlan((), tuple(args), facts.topics_exceeded(max_topics))
    if endpoint != PRIVATE:
        chars = sum(len(t) for t in existing) + sum(len(t) for t in good)
        if chars > facts.MAX_TOPIC_CHARS_PER_CONNECTION:
            return SubscribePlan((), tuple(args), facts.topic_chars_exceeded(facts.MAX_TOPIC_CHARS_PER_CONNECTION))
    if not bad:
        return SubscribePlan(tuple(good), (), None)
    if mode == "partial":
        return SubscribePlan(tuple(good), tuple(str(t) for t, _ in bad), bad[0][1])
    return SubscribePlan((), tuple(str(t) for t in args), bad[0][1])


def sub_ack(endpoint: str, op: str, conn_id: str, req_id, plan: SubscribePlan,
            requested=()) -> dict:
    """The (un)subscribe ack in the endpoint's shape."""
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
    """The reply to a JSON ``{"op":"ping"}``: its shape differs per endpoint."""
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
    """Lowercase hex HMAC-SHA256 of ``GET/realtime{expires}``."""
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
