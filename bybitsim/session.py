"""One client connection's protocol state and its request handling.

``handle_text`` turns one client text frame into the replies to send, updating the
connection's subscriptions and the simulator's counters. It does no I/O; the server
sends what it returns.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque

import orjson

from . import facts
from . import protocol as p
from .streams import Stream, make_stream


class Conn:
    """A client connection as the simulator sees it."""

    def __init__(self, conn_id: str, endpoint: str, ws, max_active_s: float, now_ms: int):
        self.id, self.endpoint, self.ws = conn_id, endpoint, ws
        self.opened_at_ms = now_ms
        self.opened_mono = time.monotonic()
        self.last_client_mono = self.opened_mono
        self.max_active_s = max_active_s
        self.authenticated = False
        self.topics: dict[str, Stream | None] = {}   # private topics have no stream
        self.due: dict[str, float] = {}              # topic -> monotonic time of its next frame
        self.stalled = False
        self.changed = asyncio.Event()               # wakes the publisher: topics, rate, stall
        self.pushes: deque = deque()                 # account pushes waiting to be written
        self.closing = False

    def describe(self) -> dict:
        return {"id": self.id, "endpoint": self.endpoint, "authenticated": self.authenticated,
                "topics": list(self.topics), "opened_at_ms": self.opened_at_ms,
                "stalled": self.stalled, "max_active_time_s": self.max_active_s}

    def wake(self) -> None:
        self.changed.set()


def _req_id(msg: dict):
    rid = msg.get("req_id")
    return rid if rid is None or isinstance(rid, str) else str(rid)


def handle_text(sim, conn: Conn, text, now_ms: int) -> list[dict]:
    """Replies (dicts) to one client frame; subscriptions change as a side effect."""
    try:
        msg = orjson.loads(text)
        if not isinstance(msg, dict):
            raise ValueError("expected a JSON object")
    except ValueError as exc:
        sim.bad_request(conn, f"undecodable: {exc}")
        return [p.error_reply(conn.endpoint, conn.id, None, "",
                              f"Failed to decode incoming data: {exc}")]
    op, req_id = msg.get("op"), _req_id(msg)
    if op == "ping":
        sim.pings[conn.endpoint] += 1
        if not sim.faults.pong_enabled(conn.endpoint):
            return []
        return [p.pong(conn.endpoint, conn.id, req_id, now_ms)]
    if op == "auth" and conn.endpoint == p.PRIVATE:
        return [_auth(sim, conn, msg.get("args"), req_id, now_ms)]
    if op == "subscribe":
        return [_subscribe(sim, conn, msg.get("args"), req_id)]
    if op == "unsubscribe":
        return [_unsubscribe(sim, conn, msg.get("args"), req_id)]
    sim.bad_request(conn, f"unknown op {op!r}")
    return [p.error_reply(conn.endpoint, conn.id, req_id, op, "error:invalid op")]


def _auth(sim, conn: Conn, args, req_id, now_ms: int) -> dict:
    sim.auth_attempts += 1
    ok = not sim.faults.auth_fail and p.auth_ok(args, sim.opts.api_key, sim.opts.api_secret, now_ms)
    if ok:
        conn.authenticated = True
    else:
        sim.auth_failures += 1
    return p.auth_reply(conn.id, req_id, ok)


def topic_error(sim, conn: Conn, topic) -> str | None:
    if sim.faults.is_rejected(conn.endpoint, topic):
        return p.handler_not_found(topic)
    if conn.endpoint == p.PRIVATE:
        return p.private_topic_error(topic, conn.authenticated)
    if conn.endpoint == facts.STATUS_ENDPOINT:
        return None if topic == facts.STATUS_TOPIC else p.handler_not_found(topic)
    return p.public_topic_error(conn.endpoint, topic, sim.symbols)


def _subscribe(sim, conn: Conn, args, req_id) -> dict:
    plan = p.plan_subscribe(conn.endpoint, args, conn.topics, lambda t: topic_error(sim, conn, t),
                            sim.faults.reject_mode)
    now = time.monotonic()
    for topic in plan.accepted:
        stream = None
        if conn.endpoint == facts.STATUS_ENDPOINT:
            # the notices known now, then each change as it is posted (op status_notice)
            frame = sim.status_frame(None)
            if frame is not None:
                conn.pushes.append((topic, frame))
        elif conn.endpoint != p.PRIVATE:
            stream = make_stream(sim.market, conn.endpoint, topic, sim.opts.seed)
            conn.due[topic] = now
            sim.subscribes[f"{conn.endpoint}:{topic}"] += 1
        conn.topics[topic] = stream
    if plan.error is not None:
        sim.count("subscribe_failures")
    if plan.accepted:
        conn.wake()
    return p.sub_ack(conn.endpoint, "subscribe", conn.id, req_id, plan)


def _unsubscribe(sim, conn: Conn, args, req_id) -> dict:
    if not isinstance(args, list):
        plan = p.SubscribePlan((), (), "error:args invalid")
        return p.sub_ack(conn.endpoint, "unsubscribe", conn.id, req_id, plan)
    removed = []
    for topic in args:
        if isinstance(topic, str) and conn.topics.pop(topic, False) is not False:
            conn.due.pop(topic, None)
            removed.append(topic)
    conn.wake()
    plan = p.SubscribePlan(tuple(removed), (), None)
    return p.sub_ack(conn.endpoint, "unsubscribe", conn.id, req_id, plan, requested=args)
