"""Bybit's system-status socket (``/v5/public/misc/status``, topic ``system.status``):
its maintenance and incident notices.

Ingest holds it by itself (no API request; ``GW_EXCHANGE_STATUS=false`` turns it off), on a
connection of its own outside the manager's table-driven topics, so converging to the
subscriptions table never drops it. Every push goes to the publisher (event class
``exchange_status``); the notices still in force are kept for ingest's status file, which
``GET /api/v1/status`` shows. ``fold`` and ``in_force`` are pure.
"""
from __future__ import annotations

import asyncio
import time

from common.identity import bybit_ms
from common.logs import get_logger
from common.topics import STATUS_ENDPOINT, STATUS_PATH, STATUS_TOPIC
from ingest import parse
from ingest.connection import Connection

log = get_logger(__name__)
CLASS = "exchange_status"
ENDED = ("completed", "canceled")
RETRY_S = 30.0             # a refused subscribe is asked again this much later, not in a loop
MAX_NOTICES = 200          # Bybit posts a few a month; a flood must not grow the status file
KEPT_FIELDS = ("id", "title", "state", "begin", "end", "maintainType", "serviceTypes", "product", "href")


class NoticeError(ValueError):
    """A system.status push we cannot read (the frame is still published as it came)."""


def fold(notices: dict[str, dict], frame: dict) -> dict[str, dict]:
    """The notices after one push: each one named by ``id`` replaces the one before; a
    completed or canceled one is dropped. Returns a new dict; raises NoticeError."""
    data = frame.get("data")
    if not isinstance(data, list):
        raise NoticeError(f"system.status: data is not a list ({type(data).__name__})")
    out = dict(notices)
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise NoticeError(f"system.status: notice without an id: {str(item)[:100]}")
        if item.get("state") in ENDED:
            out.pop(item["id"], None)
            continue
        notice = {k: item.get(k) for k in KEPT_FIELDS}
        notice["begin"], notice["end"] = bybit_ms(item.get("begin")), bybit_ms(item.get("end"))
        out.pop(item["id"], None)
        out[item["id"]] = notice              # newest last: the oldest go first past the bound
    while len(out) > MAX_NOTICES:
        out.pop(next(iter(out)))
    return out


def in_force(notices: dict[str, dict], now_ms: int) -> list[dict]:
    """Notices not past their end, by begin time; ``active``: ongoing now (not only scheduled)."""
    out = []
    for n in notices.values():
        end, begin = n.get("end"), n.get("begin")
        if end is not None and end <= now_ms:
            continue
        started = begin is None or begin <= now_ms
        out.append({**n, "active": n.get("state") == "ongoing" and started})
    return sorted(out, key=lambda n: (n["begin"] is None, n["begin"] or 0, n["id"]))


class ExchangeStatus:
    """The system.status connection; plays the manager's part for its one ``Connection``."""

    def __init__(self, mgr, handoff):
        self.mgr, self.handoff = mgr, handoff
        self.settings, self.budget, self.task_failures, self.clock = mgr.settings, mgr.budget, mgr.task_failures, \
            mgr.clock
        self.conn = Connection(self, STATUS_ENDPOINT, f"{mgr.settings.ws_public_base}/{STATUS_PATH}", 1)
        self.notices: dict[str, dict] = {}
        self.subscribed = False
        self.error: str | None = None
        self.frames = 0
        self.last_event_ms: int | None = None

    def start(self) -> None:
        self.conn.start()
        self.conn.add(STATUS_TOPIC)

    async def close(self) -> None:
        await self.conn.close()

    # -- what Connection calls on its manager ----------------------------------------
    def subscribing(self, conn, names) -> None:
        pass

    def subscription_result(self, conn, name: str, ok: bool, error: str | None) -> None:
        if ok != self.subscribed or error != self.error:
            (log.info if ok else log.warning)("exchange_status_subscription", ok=ok, error=error)
        self.subscribed, self.error = ok, error
        if not ok:
            conn.topics.discard(name)
            # always wanted: asked again later (at once would be a loop of refusals)
            asyncio.get_running_loop().call_later(RETRY_S, conn.add, name)

    def on_data(self, conn, session, obj: dict | None, topic: str, raw: bytes, recv_ns: int) -> None:
        """A push; ``obj`` None when the connection read only its topic (parsed here)."""
        if topic != STATUS_TOPIC:
            self.mgr.bad_frame(conn, f"unexpected topic {topic!r} on the system-status socket", raw)
            return
        try:
            if obj is None:
                obj = parse.loads(raw)
            self.notices = fold(self.notices, obj)
        except parse.FrameError as exc:
            self.mgr.bad_frame(conn, str(exc), raw)
            return      # not JSON: nothing a consumer could read either
        except NoticeError as exc:
            self.mgr.bad_frame(conn, str(exc), raw)     # still published: consumers see what Bybit sent
        self.handoff.frame(STATUS_ENDPOINT, topic, CLASS, raw, recv_ns, session.id)
        self.frames += 1
        self.last_event_ms = recv_ns // 1_000_000
        log.info("exchange_status_notice", notices=len(self.notices), frame=raw[:300].decode(errors="replace"))

    def bad_frame(self, conn, error: str, raw: bytes) -> None:
        self.mgr.bad_frame(conn, error, raw)

    def connection_event(self, kind: str, conn, details: dict) -> None:
        self.mgr.connection_event(kind, conn, details)

    # -- reporting ----------------------------------------------------------------------
    def status(self, now_ms: int | None = None) -> dict:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return {"enabled": True, "subscribed": self.subscribed, "error": self.error, "frames": self.frames,
                "last_event_ms": self.last_event_ms, "connection": self.conn.describe(),
                "notices": in_force(self.notices, now_ms)}
