"""Control client to ingest: one DEALER per request (ZeroMQ sockets are not
thread-safe, and a fresh socket can never be left in a bad state), linger 0, one
JSON frame out, the reply with the same id back, or a timeout. Never blocks longer
than ``timeout_ms``. Wire format: docs/internals.md, "Control messages"."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import orjson
import zmq

from common.logs import get_logger

log = get_logger("api.control")


@dataclass(frozen=True)
class Reply:
    ok: bool
    error: str | None = None


class ControlUnavailable(Exception):
    """ingest did not answer in time (not running, busy, or restarting)."""


class ControlClient:
    def __init__(self, address: str, timeout_ms: int):
        self.address, self.timeout_ms = address, timeout_ms

    def request(self, op: str, subscription: dict, trace_id: str) -> Reply:
        """Send one control request and wait for its reply. Raises ControlUnavailable."""
        req_id = uuid.uuid4().hex
        message = orjson.dumps({"id": req_id, "op": op, "trace_id": trace_id,
                                "subscription": subscription}, default=str)
        # Context.instance() is per process (pyzmq re-creates it after fork).
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)        # no peer: fail the send instead of queueing
        sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        deadline = time.monotonic() + self.timeout_ms / 1000
        try:
            sock.connect(self.address)
            try:
                sock.send(message)
            except zmq.Again:
                raise ControlUnavailable("ingest control socket has no listener") from None
            while True:
                remaining = int((deadline - time.monotonic()) * 1000)
                if remaining <= 0 or not sock.poll(remaining, zmq.POLLIN):
                    raise ControlUnavailable(f"no reply from ingest within {self.timeout_ms} ms")
                frames = sock.recv_multipart()
                reply = _parse_reply(frames[-1])
                if reply is None or reply.get("id") != req_id:
                    log.warning("control_reply_ignored", reason="unmatched or malformed reply")
                    continue
                return Reply(bool(reply.get("ok")), _error_text(reply.get("error")))
        finally:
            sock.close(linger=0)


def _parse_reply(raw: bytes) -> dict | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _error_text(value) -> str | None:
    if value is None:
        return None
    return str(value)[:500]
