"""The WebSocket client connection ingest reads Bybit through.

websockets' own client connection, except that once ``deliver_to(callback)`` is called its
messages go to ``callback(bytes)`` as the protocol parses them, in order, instead of into the
queue ``recv()`` reads: that queue, its future and a wake-up of the reading task per message
were about a tenth of ingest's CPU in a flood. Until then (the auth reply) ``recv()`` works as
usual; after it ``recv()`` only waits for the end of the socket and raises ConnectionClosed.
"""
from __future__ import annotations

from typing import Callable

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode

_CONT, _DATA = Opcode.CONT, (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class PushConnection(ClientConnection):
    _callback: Callable[[bytes], None] | None = None
    _parts: list | None = None          # the frames of a fragmented message so far

    def deliver_to(self, callback: Callable[[bytes], None]) -> None:
        """From now on every message goes to ``callback``; those already waiting for
        ``recv()`` go first. The callback must not raise (it runs inside the protocol)."""
        self._callback = callback
        queue = getattr(getattr(self.recv_messages, "frames", None), "queue", None)
        if queue:
            frames = list(queue)
            queue.clear()
            for frame in frames:
                self._data_frame(frame)
            self.recv_messages.maybe_resume()

    def process_event(self, event) -> None:
        if self._callback is None or self.response is None or event.opcode not in _DATA:
            super().process_event(event)      # the handshake, control frames, or before deliver_to
        else:
            self._data_frame(event)

    def _data_frame(self, frame: Frame) -> None:
        data = frame.data
        if frame.opcode is _CONT:
            if self._parts is None:          # the protocol refuses this before it gets here
                return
            self._parts.append(data)
            if not frame.fin:
                return
            data, self._parts = b"".join(self._parts), None
        elif not frame.fin:
            self._parts = [data]
            return
        self._callback(data if data.__class__ is bytes else bytes(data))
