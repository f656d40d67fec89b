"""The control socket: the API's subscription changes, each answered (accepted or refused, with why)."""
from __future__ import annotations

import orjson
import zmq
import zmq.asyncio

from common import addresses
from common.logs import RateLimited, get_logger
from common.topics import TopicError, build_topic

log = get_logger(__name__)


def handle(mgr, request: dict, request_sync) -> dict:
    """Apply one control request to the manager; pure apart from the manager calls."""
    rid = request.get("id")
    op = request.get("op")
    trace_id = str(request.get("trace_id") or "")
    if op == "sync":
        request_sync(trace_id)
        return {"id": rid, "ok": True}
    if op == "status":
        return {"id": rid, "ok": True, "status": mgr.status()}
    sub = request.get("subscription")
    if op not in ("add", "remove") or not isinstance(sub, dict):
        return {"id": rid, "ok": False, "error": f"unknown op {op!r} or missing subscription"}
    try:
        topic = build_topic(sub.get("channel"), sub.get("category"), sub.get("symbol"),
                            sub.get("depth"), sub.get("interval"))
    except TopicError as exc:
        log.info("control_refused", op=op, error=str(exc), trace_id=trace_id or None)
        return {"id": rid, "ok": False, "error": f"{exc.field}: {exc}"}
    if op == "add":
        error = mgr.add(topic, trace_id)
        log.info("control_add", topic=topic.key, accepted=error is None, error=error, trace_id=trace_id or None)
        return {"id": rid, "ok": error is None, "error": error, "topic": topic.name}
    removed = mgr.remove(topic.key, trace_id)
    log.info("control_remove", topic=topic.key, held=removed, trace_id=trace_id or None)
    return {"id": rid, "ok": True, "held": removed, "topic": topic.name}


class ControlServer:
    def __init__(self, run_dir, mgr, request_sync):
        self.mgr, self.request_sync = mgr, request_sync
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(addresses.ingest_control(run_dir))
        self._bad = RateLimited(log, 5.0)

    async def serve(self) -> None:
        while True:
            parts = await self.sock.recv_multipart()
            ident, payload = parts[0], parts[-1]
            try:
                request = orjson.loads(payload)
                if not isinstance(request, dict):
                    raise ValueError("request is not a JSON object")
                reply = handle(self.mgr, request, self.request_sync)
            except Exception as exc:   # a bad request is answered, never fatal
                self._bad("warning", "control_bad_request", error=str(exc))
                reply = {"id": None, "ok": False, "error": f"bad request: {exc}"}
            # echo any delimiter frames back, so REQ-style and plain DEALER clients both work
            await self.sock.send_multipart([ident, *parts[1:-1], orjson.dumps(reply, default=str)])

    def close(self) -> None:
        self.sock.close(linger=0)
