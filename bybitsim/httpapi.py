"""Plain HTTP on the simulator's port: Bybit REST (``/v5/market/time``) and the control
API for tests (``/__sim/{op}``, JSON in and out).

``route(sim, method, path, body)`` returns (status, JSON-able body); the server turns it
into an HTTP response. Control ops are the Simulator's ``op_*`` methods.
"""
from __future__ import annotations

import time

import orjson

from .sim import ControlError, Simulator

READ_OPS = frozenset({"state", "account"})
CONTROL_PREFIX = "/__sim/"


def server_time(now_ns: int) -> dict:
    """``GET /v5/market/time`` in the shape of tests/frames/rest_server_time.json."""
    return {"retCode": 0, "retMsg": "OK",
            "result": {"timeSecond": str(now_ns // 1_000_000_000), "timeNano": str(now_ns)},
            "retExtInfo": {}, "time": now_ns // 1_000_000}


def route(sim: Simulator, method: str, path: str, body: bytes) -> tuple[int, dict]:
    if path == "/v5/market/time":
        if method != "GET":
            return 405, {"error": "use GET"}
        return 200, server_time(time.time_ns())
    if not path.startswith(CONTROL_PREFIX):
        return 404, {"retCode": 10404, "retMsg": f"no route for {path}"}
    op = path[len(CONTROL_PREFIX):]
    if method not in ("GET", "POST") or (method == "GET" and op not in READ_OPS):
        return 405, {"error": f"use POST for /__sim/{op}"}
    try:
        payload = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        return 400, {"error": f"body is not JSON: {exc}"}
    try:
        return 200, sim.control(op, payload)
    except KeyError:
        return 404, {"error": f"unknown control op {op!r}"}
    except ControlError as exc:
        return 400, {"error": str(exc)}


def encode(body: dict) -> bytes:
    return orjson.dumps(body, default=str)
