"""The WebSocket client connection ingest reads Bybit through.

websockets' own client connection, except that once ``deliver_to(callback)`` is called its
messages go to ``callback(list of bytes)`` as the protocol parses them, in order, instead of into
the queue ``recv()`` reads: that queue, its future and a wake-up of the reading task per message
were about a tenth of ingest's CPU in a flood. The whole messages taken off the buffer at once go
in one list, so the receiver does once for all of them what it would do per message (read the
clock, above all). Until then (the auth reply) ``recv()`` works as
usual; after it ``recv()`` only waits for the end of the socket and raises ConnectionClosed.

Its protocol also takes whole, unfragmented data frames off the read buffer itself, with no
frame object, event or generator step per frame (websockets' frame parser was a quarter of
ingest's CPU in a flood); anything else (control frames, fragments, a frame not yet complete,
an invalid header, every frame when an extension was negotiated) goes through websockets' own
parser and checks.
"""
from __future__ import annotations

from typing import Callable

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Protocol

_CONT, _DATA = Opcode.CONT, (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
# First header byte of a frame the fast path takes: FIN set, no RSV bit, text or binary.
_FINAL_TEXT, _FINAL_BINARY = 0x81, 0x82


class _Frames(Protocol):
    """Protocol.parse with a fast path for whole data frames once ``on_data`` is set."""

    on_data: Callable[[list[bytes]], None] | None = None
    _parts: list | None = None          # the frames of a fragmented message so far

    def parse(self):
        reader = self.reader
        # with an extension (compression: undocumented for Bybit, offered by default) every
        # frame needs decoding: websockets' parser only
        fast = not self.extensions
        try:
            while True:
                # as Protocol.parse, except that data frames go to on_data (at_eof returns at
                # once while the buffer holds data, and waits for more when it is empty)
                if (yield from reader.at_eof()):
                    raise EOFError("unexpected end of stream")
                if fast and self.on_data is not None and self.current_size is None and self._take_messages():
                    continue
                max_size = self.max_message_size
                if max_size is not None and self.current_size is not None:
                    max_size -= self.current_size
                if self.max_fragment_size is not None:
                    max_size = self.max_fragment_size if max_size is None else min(max_size, self.max_fragment_size)
                frame = yield from Frame.parse(reader.read_exact, mask=False, max_size=max_size,
                                               extensions=self.extensions)
                if self.on_data is not None and frame.opcode in _DATA:
                    self._recv_data(frame)
                else:
                    self.recv_frame(frame)
        except ProtocolError as exc:
            self.fail(CloseCode.PROTOCOL_ERROR, str(exc))
            self.parser_exc = exc
        except EOFError as exc:
            self.fail(CloseCode.ABNORMAL_CLOSURE, str(exc))
            self.parser_exc = exc
        except PayloadTooBig as exc:
            exc.set_current_size(self.current_size)
            self.fail(CloseCode.MESSAGE_TOO_BIG, str(exc))
            self.parser_exc = exc
        except Exception as exc:
            self.logger.error("parser failed", exc_info=True)
            self.fail(CloseCode.INTERNAL_ERROR)
            self.parser_exc = exc
        # as in Protocol.parse: fail() has replaced this parser with discard()
        yield
        raise AssertionError("parse() shouldn't step after error")

    def _take_messages(self) -> bool:
        """Hands every whole, final, unmasked text or binary frame at the head of the buffer to
        ``on_data``, in one list; stops at the first other or incomplete one. Whether it took any."""
        buf = self.reader.buffer
        end, pos, limit = len(buf), 0, self.max_message_size
        taken = []
        take = taken.append
        with memoryview(buf) as view:      # released before the buffer is cut (it cannot resize while viewed)
            while end - pos >= 2:
                first, n = buf[pos], buf[pos + 1]
                if first != _FINAL_TEXT and first != _FINAL_BINARY:
                    break
                if n < 126:
                    start = pos + 2
                elif n == 126:
                    if end - pos < 4:
                        break
                    n, start = (buf[pos + 2] << 8) | buf[pos + 3], pos + 4
                elif n == 127:
                    if end - pos < 10:
                        break
                    n, start = int.from_bytes(view[pos + 2:pos + 10], "big"), pos + 10
                else:                       # the mask bit: a server must not mask (refused by the parser)
                    break
                if start + n > end or (limit is not None and n > limit):
                    break
                pos = start + n
                take(bytes(view[start:pos]))
        if pos:
            del buf[:pos]
            self.on_data(taken)
        return pos > 0

    def _recv_data(self, frame: Frame) -> None:
        """A data frame once ``on_data`` is set: recv_frame's checks, then ``assemble``."""
        if frame.opcode is _CONT:
            if self.current_size is None:
                raise ProtocolError("unexpected continuation frame")
            self.current_size = None if frame.fin else self.current_size + len(frame.data)
        else:
            if self.current_size is not None:
                raise ProtocolError("expected a continuation frame")
            if not frame.fin:
                self.current_size = len(frame.data)
        self.assemble(frame)

    def assemble(self, frame: Frame) -> None:
        """Joins a fragmented message's frames; each whole message goes to ``on_data``."""
        data = frame.data
        if frame.opcode is _CONT:
            if self._parts is None:         # the checks refuse this before it gets here
                return
            self._parts.append(data)
            if not frame.fin:
                return
            data, self._parts = b"".join(self._parts), None
        elif not frame.fin:
            self._parts = [data]
            return
        self.on_data([data if data.__class__ is bytes else bytes(data)])


class PushProtocol(ClientProtocol, _Frames):
    """ClientProtocol (the handshake) whose frames are parsed by ``_Frames`` (its ``super().parse()``)."""


class PushConnection(ClientConnection):
    def __init__(self, protocol: ClientProtocol, *args, **kwargs):
        if type(protocol) is not ClientProtocol:
            raise TypeError(f"expected websockets' ClientProtocol, got {type(protocol).__name__}")
        # connect() builds the protocol itself; it is still in its handshake, so the frame
        # parser it reaches afterwards (super().parse()) is already PushProtocol's
        protocol.__class__ = PushProtocol
        super().__init__(protocol, *args, **kwargs)

    def deliver_to(self, callback: Callable[[list[bytes]], None]) -> None:
        """From now on every message goes to ``callback``, in lists (those taken off the buffer
        together); those already waiting for ``recv()`` go first. The callback must not raise
        (it runs inside the protocol)."""
        protocol: PushProtocol = self.protocol
        protocol.on_data = callback
        queue = getattr(getattr(self.recv_messages, "frames", None), "queue", None)
        if queue:
            frames = list(queue)
            queue.clear()
            for frame in frames:
                protocol.assemble(frame)
            self.recv_messages.maybe_resume()
