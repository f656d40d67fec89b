"""Control client to ingest: one DEALER per thread (ZeroMQ sockets are not
thread-safe; a kept socket saves the connect handshake on every request), linger 0,
one JSON frame out, the reply with the same id back, or a timeout. Never blocks
longer than ``timeout_ms``; after a timeout the socket is closed and the next
request starts a fresh one, so a late reply or a dead peer cannot wedge it.
Wire format: common/control.py."""
from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass

import zmq

from common import control
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
        self._local = threading.local()

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None or getattr(self._local, "pid", None) != os.getpid():
            # Context.instance() is per process (pyzmq re-creates it after fork).
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)        # no peer: fail the send instead of queueing
            sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
            sock.connect(self.address)
            self._local.sock, self._local.pid = sock, os.getpid()
        return sock

    def _discard(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close(linger=0)
        self._local.sock = None

    def request(self, op: str, subscription: dict, trace_id: str) -> Reply:
        """Send one control request and wait for its reply. Raises ControlUnavailable."""
        req_id = uuid.uuid4().hex
        message = control.request(op, req_id, trace_id, subscription)
        deadline = time.monotonic() + self.timeout_ms / 1000
        sock = self._socket()
        try:
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
                return Reply(bool(reply.get("ok")), control.error_text(reply.get("error")))
        except BaseException:
            self._discard()
            raise


def _parse_reply(raw: bytes) -> dict | None:
    try:
        return control.decode(raw)
    except control.ControlError:
        return None
