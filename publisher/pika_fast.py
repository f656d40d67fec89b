"""pika's internals, used for speed, behind one fence.

The publisher's hot path writes AMQP frames itself and reaches into pika's connection
(``_process_frame``, ``_adapter_emit_data``, the plaintext transport's socket): measured,
pika's generic paths were most of the publisher's CPU per event. Those are private APIs, so
everything that touches them lives here, and ``fast_path(enabled)`` says whether to use them:
only with the pika release they were written and tested against (``TESTED``), and only when
``PUBLISHER_FAST_PATH`` is on. Otherwise the publisher uses pika's public API
(``basic_publish``, ``confirm_delivery``) and says so in its log and status: an upgrade of
pika costs speed, never correctness.
"""
from __future__ import annotations

import struct
from typing import Callable

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

TESTED = ("1.4.",)        # pika releases this module's frames and hooks were checked against


def fast_path(enabled: bool) -> tuple[bool, str]:
    """(use the fast path?, why not when not)."""
    if not enabled:
        return False, "turned off (PUBLISHER_FAST_PATH=off)"
    version = getattr(pika, "__version__", "?")
    if not version.startswith(TESTED):
        return False, f"pika {version} is not a release the fast path was tested with ({', '.join(TESTED)}x)"
    if _PlainTransport is None or not all(hasattr(AsyncioConnection, name) for name in
                                          ("_process_frame", "_adapter_emit_data")):
        return False, f"pika {version} lacks the internals the fast path uses"
    return True, ""


try:       # a private class: its absence only turns the fast path off
    from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport as _PlainTransport
except ImportError:     # pragma: no cover - depends on the installed pika
    _PlainTransport = None


class CorkedConnection(AsyncioConnection):
    """An AsyncioConnection with three shortcuts on the publisher's hot path.

    - ``cork()``/``uncork()``: pika writes each AMQP frame (method, header, body: three
      per publish) with its own send(2); between the two calls the frames of a whole
      batch of publishes go out in one write instead (measured: the send calls were
      the largest single cost of the publisher under load).
    - Writes go to the socket at once when nothing is queued ahead of them. pika only
      buffers them and asks the loop to watch for writability, which costs a loop turn
      and two epoll_ctl calls per batch. Whatever the kernel does not take (or any
      error) goes through pika's own write path, which handles it as before.
    - Basic.Ack/Basic.Nack frames of the confirm channel go straight to one handler
      (``on_confirm_frames``) as ``(delivery_tag, multiple, ack?)`` tuples, not through
      pika's generic callback registry, which costs more than the rest of the confirm
      handling. Runs of them at the start of what the socket delivered are read from the
      bytes themselves (21 bytes each, a fixed layout) without pika's frame objects: those
      were a fifth of the publisher's CPU at 8,000 events/s
      (tests/publisher/test_transport.py checks these shortcuts against the real broker).
    """

    _cork: list | None = None
    _confirms: tuple[int, Callable, bytes] | None = None     # (channel number, handler, frame start)

    def on_confirm_frames(self, channel_number: int, handler: Callable) -> None:
        """``handler(acks)``: a list of ``(delivery_tag, multiple, ack?)`` in the order received."""
        self._confirms = (channel_number, handler, b"\x01" + _H(channel_number) + _U32(_CONFIRM_PAYLOAD))

    def _on_data_available(self, data_in: bytes) -> None:
        fast = self._confirms
        if fast is None or self._frame_buffer:     # mid-frame: pika's reader has the rest
            super()._on_data_available(data_in)
            return
        start, pos, end, acks = fast[2], 0, len(data_in), []
        while end - pos >= _CONFIRM_FRAME and data_in.startswith(start, pos) \
                and data_in[pos + _CONFIRM_FRAME - 1] == 0xCE:
            method = data_in[pos + 7:pos + 11]
            if method == _ACK:
                ok = True
            elif method == _NACK:
                ok = False
            else:
                break
            acks.append((_TAG(data_in, pos + 11)[0], bool(data_in[pos + 19] & 1), ok))
            pos += _CONFIRM_FRAME
        if acks:
            self.bytes_received += pos        # pika's heartbeat checker watches this
            self.frames_received += len(acks)
            fast[1](acks)
        if pos < end:
            super()._on_data_available(data_in[pos:] if pos else data_in)

    def _process_frame(self, frame_value) -> None:
        fast = self._confirms
        if (fast is not None and frame_value.frame_type == _FRAME_METHOD
                and frame_value.channel_number == fast[0]
                and frame_value.method.__class__ in _CONFIRM_METHODS):
            self.frames_received += 1
            fast[1]([confirm_of(frame_value.method)])
            return
        super()._process_frame(frame_value)

    def _adapter_emit_data(self, data: bytes) -> None:
        if self._cork is not None:
            self._cork.append(data)
        else:
            self._write(data)

    def emit_parts(self, parts: list[bytes]) -> None:
        """Pieces of frames to write in this order: kept as they are while corked."""
        if self._cork is not None:
            self._cork += parts
        else:
            self._adapter_emit_data(b"".join(parts))

    def _write(self, data: bytes) -> None:
        t = self._transport
        if t.__class__ is _PlainTransport and t._state == t._STATE_ACTIVE and not t._tx_buffers:
            try:
                sent = t._sock.send(data)
            except OSError:        # EAGAIN, or a real error that pika's path will meet and report
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super()._adapter_emit_data(data)

    def cork(self) -> None:
        if self._cork is None:
            self._cork = []

    def uncork(self) -> None:
        data, self._cork = self._cork, None
        if data:
            self._write(b"".join(data))


