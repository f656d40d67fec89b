"""Private-stream authentication (docs/bybit.md#authentication-and-server-time) with Bybit's server time.

``expires`` is computed from an estimate of Bybit's clock (offset measured with
``GET /v5/market/time``), so a skewed host clock doesn't cause "Params Error".
Nothing here logs the key, the secret or the signature.
"""
from __future__ import annotations

import hashlib
import hmac
import time

import httpx

from common.logs import get_logger
from common.runtime import clock_offset_ms

log = get_logger(__name__)
EXPIRES_AHEAD_MS = 5000


def signature(secret: str, expires_ms: int) -> str:
    return hmac.new(secret.encode(), f"GET/realtime{expires_ms}".encode(), hashlib.sha256).hexdigest()


def auth_request(api_key: str, secret: str, expires_ms: int, req_id: str) -> dict:
    return {"req_id": req_id, "op": "auth", "args": [api_key, expires_ms, signature(secret, expires_ms)]}


class ServerClock:
    """Offset between Bybit's clock and ours, refreshed before each authentication."""

    def __init__(self, rest_url: str, max_age_s: float = 300.0):
        self.rest_url = rest_url
        self.offset_ms = 0
        self.measured_at = 0.0
        self.max_age_s = max_age_s

    async def refresh(self, force: bool = False) -> None:
        if not force and self.measured_at and time.monotonic() - self.measured_at < self.max_age_s:
            return
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                before = time.time() * 1000
                resp = await client.get(f"{self.rest_url}/v5/market/time")
                after = time.time() * 1000
            body = resp.json()
            if resp.status_code != 200 or body.get("retCode") != 0:
                raise ValueError(f"HTTP {resp.status_code} retCode {body.get('retCode')}")
            server_ms = int(body["result"]["timeNano"]) // 1_000_000 if "timeNano" in body.get("result", {}) \
                else int(body["time"])
            self.offset_ms = clock_offset_ms(server_ms, before, after)
            self.measured_at = time.monotonic()
            log.info("server_time_offset", offset_ms=self.offset_ms, rtt_ms=round(after - before, 1))
        except Exception as exc:  # keep the last offset; auth may still work with a synced host
            log.warning("server_time_unavailable", error=str(exc), using_offset_ms=self.offset_ms)

    def expires_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms + EXPIRES_AHEAD_MS
