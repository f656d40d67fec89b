"""The simulator's shared state: connections, counters, faults, market and account,
and the control hooks that change them.

Every method runs on the server's event loop thread. ``control(op, payload)`` is the
one entry point of the control API (HTTP ``/__sim/{op}``, ``SimControl`` and the
``run_in_thread`` handle all go through it), so the three stay identical.
"""
from __future__ import annotations

import random
import time
import uuid
from collections import Counter, deque
from decimal import Decimal, InvalidOperation

from common.logs import RateLimited, get_logger

from . import facts
from .account import Account
from .faults import REJECT_MODES, Faults
from .market import Listing, Market
from .options import SimOptions
from .protocol import ENDPOINTS, PRIVATE, Symbols
from .rest import FAULT_KINDS, PATHS, RestFault
from .session import Conn
from .streams import BookStream

log = get_logger("bybitsim")


class ControlError(ValueError):
    """A control request with a bad payload (HTTP 400)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Simulator:
    def __init__(self, opts: SimOptions):
        self.opts = opts
        self.rate = opts.rate
        self.pace_rng = random.Random(opts.seed)    # frame spacing jitter (server._public_pass)
        self.account_rate = opts.account_rate
        self.symbols = Symbols(opts.symbols)
        self.market = Market(opts.seed)
        # a realistic market (about 800 linear and 700 spot symbols, a few busy): only without an explicit list
        self.listing = Listing(opts.seed) if opts.listing == "realistic" and not self.symbols.configured else None
        self._slowness: dict[tuple[str, str], float] = {}
        self._churned = 0
        self._started = time.monotonic()
        self.faults = Faults(reject_mode=opts.reject_mode)
        self.account = Account(self.market, opts.seed, opts.account_symbols, opts.max_pushes, opts.push_window_s)
        self.conns: dict[str, Conn] = {}
        self.connections_opened = Counter({e: 0 for e in (*ENDPOINTS, facts.STATUS_ENDPOINT)})
        self.pings = Counter({e: 0 for e in (*ENDPOINTS, facts.STATUS_ENDPOINT)})
        self.frames_sent: Counter = Counter()
        self.subscribes: Counter = Counter()      # "{endpoint}:{topic}" -> public subscriptions made
        self.counters: Counter = Counter()
        self.auth_attempts = 0
        self.auth_failures = 0
        self.rest_log: deque = deque(maxlen=1000)    # REST calls answered: at_ms, path, query, status, retCode, fault
        self.notices: dict[str, dict] = {}           # system.status notices by id, as last posted
        self._warn = RateLimited(log)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def bad_request(self, conn: Conn, why: str) -> None:
        """A client frame we could not act on: counted, and logged at most every few seconds."""
        self.counters["bad_requests"] += 1
        self._warn("warning", "bad_client_frame", conn_id=conn.id, endpoint=conn.endpoint, why=why[:200],
                   total=self.counters["bad_requests"])

    # -- connections -------------------------------------------------------------------

    def open_conn(self, endpoint: str, ws, max_active_s: float) -> Conn:
        conn = Conn(uuid.uuid4().hex[:20] + "-" + uuid.uuid4().hex[:4], endpoint, ws, max_active_s, now_ms())
        self.conns[conn.id] = conn
        self.set_stall(conn, self.faults.is_stalled(endpoint))
        self.connections_opened[endpoint] += 1
        log.info("connection_opened", conn_id=conn.id, endpoint=endpoint)
        return conn

    def close_conn(self, conn: Conn) -> None:
        self.conns.pop(conn.id, None)
        log.info("connection_closed", conn_id=conn.id, endpoint=conn.endpoint, topics=len(conn.topics))

    def matching(self, endpoint: str | None):
        return [c for c in list(self.conns.values()) if endpoint is None or c.endpoint == endpoint]

    def sent(self, conn: Conn, topic: str) -> None:
        self.frames_sent[f"{conn.endpoint}:{topic}"] += 1

    def slowness(self, endpoint: str, topic: str) -> float:
        """How many ``1/rate`` intervals apart a topic's frames are: 1 unless the realistic listing
        makes its symbol quieter (a busy coin sends at SIM_RATE, the tail at a small share of it)."""
        key = (endpoint, topic)
        value = self._slowness.get(key)
        if value is None:
            parsed = facts.parse_public(endpoint, topic) if self.listing is not None else None
            weight = self.listing.weight(endpoint, parsed.symbol) if parsed is not None else None
            value = self._slowness[key] = 1.0 / weight if weight else 1.0
        return value

    def listed_symbols(self, category: str) -> list[str] | None:
        """The realistic listing of ``category`` (None: not listed that way), after any churn due."""
        if self.listing is None:
            return None
        self.churn()
        return self.listing.symbols(category)

    def churn(self) -> None:
        """SIM_CHURN_S: the listing changes by one symbol every so often, in turn a listing and a
        delisting on linear, then on spot; applied when someone looks (REST or state)."""
        if self.listing is None or not self.opts.churn_s:
            return
        due = int((time.monotonic() - self._started) // self.opts.churn_s)
        while self._churned < due:
            step = self._churned % 4
            category = "linear" if step < 2 else "spot"
            try:
                if step % 2 == 0:
                    self.list_symbol(category, None)
                else:
                    self.delist_symbol(category, None)
            except ValueError as exc:
                log.warning("churn_skipped", error=str(exc))
            self._churned += 1

    def list_symbol(self, category: str, symbol: str | None) -> str:
        symbol = self.listing.list_symbol(category, symbol)
        self._slowness.clear()
        log.info("symbol_listed", category=category, symbol=symbol)
        return symbol

    def delist_symbol(self, category: str, symbol: str | None) -> str:
        """Delist: its streams stop at once; subscriptions stay until the client lets go (as at Bybit)."""
        symbol = self.listing.delist_symbol(category, symbol)
        self._slowness.clear()
        silenced = 0
        for conn in self.matching(category):
            for topic in list(conn.due):
                parsed = facts.parse_public(category, topic)
                if parsed is not None and parsed.symbol == symbol:
                    del conn.due[topic]
                    silenced += 1
        log.info("symbol_delisted", category=category, symbol=symbol, streams_stopped=silenced)
        return symbol

    def book_frame_faults(self, conn: Conn, topic: str, stream) -> None:
        """Apply a pending gap/reset hook to this book stream before its next frame."""
        if isinstance(stream, BookStream):
            if self.faults.take(self.faults.book_reset, conn.endpoint, topic):
                stream.reset_next = True
            if self.faults.take(self.faults.book_gap, conn.endpoint, topic):
                stream.gap_next = True

    def set_stall(self, conn: Conn, stalled: bool) -> None:
        if conn.stalled == stalled:
            return
        conn.stalled = stalled
        transport = conn.ws.transport
        # Not reading means not even protocol-level pongs go out: the link looks dead.
        if stalled:
            transport.pause_reading()
        elif not transport.is_closing():
            transport.resume_reading()
        conn.wake()

    # -- the account -------------------------------------------------------------------

    def account_step(self) -> None:
        """One account event, fanned out to authenticated private connections."""
        self._push_account(self.account.step(now_ms()))

    def _push_account(self, pushes: list) -> None:
        for conn in self.matching(PRIVATE):
            if conn.authenticated and not conn.closing:
                frames = self.account.frames_for(conn.topics, pushes, now_ms())
                if frames:
                    conn.pushes.extend(frames)
                    if conn.stalled and len(conn.pushes) > self.opts.max_stalled_pushes:
                        self._drop_stalled(conn)
                    conn.wake()

    def _drop_stalled(self, conn: Conn) -> None:
        """A stalled connection's unsent pushes are bounded: an exchange does not buffer for
        a link that stopped reading, it drops the link. The connection is aborted (the
        client sees it reset, as after a dead link) and its queue freed. Without this a
        stalled connection whose client went away kept every push for good (its reading is
        paused, so it never saw the close)."""
        dropped = len(conn.pushes)
        conn.pushes.clear()
        conn.closing = True
        self.count("stalled_connections_dropped")
        self.count("stalled_pushes_dropped", dropped)
        log.warning("stalled_connection_dropped", conn_id=conn.id, endpoint=conn.endpoint, pushes=dropped,
                    limit=self.opts.max_stalled_pushes)
        conn.ws.transport.abort()

    # -- control API -------------------------------------------------------------------

    def control(self, op: str, payload: dict | None) -> dict:
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise KeyError(op)
        if payload is not None and not isinstance(payload, dict):
            raise ControlError("the body must be a JSON object")
        return handler(payload or {})

    @staticmethod
    def _endpoint(payload: dict, required: bool = False) -> str | None:
        endpoint = payload.get("endpoint")
        if endpoint is None and not required:
            return None
        if endpoint not in (*ENDPOINTS, facts.STATUS_ENDPOINT):
            raise ControlError(f"endpoint must be one of {', '.join((*ENDPOINTS, facts.STATUS_ENDPOINT))}"
                               + ("" if required else " or null"))
        return endpoint

    @staticmethod
    def _bool(payload: dict, key: str, default: bool) -> bool:
        value = payload.get(key, default)
        if not isinstance(value, bool):
            raise ControlError(f"{key} must be true or false")
        return value

    def op_state(self, payload: dict) -> dict:
        self.churn()
        subscribed = {e: sorted({t for c in self.matching(e) for t in c.topics})
                      for e in (*ENDPOINTS, facts.STATUS_ENDPOINT)}
        return {"connections": [c.describe() for c in self.conns.values()],
                "subscribed": subscribed,
                "connections_opened": dict(self.connections_opened),
                "auth_attempts": self.auth_attempts, "auth_failures": self.auth_failures,
                "pings": dict(self.pings), "frames_sent": dict(self.frames_sent), "subscribes": dict(self.subscribes),
                "faults": self.faults.to_dict(), "rate": self.rate, "account_rate": self.account_rate,
                "counters": dict(self.counters),
                "listing": None if self.listing is None else {c: len(s) for c, s in self.listing.listed.items()}}

    def op_listing(self, payload: dict) -> dict:
        """``{"category": "linear"|"spot", "action": "list"|"delist", "symbol"?}``: change the realistic
        listing now (no symbol: a new coin's USDT pair is listed, a quiet symbol delisted)."""
        if self.listing is None:
            raise ControlError("the listing is not realistic: start with SIM_LISTING=realistic and no SIM_SYMBOLS")
        action, category, symbol = payload.get("action"), payload.get("category"), payload.get("symbol")
        if action not in ("list", "delist"):
            raise ControlError("action must be list or delist")
        if symbol is not None and (not isinstance(symbol, str) or not facts.symbol_ok(category or "", symbol)):
            raise ControlError("symbol must be an upper-case symbol of the category, or absent")
        try:
            symbol = (self.list_symbol if action == "list" else self.delist_symbol)(category, symbol)
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return {"ok": True, "action": action, "category": category, "symbol": symbol,
                "symbols": len(self.listing.listed[category])}

    def op_drop(self, payload: dict) -> dict:
        conns = self.matching(self._endpoint(payload))
        for conn in conns:
            conn.closing = True
            conn.ws.transport.abort()      # TCP abort: no close frame
        log.info("hook_drop", endpoint=payload.get("endpoint"), dropped=len(conns))
        return {"ok": True, "dropped": [c.id for c in conns]}

    def op_pong(self, payload: dict) -> dict:
        endpoint = self._endpoint(payload)
        self.faults.set_flag(self.faults.no_pong, endpoint, not self._bool(payload, "enabled", True))
        return {"ok": True, "faults": self.faults.to_dict()}

    def op_stall(self, payload: dict) -> dict:
        """Stall matching connections; unless ``current_only``, new connections stall too."""
        endpoint, on = self._endpoint(payload), self._bool(payload, "enabled", True)
        if not self._bool(payload, "current_only", False):
            self.faults.set_flag(self.faults.stalled, endpoint, on)
        conns = self.matching(endpoint)
        for conn in conns:
            self.set_stall(conn, on)
        return {"ok": True, "connections": [c.id for c in conns], "faults": self.faults.to_dict()}

    def op_reject(self, payload: dict) -> dict:
        topic = payload.get("topic")
        if not isinstance(topic, str) or not topic:
            raise ControlError("topic must be a non-empty string")
        self.faults.rejected.add((self._endpoint(payload), topic))
        return {"ok": True, "faults": self.faults.to_dict()}

    def op_reject_mode(self, payload: dict) -> dict:
        mode = payload.get("mode")
        if mode not in REJECT_MODES:
            raise ControlError(f"mode must be one of {', '.join(REJECT_MODES)}")
        self.faults.reject_mode = mode
        return {"ok": True, "reject_mode": mode}

    def op_rate(self, payload: dict) -> dict:
        for key in ("rate", "account_rate"):
            if key in payload:
                value = payload[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                    raise ControlError(f"{key} must be a number >= 0")
                setattr(self, key, float(value))
        for conn in self.conns.values():
            now = time.monotonic()
            for topic in conn.due:
                # staggered, so topics do not all fire together after a rate change
                conn.due[topic] = min(conn.due[topic], now + self.pace_rng.random() * (1 / self.rate if self.rate else 0))
            conn.wake()
        return {"ok": True, "rate": self.rate, "account_rate": self.account_rate}

    def _book_hook(self, payload: dict, flags: set) -> dict:
        topic = payload.get("topic")
        if not isinstance(topic, str) or not topic.startswith("orderbook."):
            raise ControlError("topic must be an orderbook topic")
        flags.add((self._endpoint(payload, required=True), topic))
        for conn in self.matching(payload["endpoint"]):
            if topic in conn.due:
                conn.due[topic] = time.monotonic()   # show the fault now, not a frame later
                conn.wake()
        return {"ok": True, "faults": self.faults.to_dict()}

    def op_book_gap(self, payload: dict) -> dict:
        return self._book_hook(payload, self.faults.book_gap)

    def op_book_reset(self, payload: dict) -> dict:
        return self._book_hook(payload, self.faults.book_reset)

    def op_auth(self, payload: dict) -> dict:
        self.faults.auth_fail = self._bool(payload, "fail", True)
        return {"ok": True, "auth_fail": self.faults.auth_fail}

    def op_close_private(self, payload: dict) -> dict:
        after = payload.get("after_s")
        if after is not None and (isinstance(after, bool) or not isinstance(after, (int, float)) or after < 0):
            raise ControlError("after_s must be a number >= 0 or null")
        self.faults.close_private_after_s = None if after is None else float(after)
        for conn in self.matching(PRIVATE):
            conn.wake()
        return {"ok": True, "close_private_after_s": self.faults.close_private_after_s}

    def op_account(self, payload: dict) -> dict:
        """The ground truth; ``{"raw": true}`` (the HTTP API): pushes as orjson fragments of the
        bytes sent, so a JSON answer does not decode and re-encode thousands of frames."""
        return self.account.ground_truth(now_ms(), raw_pushes=self._bool(payload, "raw", False))

    def op_account_step(self, payload: dict) -> dict:
        """Advance the account by ``n`` events now (pushed to whoever is connected, if anyone)."""
        n = payload.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 100_000:
            raise ControlError("n must be an integer 0..100000")
        for _ in range(n):
            self.account_step()
        return {"ok": True, "events": self.account.events}

    def op_transfer(self, payload: dict) -> dict:
        """``{"amount": "100.5", "marks_at_ms"?: int}``: a transfer into the account (negative: out),
        pushed as a wallet update; the wallet state is returned."""
        try:
            amount = Decimal(str(payload.get("amount")))
        except (InvalidOperation, ValueError):
            raise ControlError("amount must be a decimal number") from None
        if not amount.is_finite() or self.account.wallet_balance + amount < 0:
            raise ControlError("amount must be finite and leave the balance non-negative")
        marks = payload.get("marks_at_ms", now_ms())
        if isinstance(marks, bool) or not isinstance(marks, int) or marks <= 0:
            raise ControlError("marks_at_ms must be a positive integer")
        pushes = self.account.transfer(amount, marks)
        self._push_account(pushes)
        return {"ok": True, "wallet": pushes[0][1][0]}

    def op_rest_fault(self, payload: dict) -> dict:
        """Script REST errors: ``{"kind", "count"?, "path"?, "ret_code"?, "status"?, "reset_ms"?}``."""
        kind = payload.get("kind")
        if kind not in FAULT_KINDS:
            raise ControlError(f"kind must be one of {', '.join(FAULT_KINDS)}")
        count, path = payload.get("count", 1), payload.get("path")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ControlError("count must be an integer >= 1")
        if path is not None and path not in PATHS and path != "/v5/market/time":
            raise ControlError(f"path must be a REST path the simulator serves, got {path!r}")
        fault = RestFault(kind, count, path)
        for key, lo, hi in (("ret_code", 1, 10**9), ("status", 500, 599), ("reset_ms", 0, 600_000)):
            if key in payload:
                value = payload[key]
                if value is None and key == "reset_ms":
                    fault.reset_ms = None
                    continue
                if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                    raise ControlError(f"{key} must be an integer {lo}..{hi}")
                setattr(fault, key, value)
        self.faults.rest.append(fault)
        return {"ok": True, "faults": self.faults.to_dict()}

    def op_rest_log(self, payload: dict) -> dict:
        return {"calls": list(self.rest_log)}

    # -- system.status -------------------------------------------------------------------

    def status_frame(self, notices: list[dict] | None) -> dict | None:
        """A system.status push of ``notices`` (None: every notice known); None when there are none."""
        data = list(self.notices.values()) if notices is None else notices
        if not data:
            return None
        return {"topic": facts.STATUS_TOPIC, "ts": now_ms(), "data": [dict(n) for n in data]}

    def op_status_notice(self, payload: dict) -> dict:
        """Post (or update, by ``id``) a maintenance or incident notice; subscribers get it now.
        ``{"title", "state"?, "id"?, "begin"?, "end"?, "maintainType"?, "serviceTypes"?, "product"?, "href"?}``"""
        title = payload.get("title")
        if not isinstance(title, str) or not title:
            raise ControlError("title must be a non-empty string")
        state = payload.get("state", "ongoing")
        if state not in facts.NOTICE_STATES:
            raise ControlError(f"state must be one of {', '.join(facts.NOTICE_STATES)}")
        kind = payload.get("maintainType", 3)
        if kind not in facts.MAINTAIN_TYPES or isinstance(kind, bool):
            raise ControlError("maintainType must be 1 (planned), 2 (temporary) or 3 (incident)")
        now = now_ms()
        times = {}
        for key, default in (("begin", now), ("end", now + 3_600_000)):
            value = payload.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ControlError(f"{key} must be ms since the epoch")
            times[key] = str(value)       # Bybit sends them as strings
        lists = {}
        for key, default in (("serviceTypes", [5]), ("product", [1, 2])):
            value = payload.get(key, default)
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ControlError(f"{key} must be a list of integers")
            lists[key] = value
        notice_id = payload.get("id") or str(uuid.uuid4())
        if not isinstance(notice_id, str):
            raise ControlError("id must be a string")
        href = payload.get("href", "")
        if not isinstance(href, str):
            raise ControlError("href must be a string")
        notice = {"id": notice_id, "title": title, "state": state, "begin": times["begin"], "end": times["end"],
                  "href": href, "serviceTypes": lists["serviceTypes"], "product": lists["product"],
                  "uidSuffix": [], "maintainType": kind, "env": 1}
        self.notices[notice_id] = notice
        frame = self.status_frame([notice])
        pushed = []
        for conn in self.matching(facts.STATUS_ENDPOINT):
            if facts.STATUS_TOPIC in conn.topics and not conn.closing:
                conn.pushes.append((facts.STATUS_TOPIC, frame))
                conn.wake()
                pushed.append(conn.id)
        log.info("hook_status_notice", notice_id=notice_id, state=state, pushed=len(pushed))
        return {"ok": True, "notice": notice, "pushed_to": pushed}

    def op_reset(self, payload: dict) -> dict:
        self.faults.reset()
        self.faults.reject_mode = self.opts.reject_mode
        for conn in self.conns.values():
            self.set_stall(conn, False)
        return {"ok": True, "faults": self.faults.to_dict()}