_FRAME_METHOD = pika.spec.FRAME_METHOD
_CONFIRM_METHODS = (pika.spec.Basic.Ack, pika.spec.Basic.Nack)
# Basic.Ack (60, 80) and Basic.Nack (60, 120): delivery tag (8 bytes) and one octet of bits
# (multiple first), 13 bytes of payload; 7 bytes of frame header before it, 0xCE after.
_ACK, _NACK = struct.pack(">HH", 60, 80), struct.pack(">HH", 60, 120)
_CONFIRM_PAYLOAD, _CONFIRM_FRAME = 13, 21
_TAG = struct.Struct(">Q").unpack_from


def confirm_of(method) -> tuple[int, bool, bool]:
    """A decoded Basic.Ack/Basic.Nack as the confirm handler takes it: (delivery_tag, multiple, ack?)."""
    return method.delivery_tag, bool(method.multiple), method.__class__ is pika.spec.Basic.Ack


_U32, _U64, _I64 = struct.Struct(">I").pack, struct.Struct(">Q").pack, struct.Struct(">q").pack
_I32 = struct.Struct(">i").pack
# content_type | headers | delivery_mode | message_id | timestamp (AMQP 0-9-1 basic property flags)
_FLAGS = struct.pack(">H", 0x8000 | 0x2000 | 0x1000 | 0x0080 | 0x0040)
_CONTENT_TYPE = b"\x10application/json"
_MODES = {1: b"\x01", 2: b"\x02"}
_MAX_ITEMS = 10_000
_SEQ_KEY = b"\x0astream_seq"
_H = struct.Struct(">H").pack
# AMQP 0-9-1 frames: type, channel, payload size, payload, frame-end (0xCE).
_FRAME_END = b"\xce"
_BASIC_PUBLISH = struct.pack(">IH", 0x003C0028, 0)     # class 60 method 40, ticket 0
_HEADER_CLASS = struct.pack(">HH", 60, 0)              # class Basic, weight 0


