"""A stand-in for Bybit's private socket whose pushes and answers the test scripts.

It speaks the private protocol as ingest needs it (auth, subscribe and unsubscribe acks,
JSON ping -> pong) over a real WebSocket on loopback, numbers its connections 1, 2, ...
in the order they open, and knows which are still open. A test decides what a
connection's subscribe gets: an ack (after an optional coroutine, e.g. pushes sent
first) or no answer at all.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time

from websockets.asyncio.server import serve

from tests.support import free_port

ACK, SILENT = "ack", "silent"


class ScriptedPrivate:
    def __init__(self):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/v5/private"
        self.opened = 0
        self.live: dict[int, object] = {}           # connection number -> its socket, while open
        self.subscribes: dict[int, list[str]] = {}  # connection number -> topics it asked for
        self.subscribe_mode: dict[int, str] = {}    # connection number -> ACK (default) or SILENT
        self.before_ack: dict[int, object] = {}     # connection number -> coroutine function, run once
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="scripted-private")
        self.thread.start()
        if not self._started.wait(5):
            raise RuntimeError("scripted private server did not start")

    # -- test side -------------------------------------------------------------------
    def push(self, frame: dict, conns: list[int] | None = None) -> list[int]:
        """Send ``frame`` on the given open connections (all open ones when None); returns them."""
        return asyncio.run_coroutine_threadsafe(self.send_all(frame, conns), self.loop).result(5)

    def open_connections(self) -> list[int]:
        with self._lock:
            return sorted(self.live)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(5)

    # -- server side -----------------------------------------------------------------
    async def send_all(self, frame: dict, conns: list[int] | None = None) -> list[int]:
        with self._lock:
            targets = [(n, ws) for n, ws in self.live.items() if conns is None or n in conns]
        payload = json.dumps(frame)
        for _, ws in targets:
            await ws.send(payload)
        return [n for n, _ in targets]

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", self.port):
            self._started.set()
            await self._stop.wait()

    async def _handler(self, ws) -> None:
        with self._lock:
            self.opened += 1
            n = self.opened
            self.live[n] = ws
        try:
            async for msg in ws:
                req = json.loads(msg)
                op, req_id = req.get("op"), req.get("req_id", "")
                if op == "auth":
                    await ws.send(json.dumps({"req_id": req_id, "success": True, "ret_msg": "", "op": "auth",
                                              "conn_id": f"scripted-{n}"}))
                elif op == "ping":
                    await ws.send(json.dumps({"req_id": req_id, "op": "pong", "args": [str(int(time.time() * 1000))],
                                              "conn_id": f"scripted-{n}"}))
                elif op in ("subscribe", "unsubscribe"):
                    if op == "subscribe":
                        self.subscribes.setdefault(n, []).extend(req.get("args") or [])
                        if self.subscribe_mode.get(n, ACK) == SILENT:
                            continue
                        hook = self.before_ack.pop(n, None)
                        if hook is not None:
                            await hook()
                    await ws.send(json.dumps({"req_id": req_id, "success": True, "ret_msg": "", "op": op,
                                              "conn_id": f"scripted-{n}"}))
        except Exception:       # the client went away mid-send: nothing to clean but the table
            pass
        finally:
            with self._lock:
                self.live.pop(n, None)
