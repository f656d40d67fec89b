"""One Bybit WebSocket connection, kept alive for as long as it holds topics.

Transport only: it connects, authenticates (private), subscribes in batches within
Bybit's limits, pings, declares the link dead when pongs or frames stop, reconnects
with backoff and resubscribes. Frames go to the manager; nothing here parses data.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import random
import time

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from common.logs import RateLimited, get_logger
from common.runtime import backoff_s
from common.topics import PRIVATE
from ingest import acks, auth, metrics, parse, plan
from ingest.session import Session, SessionLost, describe as _describe, heartbeat
from ingest.supervise import supervise
from ingest.wsclient import PushConnection

log = get_logger(__name__)
ACK_TIMEOUT_S = 10.0
ROTATION_RETRY_S = 5.0      # a failed rotation is tried again this long after it failed
STABLE_AFTER_S = 10.0       # a session up this long resets the backoff: the next retry is immediate


def _no_topic(raw: bytes) -> None:
    """The private socket's stand-in for parse.leading_topic: its pushes are always parsed whole."""
    return None


class AuthFailed(Exception):
    pass


class RotationFailed(Exception):
    pass


class Connection:
    _req = itertools.count(1)

    def __init__(self, mgr, endpoint: str, url: str, index: int):
        self.mgr, self.settings = mgr, mgr.settings
        self.endpoint, self.url = endpoint, url
        self.id = f"{endpoint}-{index}"
        self.topics: set[str] = set()           # what this connection should hold
        self.resync: set[str] = set()           # topics to unsubscribe and subscribe again
        self.state = "connecting"
        self.since = time.time()
        self.reconnects = 0
        self.attempts = 0
        self.last_error: str | None = None
        self.session: Session | None = None
        self._sessions: set[Session] = set()    # every open socket, also a rotation's new one
        self._lost_at: float | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._bad = RateLimited(log, 5.0)
        self.recorder = getattr(mgr, "recorder", None)   # ingest.recorder.Recorder when GW_RECORD_DIR is set

    # -- called by the manager -------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(
            supervise(f"conn-{self.id}", "connection", self.run, self.mgr.task_failures,
                      finished=lambda: self._closing, cleanup=self._after_failure, sleep=self._sleep,
                      backoff_max_s=self.settings.backoff_max_s),
            name=f"conn-{self.id}")

    def add(self, name: str) -> None:
        self.topics.add(name)
        self._wake.set()

    def remove(self, name: str) -> None:
        self.topics.discard(name)
        self.resync.discard(name)
        self._wake.set()

    def request_resync(self, name: str) -> None:
        self.resync.add(name)
        self._wake.set()

    async def close(self) -> None:
        self._closing = True
        self._closed.set()
        self._wake.set()
        if self._task:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except (asyncio.TimeoutError, Exception):
                self._task.cancel()
        for session in list(self._sessions):     # left by a task cancelled mid-way
            self._sessions.discard(session)
            session.lost("closing")
            for t in session.tasks:
                t.cancel()
            session.ws.transport.abort()

    def describe(self) -> dict:
        s = self.session
        return {"id": self.id, "endpoint": self.endpoint, "state": self.state, "since": self.since,
                "reconnects": self.reconnects, "attempts": self.attempts, "last_error": self.last_error,
                "topics": len(self.topics), "subscribed": len(s.subscribed) if s else 0,
                "bybit_conn_id": s.bybit_conn_id if s else None}

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()
        if error is not None:
            self.last_error = error

    # -- the loop ----------------------------------------------------------------
    async def run(self) -> None:
        while not self._closing:
            delay = max(backoff_s(self.attempts, self.settings.backoff_max_s, jitter=random.random()),
                        self.mgr.budget.delay())
            if delay:
                self._set_state("backoff")
                await self._sleep(delay)
                if self._closing:
                    break
            self._set_state("connecting")
            try:
                session = await self._open()
            except AuthFailed as exc:
                self.attempts += 1
                self._set_state("auth_failed", str(exc))
                continue
            except Exception as exc:
                self.attempts += 1
                self._set_state("disconnected", _describe(exc))
                log.warning("connect_failed", conn=self.id, error=_describe(exc), attempt=self.attempts)
                continue
            if self._lost_at is not None:
                self.mgr.connection_event("connection_restored", self, {"lost_at": self._lost_at,
                                                                        "restored_at": time.time()})
                self._lost_at = None
            reason = await self._hold(session)
            up_for = time.monotonic() - session.opened
            if self._closing:
                break
            self.reconnects += 1
            metrics.RECONNECTS.labels(self.endpoint).inc()
            self.attempts = 0 if up_for >= STABLE_AFTER_S else self.attempts + 1
            self._lost(reason)
            log.warning("connection_lost", conn=self.id, reason=reason, up_for_s=round(up_for, 1),
                        retry_attempt=self.attempts)
        self._set_state("closed")

    def _lost(self, reason: str) -> None:
        self._lost_at = time.time()
        self._set_state("disconnected", reason)
        self.mgr.connection_event("connection_lost", self, {"lost_at": self._lost_at, "reason": reason,
                                                           "topics": sorted(self.topics)})

    async def _after_failure(self, exc: BaseException | None) -> None:
        """run() died: close the sockets it left open (a reader left running would go on
        forwarding beside the next socket) and say the connection was lost."""
        sessions = list(self._sessions)
        for session in sessions:
            session.reason = session.reason or "connection task failed"
            await self._close_session(session)
        self.session = None     # the supervisor's backoff paces the restart, not self.attempts
        reason = f"internal error: {_describe(exc) if exc is not None else 'task ended'}"
        if sessions:
            self.reconnects += 1
            metrics.RECONNECTS.labels(self.endpoint).inc()
            self._lost(reason)
        else:
            self._set_state("disconnected", reason)

    async def _close_session(self, session: Session) -> None:
        self._sessions.discard(session)
        await session.close()

    async def _sleep(self, seconds: float) -> None:
        """Back off; only closing cuts it short (a topic added meanwhile must not)."""
        try:
            await asyncio.wait_for(self._closed.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _open(self) -> Session:
        """Connect and (private) authenticate; the session's reader and watchdog are running."""
        self.mgr.budget.take()
        metrics.CONNECTS.labels(self.endpoint).inc()
        url = self.url
        if self.endpoint == PRIVATE and self.settings.max_active_time:
            url += f"?max_active_time={self.settings.max_active_time}"
        ws = await asyncio.wait_for(connect(url, ping_interval=None, max_size=2 ** 24, open_timeout=10,
                                            close_timeout=2, max_queue=1024, create_connection=PushConnection), 15)
        session = Session(ws, self.id)
        try:
            if self.endpoint == PRIVATE:
                await self._authenticate(session)
            ws.deliver_to(functools.partial(self._deliver, session))
            session.tasks = [asyncio.create_task(self._read(session), name=f"read-{self.id}"),
                             asyncio.create_task(self._watch(session), name=f"watch-{self.id}")]
            self._sessions.add(session)
        except BaseException:
            ws.transport.abort()
            raise
        log.info("connected", conn=self.id, url=self.url)
        return session

    async def _authenticate(self, session: Session) -> None:
        await self.mgr.clock.refresh()
        req_id = f"auth-{next(self._req)}"
        request = auth.auth_request(self.settings.bybit_api_key, self.settings.bybit_api_secret,
                                    self.mgr.clock.expires_ms(), req_id)
        await session.ws.send(orjson.dumps(request), text=True)
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while True:
            raw = await asyncio.wait_for(session.ws.recv(decode=False), max(0.1, deadline - time.monotonic()))
            if self.recorder is not None:
                self.recorder.record(time.time_ns(), self.endpoint, self.id, session.serial, raw)
            try:
                ctl = parse.classify_control(parse.loads(raw))
            except parse.FrameError:
                continue
            if ctl.kind == parse.AUTH:
                break
        if not ctl.success:
            metrics.AUTH_FAILURES.inc()
            self.mgr.auth_result(False, ctl.ret_msg)
            log.error("auth_failed", conn=self.id, ret_msg=ctl.ret_msg,
                      hint="check BYBIT_API_KEY/SECRET belong to BYBIT_ENV and the host clock")
            raise AuthFailed(f"authentication refused: {ctl.ret_msg or 'no message'}")
        session.bybit_conn_id = ctl.conn_id
        self.mgr.auth_result(True, "")
        log.info("authenticated", conn=self.id, bybit_conn_id=ctl.conn_id)

    async def _hold(self, session: Session) -> str:
        """Keep the session's subscriptions in step with ``topics`` until it dies.

        A private connection with max_active_time rotates before Bybit's cut: the new
        socket is authenticated and subscribed before the old one is closed.
        """
        self.session = session
        self._set_state("ready")
        metrics.CONNECTED.labels(self.endpoint).inc()
        try:
            while True:
                rotate_in = self._rotate_in(session)
                try:
                    await self._sync(session)
                except SessionLost:
                    pass
                if self.endpoint == PRIVATE and session.subscribed and not session.announced \
                        and not session.done.is_set():
                    session.announced = True
                    self.mgr.private_subscribed(self)
                if session.done.is_set():
                    await self._close_session(session)
                    return session.reason
                if self._closing:
                    await self._close_session(session)
                    return "closing"
                if rotate_in is not None and rotate_in <= 0:
                    session = await self._rotate(session)
                    continue
                self._wake.clear()
                waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(session.done.wait())]
                await asyncio.wait(waits, timeout=rotate_in, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
        finally:
            metrics.CONNECTED.labels(self.endpoint).dec()
            self.session = None

    def _rotate_in(self, session: Session) -> float | None:
        mat = self.settings.max_active_time
        if self.endpoint != PRIVATE or not mat:
            return None
        limit = int(mat[:-1]) * (60 if mat.endswith("m") else 1)
        rotate_at = max(session.opened + max(limit * 0.5, limit - 15.0), session.rotate_not_before)
        return rotate_at - time.monotonic()

    async def _rotate(self, old: Session) -> Session:
        """Open, authenticate and subscribe a second socket, then close the old one. If any
        step fails the new socket is closed and the old one carries on (next try in 5 s)."""
        self.mgr.rotation_started(self)
        new: Session | None = None
        try:
            try:
                new = await self._open()
                refused = await self._subscribe(new, sorted(self.topics), report_failures=False)
                if new.done.is_set():
                    raise SessionLost(new.reason)
                if refused:
                    name, msg = next(iter(refused.items()))
                    raise RotationFailed(f"new socket refused {len(refused)} topic(s), first {name}: {msg}")
            except Exception as exc:
                log.warning("rotation_failed", conn=self.id, error=_describe(exc),
                            new_socket_closed=new is not None)
                if new is not None:
                    new.reason = "rotation failed"
                    await self._close_session(new)
                # try again in 5 s (from now: a subscribe may have waited out its 10 s ack
                # timeout); if Bybit cuts the old one first, we reconnect
                old.rotate_not_before = time.monotonic() + ROTATION_RETRY_S
                return old
            new.announced = True            # the old socket was still delivering: nothing was missed
            self.session = new
            log.info("rotated", conn=self.id, old_age_s=round(time.monotonic() - old.opened, 1))
            old.reason = "rotated"
            await self._close_session(old)
            return new
        finally:
            self.mgr.rotation_ended(self)

    async def _sync(self, session: Session) -> None:
        """Subscribe what's missing, unsubscribe what's no longer wanted, resync books."""
        while not session.done.is_set():
            gone = sorted(session.subscribed - self.topics)
            if gone:
                await self._unsubscribe(session, gone)
                continue
            redo = sorted(self.resync & session.subscribed)
            if redo:
                self.resync.difference_update(redo)
                await self._unsubscribe(session, redo)
                await self._subscribe(session, redo)
                continue
            missing = sorted(self.topics - session.subscribed)
            if missing:
                await self._subscribe(session, missing)
                continue
            return

    async def _request(self, session: Session, op: str, args: list[str]) -> parse.Control:
        req_id = f"{op[:5]}-{next(self._req)}"
        fut = asyncio.get_running_loop().create_future()
        fut.args = args
        session.pending[req_id] = fut
        try:
            await session.ws.send(orjson.dumps({"req_id": req_id, "op": op, "args": args}), text=True)
            return await asyncio.wait_for(fut, ACK_TIMEOUT_S)
        except asyncio.TimeoutError:
            session.lost(f"no {op} ack within {ACK_TIMEOUT_S:.0f}s")
            raise SessionLost(session.reason) from None
        except ConnectionClosed as exc:
            session.lost(_describe(exc))
            raise SessionLost(session.reason) from None
        finally:
            session.pending.pop(req_id, None)

    async def _subscribe(self, session: Session, names: list[str], report_failures: bool = True) -> dict[str, str]:
        """Subscribe ``names``; returns the refused ones. ``report_failures=False`` (a rotation's
        new socket): a refusal is the rotation's failure, the old socket still holds the topic."""
        refused: dict[str, str] = {}
        for batch in plan.batches(self.endpoint, names):
            self.mgr.subscribing(self, batch)
            result = acks.interpret(batch, await self._request(session, "subscribe", batch))
            for name in result.retry:
                single = acks.interpret([name], await self._request(session, "subscribe", [name]))
                result.ok.extend(single.ok)
                result.failed.update(single.failed)
                if single.retry:   # an ack that still names nothing usable: report it as failed
                    result.failed[name] = "subscribe not confirmed by Bybit"
            for name in result.ok:
                session.subscribed.add(name)
                self.mgr.subscription_result(self, name, True, None)
            for name, msg in result.failed.items():
                metrics.SUB_FAILURES.labels(self.endpoint).inc()
                refused[name] = msg
                if report_failures:
                    self.mgr.subscription_result(self, name, False, msg)
        return refused

    async def _unsubscribe(self, session: Session, names: list[str]) -> None:
        for batch in plan.batches(self.endpoint, names):
            ack = await self._request(session, "unsubscribe", batch)
            session.subscribed.difference_update(batch)
            if not ack.success and not ack.per_topic:
                log.warning("unsubscribe_refused", conn=self.id, topics=batch, ret_msg=ack.ret_msg)

    # -- per-session tasks ---------------------------------------------------------
    async def _read(self, session: Session) -> None:
        """Messages reach ``_message`` from the socket's protocol (ingest/wsclient.py); recv()
        here returns only what came before that was set up, then waits for the socket to end."""
        ws = session.ws
        try:
            while True:
                self._message(session, await ws.recv(decode=False))
        except ConnectionClosed as exc:
            session.lost(_describe(exc))
        except Exception as exc:  # never let the reader die silently: this socket is replaced
            self._reader_failed(session, exc)

    def _reader_failed(self, session: Session, exc: Exception) -> None:
        self.mgr.task_failures.record("session", f"read-{self.id}", exc)
        session.lost(f"reader failed: {exc!r}")

    def _deliver(self, session: Session, raws: list[bytes]) -> None:
        """Messages straight from the protocol, those taken off the buffer together: a failure
        here replaces the socket, as a failed reader task did, and must not reach websockets."""
        try:
            self._messages(session, raws)
        except Exception as exc:
            self._reader_failed(session, exc)
            session.ws.transport.abort()

    def _message(self, session: Session, raw: bytes) -> None:
        self._messages(session, [raw])

    def _messages(self, session: Session, raws: list[bytes]) -> None:
        """Messages taken off the buffer together: one receive time for all of them (a clock
        reading and a call chain per message were a tenth of ingest's CPU in a flood)."""
        recv_ns = time.time_ns()
        session.last_rx = time.monotonic()
        done, recorder, endpoint = session.done, self.recorder, self.endpoint
        # Most public pushes are forwarded as they came: the topic is all ingest needs, and the
        # publisher parses them anyway (a broken one is its bad input). on_data parses the
        # frames whose fields it checks (books, linear/inverse tickers).
        leading = parse.leading_topic if endpoint != PRIVATE else _no_topic
        on_data = self.mgr.on_data
        for raw in raws:
            if done.is_set():
                return      # the socket was given up: what it still delivers goes nowhere
            if recorder is not None:
                recorder.record(recv_ns, endpoint, self.id, session.serial, raw)
            topic = leading(raw)
            if topic is not None:
                try:
                    on_data(self, session, None, topic, raw, recv_ns)
                except Exception as exc:   # one frame we cannot handle must not drop the connection
                    self._not_handled(exc, raw)
            else:
                self._parsed(session, raw, recv_ns)

    def _parsed(self, session: Session, raw: bytes, recv_ns: int) -> None:
        """A message whose topic is not at its start (private pushes, control frames): parsed whole."""
        mgr = self.mgr
        try:
            obj = parse.loads(raw)
        except parse.FrameError as exc:
            mgr.bad_frame(self, str(exc), raw)
            return
        topic = obj.get("topic")
        if topic is not None:
            self._data(session, obj, topic, raw, recv_ns)
            return
        ctl = parse.classify_control(obj)
        if ctl.kind == parse.PONG:
            session.last_pong = session.last_rx
        elif ctl.kind in (parse.SUB_ACK, parse.ERROR, parse.AUTH):
            self._resolve(session, ctl)
        else:
            self._bad("info", "unexpected_control_frame", conn=self.id, frame=raw[:200].decode(errors="replace"))

    def _data(self, session: Session, obj: dict | None, topic, raw: bytes, recv_ns: int) -> None:
        try:
            self.mgr.on_data(self, session, obj, topic, raw, recv_ns)
        except Exception as exc:   # one frame we cannot handle must not drop the connection
            self._not_handled(exc, raw)

    def _not_handled(self, exc: Exception, raw: bytes) -> None:
        self._bad("error", "frame_not_handled", conn=self.id, error=repr(exc), exc_info=True)
        self.mgr.bad_frame(self, f"internal error: {exc!r}", raw)

    async def _watch(self, session: Session) -> None:
        try:
            await heartbeat(session, self.settings.ping_interval_s, self.settings.dead_after_s)
        except Exception as exc:  # a socket without its heartbeat is not trusted: replaced
            self.mgr.task_failures.record("session", f"watch-{self.id}", exc)
            session.lost(f"heartbeat failed: {exc!r}")
            session.ws.transport.abort()

    def _resolve(self, session: Session, ctl: parse.Control) -> None:
        fut = session.pending.get(ctl.req_id) if ctl.req_id else None
        if fut is None and session.pending:
            # option acks carry no req_id: match by topic, else the oldest request
            names = set(ctl.success_topics) | set(ctl.fail_topics)
            fut = next((f for f in session.pending.values() if names & set(getattr(f, "args", ()))),
                       next(iter(session.pending.values())))
        if fut is not None and not fut.done():
            fut.set_result(ctl)
        elif ctl.kind == parse.ERROR:
            self._bad("warning", "bybit_error_reply", conn=self.id, ret_msg=ctl.ret_msg)