def publish_frames(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The Basic.Publish method frame, exactly as pika marshals it (the same for every
    message to one routing key on one channel)."""
    payload = _BASIC_PUBLISH + _short(exchange) + _short(routing_key) + (b"\x01" if mandatory else b"\x00")
    return b"\x01" + _H(channel) + _U32(len(payload)) + payload + _FRAME_END


def message_parts(method: bytes, channel: int, props: bytes, body: bytes, body_max: int) -> tuple[list[bytes], int]:
    """(the pieces of ``method`` + header frame + body frames, frame count) as pika's
    ``_send_message`` writes them; joined once, by the write that takes them (each join of a body
    is a copy: three per message were a tenth of the publisher's CPU in a flood)."""
    ch = _H(channel)
    size = len(body)
    parts = [method, b"\x02", ch, _U32(12 + len(props)), _HEADER_CLASS, _U64(size), props, _FRAME_END]
    n = 2
    for start in range(0, size, body_max):
        chunk = body[start:start + body_max]      # the body itself when it fits one frame: no copy
        parts += (b"\x03", ch, _U32(len(chunk)), chunk, _FRAME_END)
        n += 1
    return parts, n


def _short(s: str) -> bytes:
    b = s.encode()
    if len(b) > 255:
        raise ValueError(f"short string too long: {s[:40]!r}...")
    return bytes((len(b),)) + b


def _int_value(value: int) -> bytes:
    """An int header value as pika encodes it: 32-bit signed 'I' when it fits, else 64-bit 'l'."""
    return b"I" + _I32(value) if -2**31 <= value < 2**31 else b"l" + _I64(value)


class EventProperties(pika.BasicProperties):
    """The publisher's fixed property set, encoded in one pass.

    pika's generic ``BasicProperties.encode`` walks all 14 properties and type-checks
    every header value; it was the publisher's largest cost after the socket
    writes. This encodes exactly content_type, headers (str and int values),
    delivery_mode, message_id and timestamp, byte for byte as pika would
    (tests/publisher/test_amqp_encoding.py compares them).
    """

    # The properties this class never sets (pika's __init__ would set all 14 to None).
    content_encoding = priority = correlation_id = reply_to = expiration = None
    type = user_id = app_id = cluster_id = None
    content_type = "application/json"
    _keys: dict[str, bytes] = {}
    _items: dict[tuple[str, str], bytes] = {}
    _tables: dict[tuple, bytes] = {}

    def __init__(self, message_id: str, timestamp: int, headers: dict, delivery_mode: int):
        # Not calling pika's __init__: it only assigns the 14 attributes, the class has the rest.
        self.message_id, self.timestamp, self.headers, self.delivery_mode = \
            message_id, timestamp, headers, delivery_mode

    def encode(self) -> list[bytes]:
        return [self.encode_bytes()]

    def encode_bytes(self) -> bytes:
        headers = self.headers
        pairs = tuple(headers.items())
        if pairs and pairs[-1][0] == "stream_seq" and "version" not in headers:
            # A market or system event: every header but the last (its number in the stream)
            # repeats for the stream's events; that part of the table is encoded once.
            seq, head = pairs[-1][1], pairs[:-1]
            table = self._tables.get(head)
            if table is None:
                if len(self._tables) >= _MAX_ITEMS:
                    self._tables.clear()
                table = self._tables[head] = self._table(head)
            if seq.__class__ is not int:
                raise TypeError(f"header 'stream_seq': unsupported value {seq!r}")
            table += _SEQ_KEY + _int_value(seq)
        else:
            table = self._table(pairs)
        mid = self.message_id.encode()
        return b"".join((_FLAGS, _CONTENT_TYPE, _U32(len(table)), table, _MODES[self.delivery_mode],
                         bytes((len(mid),)) + mid, _U64(self.timestamp)))

    def _table(self, pairs) -> bytes:
        """The field table of ``pairs`` (key, str or int value), as pika encodes it."""
        table = []
        keys, items = self._keys, self._items
        for key, value in pairs:
            if value.__class__ is str:
                # (key, str value) pairs repeat per stream (class, category, symbol, trace id):
                # encoded once, then looked up.
                kv = items.get((key, value))
                if kv is None:
                    if len(items) >= _MAX_ITEMS:
                        items.clear()
                    b = value.encode()
                    kv = items[(key, value)] = _short(key) + b"S" + _U32(len(b)) + b
                table.append(kv)
                continue
            k = keys.get(key)
            if k is None:
                k = keys[key] = _short(key)
            table.append(k)
            if value.__class__ is int:
                table.append(_int_value(value))
            else:
                raise TypeError(f"header {key!r}: unsupported value {value!r}")
        return b"".join(table)
