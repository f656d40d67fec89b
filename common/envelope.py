"""The ZeroMQ wire format between ingest and its downstream processes.

A message is three frames: ``[VERSION, header, payload]``. The header is a small
JSON object; the payload is the Bybit frame exactly as received (kind ``frame``)
or a JSON document (the other kinds). Never pickle: every process can be
restarted or replaced independently, and a version bump is explicit.

Several envelopes can travel as one message: ``[BATCH, packed]``, where ``packed`` is, per
envelope, its header's and payload's lengths (two unsigned 32-bit big-endian integers), then
the header, then the payload (``pack``/``unpack``). Each ZeroMQ message costs both ends a few
microseconds and wake-ups of their I/O threads; a flood sent one frame per message spent more
on that than on the frames.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import orjson
import zmq

VERSION = b"gw1"
BATCH = b"gw1b"
_LENGTHS = struct.Struct(">II")

FRAME = "frame"            # a Bybit data push (public or private)
SYSTEM = "system"          # a gateway event for ws-gateway.system (connection lost/restored, resync...)
SUB_STATUS = "sub_status"  # subscription status change for PostgreSQL (active / failed / removed)
ACTIVITY = "activity"      # last event time per topic, for PostgreSQL and status
REST = "rest"              # account state fetched over REST by reconciliation
KINDS = (FRAME, SYSTEM, SUB_STATUS, ACTIVITY, REST)
_MAX_INT = 2 ** 63


def dumps(obj, **kw) -> bytes:
    """``orjson.dumps`` with an exact-size result.

    The bytes orjson returns keep its ~4 KiB write buffer as their allocation: a buffer
    of 40,000 small headers measured 157 MB instead of 7 MB. Anything we keep (frames
    waiting for a slow downstream, events waiting for the broker) is made with this.
    """
    return bytes(memoryview(orjson.dumps(obj, **kw)))


class EnvelopeError(ValueError):
    pass


# pyzmq's send_multipart/recv_multipart cost 4-5 us per envelope in Python (type checks, enum
# flag arithmetic, a getsockopt call per part); the socket's own send/recv with int flags do the
# same in about 1.7. A multipart message is atomic in ZeroMQ: once its first part is accepted
# the rest are too (the high-water mark counts messages), so Again can only come from part one.
_BASE = zmq.backend.Socket
_SEND, _RECV = _BASE.send, _BASE.recv
_SNDMORE = int(zmq.SNDMORE)


class Socket(zmq.Socket):
    """A ZeroMQ socket whose multipart send/receive of bytes are cheaper (same results; no
    tracking, always copied). ``ctx.socket(kind, socket_class=Socket)``."""

    def send_multipart(self, msg_parts, flags: int = 0, copy: bool = True, track: bool = False):
        if not copy or track:
            return super().send_multipart(msg_parts, flags, copy, track)
        flags = int(flags)
        more = flags | _SNDMORE
        for part in msg_parts[:-1]:
            _SEND(self, part, more)
        _SEND(self, msg_parts[-1], flags)
        return None

    def recv_multipart(self, flags: int = 0, copy: bool = True, track: bool = False):
        if not copy or track:
            return super().recv_multipart(flags, copy, track)
        flags = int(flags)
        frame = _RECV(self, flags, False)     # a Frame knows whether more parts follow: no getsockopt
        parts = [frame.bytes]
        while frame.more:
            frame = _RECV(self, flags, False)
            parts.append(frame.bytes)
        return parts


@dataclass(slots=True)
class Envelope:
    kind: str
    payload: bytes
    endpoint: str = ""         # spot | linear | inverse | option | private
    topic: str = ""            # Bybit topic (frame, rest) or system event kind (system)
    recv_ns: int = 0           # wall-clock receive time, ns since the epoch
    stream_seq: int = 0        # per (endpoint, topic), +1 per frame, restarts with each epoch
    epoch: str = ""            # ingest run id
    conn_id: str = ""          # ingest's id of the connection the frame came from
    trace_id: str = ""
    extra: dict = field(default_factory=dict)

    def encode(self) -> list[bytes]:
        header = {"k": self.kind, "e": self.endpoint, "t": self.topic, "r": self.recv_ns,
                  "s": self.stream_seq, "p": self.epoch, "c": self.conn_id, "tr": self.trace_id}
        if self.extra:
            header["x"] = self.extra
        return [VERSION, dumps(header), self.payload]

    @classmethod
    def decode(cls, parts: list[bytes]) -> "Envelope":
        if len(parts) != 3:
            raise EnvelopeError(f"expected 3 frames, got {len(parts)}")
        if parts[0] != VERSION:
            raise EnvelopeError(f"unsupported envelope version {bytes(parts[0])[:16]!r}")
        try:
            h = orjson.loads(parts[1])
            kind = h["k"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise EnvelopeError(f"bad header: {exc}") from None
        if kind not in KINDS:
            raise EnvelopeError(f"unknown kind {kind!r}")
        get = h.get
        env = cls(kind=kind, payload=bytes(parts[2]), endpoint=get("e", ""), topic=get("t", ""),
                  recv_ns=get("r", 0), stream_seq=get("s", 0), epoch=get("p", ""),
                  conn_id=get("c", ""), trace_id=get("tr", ""), extra=get("x") or {})
        # Every field has one type, checked here once, so no reader meets a wrong one later
        # (one expression on the hot path; the loop below only names the culprit).
        if not (env.endpoint.__class__ is str and env.topic.__class__ is str and env.epoch.__class__ is str
                and env.conn_id.__class__ is str and env.trace_id.__class__ is str
                and env.recv_ns.__class__ is int and 0 <= env.recv_ns < _MAX_INT
                and env.stream_seq.__class__ is int and 0 <= env.stream_seq < _MAX_INT
                and env.extra.__class__ is dict):
            _refuse(env)
        return env

    def json(self):
        """The payload parsed as JSON."""
        return orjson.loads(self.payload)


def _refuse(env: Envelope) -> None:
    for name in ("endpoint", "topic", "epoch", "conn_id", "trace_id"):
        if getattr(env, name).__class__ is not str:
            raise EnvelopeError(f"header field {name}: expected a string, got {getattr(env, name)!r:.60}")
    for name in ("recv_ns", "stream_seq"):
        v = getattr(env, name)
        if v.__class__ is not int or not 0 <= v < _MAX_INT:
            raise EnvelopeError(f"header field {name}: expected an integer in [0, 2^63), got {v!r:.60}")
    raise EnvelopeError(f"header field extra: expected an object, got {env.extra!r:.60}")


def pack(envelopes) -> list[bytes]:
    """One message ``[BATCH, packed]`` holding several ``(header, payload)`` envelopes, in order."""
    out, lengths = [], _LENGTHS.pack
    for header, payload in envelopes:
        out += (lengths(len(header), len(payload)), header, payload)
    return [BATCH, b"".join(out)]


def unpack(parts: list[bytes]) -> list[list[bytes]]:
    """The envelopes of one message, each as its three frames ``[VERSION, header, payload]``
    (a message of one envelope comes back as it is). Raises EnvelopeError for a batch that is
    cut short, whose lengths overrun it, or that has frames after the packed one."""
    if not parts or parts[0] != BATCH:
        return [parts]
    if len(parts) != 2:
        raise EnvelopeError(f"a batch is 2 frames, got {len(parts)}")
    data, out, off, end, lengths = parts[1], [], 0, len(parts[1]), _LENGTHS.unpack_from
    while off < end:
        if off + 8 > end:
            raise EnvelopeError(f"batch cut short at byte {off}")
        hlen, plen = lengths(data, off)
        start = off + 8
        off = start + hlen + plen
        if off > end:
            raise EnvelopeError(f"batch entry at byte {start - 8} overruns the batch ({hlen} + {plen} bytes)")
        out.append([VERSION, data[start:start + hlen], data[start + hlen:off]])
    return out


def json_envelope(kind: str, body: dict, **kw) -> Envelope:
    return Envelope(kind=kind, payload=dumps(body, default=str), **kw)
