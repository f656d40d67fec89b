"""One WebSocket of a connection: its pending requests, liveness times and heartbeat.

A private connection has two sessions while it rotates; a public one has one at a time.
"""
from __future__ import annotations

import asyncio
import itertools
import time

import orjson
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from common.logs import get_logger

log = get_logger("ingest.connection")


class SessionLost(Exception):
    pass


class Session:
    """One socket of a connection (a private connection has two while it rotates)."""

    _serials = itertools.count(1)

    def __init__(self, ws, conn_id: str):
        self.ws = ws
        self.id = conn_id
        self.serial = next(self._serials)     # tells a rotating connection's two sockets apart
        self.pending: dict[str, asyncio.Future] = {}
        self.subscribed: set[str] = set()
        now = time.monotonic()
        self.opened = now
        self.last_rx = now
        self.last_pong = now
        self.done = asyncio.Event()
        self.reason = ""
        self.tasks: list[asyncio.Task] = []
        self.bybit_conn_id: str | None = None
        self.announced = False          # private: the manager was told its topics are subscribed
        self.rotate_not_before = 0.0    # private: monotonic time before which no rotation is tried

    def lost(self, reason: str) -> None:
        if not self.done.is_set():
            self.reason = reason
            self.done.set()
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(SessionLost(reason))

    async def close(self) -> None:
        self.lost(self.reason or "closed")
        for t in self.tasks:
            t.cancel()
        try:
            await asyncio.wait_for(self.ws.close(), 2.0)
        except Exception:
            self.ws.transport.abort()


async def heartbeat(session: Session, ping_every: float, dead_after: float) -> None:
    """JSON ping every ping_interval; no pong (or no frame at all) within dead_after: dead.

    Stricter than "dead when neither pong nor frame arrives": data still arriving on a socket
    whose pings go unanswered is not trusted, since Bybit answers every ping and a server that
    stops reading our frames won't take a subscribe or a resync either
    (docs/bybit.md#heartbeat-and-dead-links)."""
    tick = min(1.0, ping_every / 4)
    last_ping = 0.0
    n = itertools.count(1)
    try:
        while not session.done.is_set():
            now = time.monotonic()
            if now - last_ping >= ping_every:
                await session.ws.send(orjson.dumps({"req_id": f"ping-{next(n)}", "op": "ping"}), text=True)
                last_ping = now
            silent, no_pong = now - session.last_rx, now - session.last_pong
            if silent > dead_after or no_pong > dead_after:
                what = f"silent for {silent:.1f}s" if silent > dead_after else f"no pong for {no_pong:.1f}s"
                log.warning("dead_link", conn=session.id, detail=what)
                session.lost(f"dead link: {what}")
                session.ws.transport.abort()
                return
            await asyncio.sleep(tick)
    except ConnectionClosed as exc:
        session.lost(describe(exc))


def describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        return f"closed by peer ({rcvd.code} {rcvd.reason})" if rcvd else "connection dropped (no close frame)"
    if isinstance(exc, (InvalidHandshake, InvalidURI)):
        return f"handshake failed: {exc}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
