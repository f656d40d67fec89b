"""The control messages to ingest, in one place: what the API (and the publisher) send over
ingest's control socket and what ingest answers (docs/internals.md, "Control messages").

One ZeroMQ frame of JSON each way. A request is ``{"id", "op", "trace_id"?, ...}``; the
reply carries the same ``id``, ``ok`` and, when refused, ``error``. Pure: encode, decode and
check; the sockets belong to the callers (api/control.py, ingest/control.py, the publisher).
"""
from __future__ import annotations

import orjson

ADD, REMOVE, SYNC, STATUS, RESYNC = "add", "remove", "sync", "status", "resync"
SUBSCRIPTION_OPS = (ADD, REMOVE)         # carry a ``subscription`` object
OPS = (ADD, REMOVE, SYNC, STATUS, RESYNC)
ERROR_MAX = 500                          # characters of an error text kept by the requester


class ControlError(ValueError):
    """A control frame that is not a request (or reply) this module can read."""


def request(op: str, req_id: str, trace_id: str = "", subscription: dict | None = None, **fields) -> bytes:
    """One request frame. ``subscription`` for add/remove: ``{"id", "channel", "endpoint",
    "category", "symbol", "depth", "interval", "topic"}``; ``resync`` takes ``where`` and
    ``topics`` ([{"endpoint", "topic", "reason"}])."""
    if op not in OPS:
        raise ControlError(f"unknown op {op!r}")
    body = {"id": req_id, "op": op, "trace_id": trace_id, **fields}
    if op in SUBSCRIPTION_OPS:
        if not isinstance(subscription, dict):
            raise ControlError(f"{op} needs a subscription")
        body["subscription"] = subscription
    return orjson.dumps(body, default=str)


def decode(raw: bytes) -> dict:
    """A request or reply frame as a dict. Raises ControlError."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ControlError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ControlError("not a JSON object")
    return value


def reply(req_id, ok: bool, error: str | None = None, **fields) -> bytes:
    """One reply frame (``req_id`` None when the request could not be read)."""
    body = {"id": req_id, "ok": ok}
    if error is not None or not ok:
        body["error"] = error
    body.update(fields)
    return encode(body)


def encode(body: dict) -> bytes:
    """A reply built as a dict (``{"id", "ok", ...}``) as its frame."""
    return orjson.dumps(body, default=str)


def refusal(req_id, error: str) -> dict:
    return {"id": req_id, "ok": False, "error": error}


def error_text(value) -> str | None:
    """A reply's ``error`` as the requester keeps it (bounded, always text)."""
    return None if value is None else str(value)[:ERROR_MAX]
