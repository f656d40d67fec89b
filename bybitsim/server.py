"""Transport: one websockets server on one port for the WebSocket endpoints, Bybit REST
and the control API, plus the tasks that push data.

- WS ``/v5/public/{spot,linear,inverse,option}`` and ``/v5/private[?max_active_time=]``.
- Plain HTTP (``/v5/market/time``, ``/__sim/...``) is answered from ``process_request``.
  websockets refuses request bodies, so ``SimConnection`` lifts the body off a request
  before the handshake parser sees it and hands it to ``process_request``.
"""
from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from common.logs import RateLimited, get_logger

from . import httpapi
from .options import SimOptions
from .facts import STATUS_ENDPOINT
from .protocol import ENDPOINTS, PRIVATE, parse_max_active_time
from .session import Conn, handle_text
from .sim import Simulator, now_ms

log = get_logger("bybitsim.server")
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_BURST = 500          # frames per topic per publisher pass, so one topic cannot starve others
# Public frames due within 5 ms go out in one write, as an exchange's pushes reach a client
# grouped by the network (Bybit itself pushes a 50-level book every 20 ms). Each pass costs the
# simulator a wake-up and a write: at 10,700 frames/s a pass every 1 ms cost it 34 us of CPU per
# frame, every 5 ms 25 us, flooding 13 us; CPU the gateway it feeds shares on a small machine.
PASS_S = 0.005
PRIVATE_POLL_S = 0.1     # how often a private connection checks its close deadlines


