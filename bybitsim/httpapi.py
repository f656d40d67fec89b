"""Plain HTTP on the simulator's port: Bybit REST (``/v5/market/time`` here, the signed
account endpoints in ``rest.py``) and the control API for tests (``/__sim/{op}``, JSON in
and out).

``route(sim, method, path, body, query, headers)`` returns (status, body, extra headers);
the server turns it into an HTTP response. Control ops are the Simulator's ``op_*`` methods.
"""
from __future__ import annotations

import time

import orjson

from . import rest
from .sim import ControlError, Simulator

READ_OPS = frozenset({"state", "account", "rest_log"})
CONTROL_PREFIX = "/__sim/"


def server_time(now_ns: int) -> dict:
    """``GET /v5/market/time`` in the shape of tests/frames/rest_server_time.json."""
    return {"retCode": 0, "retMsg": "OK",
            "result": {"timeSecond": str(now_ns // 1_000_000_000), "timeNano": str(now_ns)},
            "retExtInfo": {}, "time": now_ns // 1_000_000}


def route(sim: Simulator, method: str, path: str, body: bytes, query: str = "",
          headers=None) -> tuple[int, dict | bytes, dict]:
    if path == "/v5/market/time" or path in rest.PATHS:
        return _rest(sim, method, path, query, headers or {})
    if not path.startswith(CONTROL_PREFIX):
        return 404, {"retCode": 10404, "retMsg": f"no route for {path}"}, {}
    status, out = _control(sim, method, path, body)
    return status, out, {}


def _rest(sim: Simulator, method: str, path: str, query: str, headers) -> tuple[int, dict | bytes, dict]:
    if method != "GET":
        return 405, {"error": "use GET"}, {}
    now_ns = time.time_ns()
    sim.count("rest_calls")
    fault = sim.faults.take_rest(path)
    if fault is not None:
        status, body, extra = rest.fault_response(fault, now_ns // 1_000_000)
    elif path == "/v5/market/time":
        status, body, extra = 200, server_time(now_ns), {}
    else:
        status, body, extra = rest.handle(sim, path, query, headers, now_ns // 1_000_000)
    code = body.get("retCode") if isinstance(body, dict) else None
    sim.rest_log.append({"at_ms": now_ns // 1_000_000, "path": path, "query": query, "status": status,
                         "retCode": code, "fault": fault.kind if fault else None})
    return status, body, extra


def _control(sim: Simulator, method: str, path: str, body: bytes) -> tuple[int, dict]:
    op = path[len(CONTROL_PREFIX):]
    if method not in ("GET", "POST") or (method == "GET" and op not in READ_OPS):
        return 405, {"error": f"use POST for /__sim/{op}"}
    try:
        payload = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        return 400, {"error": f"body is not JSON: {exc}"}
    if op == "account" and isinstance(payload, dict):
        payload = {**payload, "raw": True}      # the answer is JSON anyway: frames go out as sent
    try:
        return 200, sim.control(op, payload)
    except KeyError:
        return 404, {"error": f"unknown control op {op!r}"}
    except ControlError as exc:
        return 400, {"error": str(exc)}


def encode(body: dict) -> bytes:
    return orjson.dumps(body, default=str)
