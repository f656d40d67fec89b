"""Bybit v5 REST client for reconciliation (docs/bybit.md#rest-for-reconciliation), on httpx.AsyncClient.

- Signing: ``X-BAPI-SIGN = hex(HMAC_SHA256(secret, timestamp + key + recv_window + query))``;
  the query string is built once and that exact string is both signed and sent.
- Timestamps come from Bybit's clock (offset measured with ``GET /v5/market/time``).
- Every answer's ``retCode`` is checked: anything but 0 raises ``RestError``. A failed call
  never comes back as an empty list (nautilus #4729: a REST failure read as "flat").
- Retries are bounded: 10006 waits for ``X-Bapi-Limit-Reset-Timestamp`` when present, else
  backs off exponentially (pybit #340: no header must not crash); 10002 re-measures the
  clock and retries; HTTP 5xx/429, 10016 and transport errors back off; other errors raise.
- HTTP 403 is an IP ban ("access too frequent"; Bybit asks for at least 10 minutes without
  calls): every REST call stops for ``ban_s`` (600 s minimum by setting), each failing at once
  with ``RestBanned`` saying until when; retrying sooner would prolong the ban.
- Nothing secret is logged: no key, secret, signature or headers.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import orjson

from common.logs import RateLimited, get_logger
from common.runtime import backoff_s, clock_offset_ms
from ingest import metrics

log = get_logger(__name__)
RETRY_CODES = frozenset({10016, 10019})      # server-side errors worth another try (docs/bybit.md#errors-and-retcodes)
RATE_LIMIT, TIMESTAMP = 10006, 10002
BAN_S = 600.0        # Bybit: after a 403 "access too frequent", no call for at least 10 minutes
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.,%:\-]*")


class RestError(Exception):
    """A REST call that failed for good (after its retries). Never means "no data"."""

    def __init__(self, path: str, message: str, ret_code: int | None = None, status: int | None = None):
        super().__init__(f"{path}: {message}")
        self.path, self.ret_code, self.status = path, ret_code, status


class RestBanned(RestError):
    """Bybit banned this IP (HTTP 403): no call is made until ``until`` (epoch seconds)."""

    def __init__(self, path: str, until: float):
        super().__init__(path, f"REST calls paused until {_iso(until)} after HTTP 403 from Bybit (IP ban); "
                               f"calling sooner would prolong it", status=403)
        self.until = until


def _iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


@dataclass(frozen=True)
class Reply:
    result: dict
    time_ms: int          # Bybit's clock when it answered (the envelope's ``time``)


def query_string(params: dict) -> str:
    """``k=v&k2=v2`` sorted by key, values as given (pybit's form). The same string is signed
    and sent, so values must not need escaping (cursors arrive already percent-encoded)."""
    parts = []
    for key in sorted(params):
        value = params[key]
        if value is None:
            continue
        text = str(value)
        if not _SAFE_VALUE.fullmatch(text):
            raise ValueError(f"query parameter {key}={text!r} would need escaping")
        parts.append(f"{key}={text}")
    return "&".join(parts)


def signature(secret: str, timestamp_ms: int, api_key: str, recv_window_ms: int, payload: str) -> str:
    return hmac.new(secret.encode(), f"{timestamp_ms}{api_key}{recv_window_ms}{payload}".encode(),
                    hashlib.sha256).hexdigest()




class RestClient:
    def __init__(self, base_url: str, api_key: str, api_secret: str, recv_window_ms: int = 5000, *,
                 timeout_s: float = 10.0, max_attempts: int = 6, backoff_base_s: float = 0.25,
                 backoff_cap_s: float = 10.0, max_pages: int = 200, sleep=asyncio.sleep,
                 transport: httpx.AsyncBaseTransport | None = None, ban_s: float = BAN_S, announce=None,
                 clock=time.monotonic):
        self._key, self._secret = api_key, api_secret
        self.recv_window_ms = recv_window_ms
        self.max_attempts, self.max_pages = max_attempts, max_pages
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self._sleep = sleep
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport,
                                       headers={"User-Agent": "ws-gateway"})
        self.offset_ms = 0
        self.clock_measured = False
        self.counts: Counter = Counter()       # calls, retries by cause, errors, bans (and banned_until)
        self._warn = RateLimited(log, 5.0)
        self.ban_s, self._announce, self._clock = ban_s, announce, clock
        self._ban_ends: float | None = None    # on ``clock``; None: not banned
        self._ban_until = 0.0                  # the same end as epoch seconds, for messages

    def pause_on_403(self, ban_s: float, announce) -> None:
        """How long a 403 stops every call, and ``announce(kind, details)`` to tell consumers."""
        self.ban_s, self._announce = ban_s, announce

    def banned_until(self) -> float | None:
        """Epoch seconds until which no call is made, or None."""
        if self._ban_ends is None:
            return None
        if self._ban_ends <= self._clock():
            self._ban_ends = None
            log.info("rest_ban_over")
            return None
        return self._ban_until

    def __repr__(self) -> str:                 # never show the key or secret
        return f"RestClient({self._http.base_url!s})"

    def now_ms(self) -> int:
        """Our estimate of Bybit's clock."""
        return int(time.time() * 1000) + self.offset_ms

    async def close(self) -> None:
        await self._http.aclose()

    async def sync_clock(self) -> None:
        """Measure the offset to Bybit's clock (``GET /v5/market/time``, midpoint of the round trip)."""
        before = time.time() * 1000
        reply = await self._attempts("/v5/market/time", {}, signed=False, resync=False)
        after = time.time() * 1000
        nano = reply.result.get("timeNano")
        server_ms = int(nano) // 1_000_000 if isinstance(nano, str) and nano.isdigit() else reply.time_ms
        self.offset_ms = clock_offset_ms(server_ms, before, after)
        self.clock_measured = True
        log.info("rest_clock_offset", offset_ms=self.offset_ms, rtt_ms=round(after - before, 1))

    async def get(self, path: str, params: dict | None = None, signed: bool = True) -> Reply:
        return await self._attempts(path, params or {}, signed=signed, resync=True)

    async def pages(self, path: str, params: dict, limit: int) -> tuple[list, int]:
        """Every record of a cursor-paged list; (records, Bybit's time of the first page).

        More than ``max_pages`` pages raises: a truncated list would read as "gone".
        """
        records: list = []
        first_time = None
        cursor = ""
        for _ in range(self.max_pages):
            reply = await self.get(path, {**params, "limit": limit, "cursor": cursor or None})
            first_time = first_time if first_time is not None else reply.time_ms
            page = reply.result.get("list")
            if not isinstance(page, list):
                raise RestError(path, f"result.list is {type(page).__name__}, not a list")
            records.extend(page)
            cursor = reply.result.get("nextPageCursor") or ""
            if not isinstance(cursor, str):
                raise RestError(path, f"nextPageCursor is {cursor!r}")
            if not cursor or not page:
                return records, first_time
        raise RestError(path, f"more than {self.max_pages} pages")

    # -- one call with its retries ----------------------------------------------------------
    async def _attempts(self, path: str, params: dict, signed: bool, resync: bool) -> Reply:
        qs = query_string(params)
        url = f"{path}?{qs}" if qs else path
        for attempt in range(1, self.max_attempts + 1):
            until = self.banned_until()
            if until is not None:
                self.counts["refused_banned"] += 1
                raise RestBanned(path, until)
            self.counts["calls"] += 1
            try:
                return await self._once(path, url, qs, signed)
            except _Retry as retry:
                err, delay = retry.error, retry.delay_s
                if delay is None:
                    delay = backoff_s(attempt, self.backoff_cap_s, self.backoff_base_s)
                self.counts[f"retry_{retry.cause}"] += 1
                if attempt == self.max_attempts:
                    self.counts["errors"] += 1
                    raise err from None
                self._warn("warning", "rest_retry", path=path, cause=retry.cause, error=str(err),
                           attempt=attempt, retry_in_s=round(delay, 3))
                if retry.cause == "timestamp" and resync:
                    try:
                        await self.sync_clock()
                    except RestError as exc:
                        self._warn("warning", "rest_clock_unavailable", error=str(exc))
                await self._sleep(delay)
        raise AssertionError("unreachable")

    async def _once(self, path: str, url: str, qs: str, signed: bool) -> Reply:
        headers = {}
        if signed:
            ts = self.now_ms()
            headers = {"X-BAPI-API-KEY": self._key, "X-BAPI-TIMESTAMP": str(ts),
                       "X-BAPI-RECV-WINDOW": str(self.recv_window_ms),
                       "X-BAPI-SIGN": signature(self._secret, ts, self._key, self.recv_window_ms, qs)}
        try:
            resp = await self._http.get(url, headers=headers)
        except httpx.TransportError as exc:
            raise _Retry("transport", RestError(path, f"{type(exc).__name__}: {exc}")) from None
        if resp.status_code == 403:
            self._ban(path, resp.text[:200])
            raise RestBanned(path, self.banned_until() or time.time())
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Retry("http", RestError(path, f"HTTP {resp.status_code}", status=resp.status_code))
        if resp.status_code != 200:
            self.counts["errors"] += 1
            raise RestError(path, f"HTTP {resp.status_code}: {self._redact(resp.text[:200])}", status=resp.status_code)
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise _Retry("http", RestError(path, f"HTTP 200 with a body that is not JSON: {resp.text[:80]!r}",
                                           status=200)) from None
        code = body.get("retCode") if isinstance(body, dict) else None
        if isinstance(code, bool) or not isinstance(code, int):
            self.counts["errors"] += 1
            raise RestError(path, f"answer without an integer retCode: {self._redact(resp.text[:120])!r}")
        msg = self._redact(str(body.get("retMsg", "")))     # 10004 echoes the signed string, key included
        if code == 0:
            result, at = body.get("result"), body.get("time")
            if not isinstance(result, dict):
                self.counts["errors"] += 1
                raise RestError(path, f"retCode 0 but result is {type(result).__name__}")
            return Reply(result, at if isinstance(at, int) and not isinstance(at, bool) else self.now_ms())
        err = RestError(path, f"retCode {code}: {msg[:200]}", ret_code=code)
        if code == RATE_LIMIT:
            raise _Retry("rate_limit", err, self._reset_delay(resp.headers.get("X-Bapi-Limit-Reset-Timestamp")))
        if code == TIMESTAMP:
            raise _Retry("timestamp", err)
        if code in RETRY_CODES:
            raise _Retry("server", err)
        self.counts["errors"] += 1
        raise err

    def _ban(self, path: str, body: str) -> None:
        now = self._clock()
        self._ban_ends = max(self._ban_ends or now, now + self.ban_s)
        until = self._ban_until = time.time() + (self._ban_ends - now)
        self.counts["bans"] += 1
        self.counts["errors"] += 1
        self.counts["banned_until"] = round(until, 3)
        metrics.REST_BANS.inc()
        details = {"path": path, "status": 403, "body": self._redact(body), "paused_s": self.ban_s,
                   "until": round(until, 3), "at": time.time()}
        log.warning("rest_banned", **{**details, "until": _iso(until)},
                    action="no REST call until then; calling sooner would prolong the ban")
        if self._announce is not None:
            self._announce("rest_banned", details)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "<api-key>") if self._key else text

    def _reset_delay(self, header: str | None) -> float | None:
        """Seconds until Bybit's reset time (its clock), or None to back off exponentially."""
        if not header or not header.isdigit():
            return None
        return min(self.backoff_cap_s, max(0.0, (int(header) - self.now_ms()) / 1000))


class _Retry(Exception):
    def __init__(self, cause: str, error: RestError, delay_s: float | None = None):
        super().__init__(cause)
        self.cause, self.error, self.delay_s = cause, error, delay_s