class SimConnection(ServerConnection):
    """A ServerConnection that accepts HTTP requests with a body (for POST /__sim/...)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head: bytearray | None = bytearray()
        self.http_body = b""

    def data_received(self, data: bytes) -> None:
        if self._head is None:
            return super().data_received(data)
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self._head = None
                super().data_received(b"")
                self.transport.abort()
            return
        head = bytes(self._head[:end + 4])
        m = _CONTENT_LENGTH.search(head)
        length = int(m.group(1)) if m else 0
        if length > MAX_BODY:
            self.transport.abort()
            return
        if len(self._head) < end + 4 + length:
            return                      # wait for the rest of the body
        self.http_body = bytes(self._head[end + 4:end + 4 + length])
        rest = bytes(self._head[end + 4 + length:])
        self._head = None
        if m:
            head = head[:m.start(1)] + b"0" + head[m.end(1):]
        super().data_received(head + rest)


class SimServer:
    """The simulator's server; ``start()`` binds, ``stop()`` closes everything."""

    def __init__(self, opts: SimOptions):
        self.opts = opts
        self.sim = Simulator(opts)
        self.server = None
        self.port: int | None = None
        self._account_task: asyncio.Task | None = None
        self._warn = RateLimited(log)

    async def start(self) -> None:
        self.server = await serve(
            self._handler, self.opts.host, self.opts.port,
            create_connection=SimConnection, process_request=self._process_request,
            ping_interval=None,          # Bybit's heartbeat is the JSON ping; we only answer
            compression=None, close_timeout=1, max_queue=64, server_header="bybitsim",
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self._account_task = asyncio.get_running_loop().create_task(self._account_loop())
        log.info("listening", host=self.opts.host, port=self.port, rate=self.opts.rate,
                 account_rate=self.opts.account_rate, symbols=self.opts.symbols or "*")

    async def stop(self) -> None:
        if self._account_task:
            self._account_task.cancel()
        if self.server is None:
            return
        for conn in list(self.sim.conns.values()):
            self.sim.set_stall(conn, False)
        self.server.close()
        try:
            await asyncio.wait_for(self.server.wait_closed(), 3)
        except TimeoutError:
            for conn in list(self.sim.conns.values()):
                conn.ws.transport.abort()
        log.info("stopped")

    # -- HTTP and handshake -------------------------------------------------------------

    def _process_request(self, connection: SimConnection, request):
        url = urlsplit(request.path)
        parts = url.path.rstrip("/").split("/")
        endpoint = None
        if url.path.startswith("/v5/public/") and len(parts) == 4 and parts[3] in ENDPOINTS[:4]:
            endpoint = parts[3]
        elif url.path.rstrip("/") == "/v5/public/misc/status":
            endpoint = STATUS_ENDPOINT
        elif url.path.rstrip("/") == "/v5/private":
            endpoint = PRIVATE
        if endpoint is None or request.headers.get("Upgrade", "").lower() != "websocket":
            method = getattr(request, "method", "GET")
            status, body, headers = httpapi.route(self.sim, method, url.path, connection.http_body,
                                                  url.query, request.headers)
            return self._json(connection, status, body, headers)
        max_active = None
        if endpoint == PRIVATE:
            values = parse_qs(url.query).get("max_active_time")
            try:
                max_active = parse_max_active_time(values[-1] if values else None)
            except ValueError as exc:
                return self._json(connection, 400, {"retCode": 10001, "retMsg": str(exc)})
        connection.sim_endpoint = endpoint
        connection.sim_max_active = max_active
        return None

    @staticmethod
    def _json(connection, status: int, body: dict | bytes, headers: dict | None = None):
        """A JSON response (``body`` bytes: an HTML error page, as a proxy in front of Bybit sends)."""
        response = connection.respond(status, "")
        payload = body if isinstance(body, bytes) else httpapi.encode(body)
        response.body = payload
        del response.headers["Content-Type"], response.headers["Content-Length"]   # a multi-dict
        response.headers["Content-Type"] = "text/html" if isinstance(body, bytes) else "application/json"
        response.headers["Content-Length"] = str(len(payload))
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    # -- connections ---------------------------------------------------------------------

    async def _handler(self, ws: SimConnection) -> None:
        sim = self.sim
        conn = sim.open_conn(ws.sim_endpoint, ws, ws.sim_max_active or 0.0)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._publisher(conn))]
        if conn.endpoint == PRIVATE:
            tasks.append(loop.create_task(self._private_watchdog(conn)))
        for task in tasks:
            task.add_done_callback(lambda t, c=conn: self._task_done(t, c))
        try:
            async for text in ws:
                conn.last_client_mono = time.monotonic()
                for reply in handle_text(sim, conn, text, now_ms()):
                    await ws.send(orjson.dumps(reply), text=True)
        except ConnectionClosed:
            pass
        finally:
            conn.closing = True
            for task in tasks:
                task.cancel()
            sim.close_conn(conn)

    def _task_done(self, task: asyncio.Task, conn: Conn) -> None:
        if task.cancelled() or isinstance(task.exception(), ConnectionClosed):
            return
        if task.exception() is not None:
            log.error("connection_task_failed", conn_id=conn.id, exc_info=task.exception())
            conn.ws.transport.abort()

    async def _publisher(self, conn: Conn) -> None:
        """Sends account pushes and public frames at ``rate`` per topic until cancelled."""
        sim = self.sim
        loop = asyncio.get_running_loop()
        while True:
            conn.changed.clear()
            timeout = None
            if not conn.stalled:
                if conn.pushes:
                    topics = [topic for topic, _ in conn.pushes]
                    payloads = [orjson.dumps(frame) for _, frame in conn.pushes]
                    conn.pushes.clear()
                    await self._write(conn, payloads)
                    at_ms = now_ms()
                    for topic, payload in zip(topics, payloads):
                        sim.sent(conn, topic)
                        if conn.endpoint == PRIVATE:
                            sim.account.record_push(conn.id, payload, at_ms)   # the bytes sent, not the dicts
                if sim.rate > 0 and conn.due:
                    started = time.monotonic()
                    await self._public_pass(conn, 1.0 / sim.rate)
                    if conn.due:
                        timeout = max(0.0, min(conn.due.values()) - time.monotonic(),
                                      started + PASS_S - time.monotonic())
            if conn.changed.is_set() or timeout == 0.0:
                await asyncio.sleep(0)       # let the handler and other connections run
                continue
            # a timer setting the event, not wait_for: no task per wake-up
            timer = None if timeout is None else loop.call_later(timeout, conn.changed.set)
            try:
                await conn.changed.wait()
            finally:
                if timer is not None:
                    timer.cancel()

    async def _public_pass(self, conn: Conn, interval: float) -> None:
        """Builds every frame due now (at most MAX_BURST per topic) and writes them at once."""
        sim = self.sim
        now, ts = time.monotonic(), now_ms()
        batch, rows = [], []
        # only the topics due now: most are not, and looking at each of them was most of a pass
        jitter, append = sim.pace_rng.random, batch.append
        for topic, due in [item for item in conn.due.items() if item[1] <= now]:
            stream = conn.topics.get(topic)
            if stream is None:
                continue
            # once per topic, not per frame: nothing else runs until the pass is written
            sim.book_frame_faults(conn, topic, stream)
            # [topic, its next frame, when it is due, mean gap, frames this pass]
            rows.append([topic, stream.encoded, due, interval * sim.slowness(conn.endpoint, topic), 0])
        # One frame per due topic per round, as an exchange interleaves its streams, not each topic's
        # frames in one run: when the simulator is behind a pass holds hundreds per topic, and in runs
        # every book of the pass came before every ticker, so a reader serving the oldest first
        # always served books first.
        active = rows
        while active:
            still = []
            for row in active:
                append(row[1](ts))
                # Jittered gaps (mean = the interval): topics drift out of phase, so frames arrive
                # spread out as from an exchange, not as one burst of every topic per period.
                row[2] += row[3] * (0.5 + jitter())
                row[4] += 1
                if row[2] <= now and row[4] < MAX_BURST:
                    still.append(row)
            active = still
        for row in rows:
            if row[2] < now - 1.0:
                row[2] = now                # more than a second behind: skip, do not burst
                sim.count("frames_skipped")
            conn.due[row[0]] = row[2]
        if batch:
            await self._write(conn, batch)
            for row in rows:
                sim.frames_sent[f"{conn.endpoint}:{row[0]}"] += row[4]

    @staticmethod
    async def _write(conn: Conn, payloads: list[bytes]) -> None:
        """Many text messages in one socket write with websockets' flow control (one drain per
        batch). websockets writes each frame's bytes separately: a send() per frame. With no
        extension (no compression: the server offers none) a server's text frame is a 2-10 byte
        header and the payload, built here: websockets' frame serializer was a tenth of a flood."""
        ws = conn.ws
        async with ws.send_context():
            protocol = ws.protocol
            if (protocol.state is State.OPEN and not protocol.extensions and not protocol.expect_continuation_frame
                    and not protocol.writes):
                chunks = []
                for payload in payloads:
                    chunks += (_text_header(len(payload)), payload)
                ws.transport.write(b"".join(chunks))
                return
            for payload in payloads:
                protocol.send_text(payload)
            chunks = protocol.data_to_send()
            if all(chunks):
                ws.transport.write(b"".join(chunks))
            else:       # an end-of-stream marker among them: websockets' own writer handles it
                protocol.writes.extend(chunks)

    async def _private_watchdog(self, conn: Conn) -> None:
        """max_active_time (no client traffic for that long) and the close_private hook."""
        while True:
            now = time.monotonic()
            reason = None
            if conn.max_active_s and now - conn.last_client_mono >= conn.max_active_s:
                reason = "max_active_time"
            after = self.sim.faults.close_private_after_s
            if after is not None and now - conn.opened_mono >= after:
                reason = "close_private"
            if reason:
                log.info("closing_private", conn_id=conn.id, reason=reason)
                conn.closing = True
                if conn.stalled:
                    self.sim.set_stall(conn, False)
                await conn.ws.close(1000, reason)
                return
            await asyncio.sleep(PRIVATE_POLL_S)

    async def _account_loop(self) -> None:
        """The account moves at ``account_rate`` events/s whether or not anyone listens."""
        last = time.monotonic()
        while True:
            rate = self.sim.account_rate
            now = time.monotonic()
            if rate <= 0:
                last = now
                await asyncio.sleep(0.1)
                continue
            due = last + 1.0 / rate
            if now < due:
                await asyncio.sleep(min(due - now, 0.1))   # short naps: a rate change applies at once
                continue
            last = max(due, now - 1.0)
            try:
                self.sim.account_step()
            except Exception:        # a bug in one event must not stop the account
                self._warn("error", "account_step_failed", exc_info=True)
                self.sim.count("account_errors")


_SHORT_HEADERS = [bytes((0x81, n)) for n in range(126)]


def _text_header(n: int) -> bytes:
    """The header of one final, unmasked text frame of ``n`` bytes (RFC 6455 5.2: a server
    never masks); written beside the payload, not copied into one with it."""
    if n < 126:
        return _SHORT_HEADERS[n]
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big")
    return b"\x81\x7f" + n.to_bytes(8, "big")
