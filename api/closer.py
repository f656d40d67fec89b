"""Lingering closes off gthread's main loop.

When a response ends a connection ("Connection: close", a refused body, an HTTP/1.0
client), gunicorn closes it as RFC 9112 section 9.6 asks: it half-closes, then reads and
drops what the client still sends until the client closes or 2 s pass, so that unread
request bytes do not make the kernel reset the connection before the client has read the
answer. gunicorn 27.0.1's gthread does that read in the worker's main loop, the one thread
that hands requests to the pool: a client that keeps its socket open after such an answer
stops the whole worker for 2 s. Ten of them stalled /health for 4 s (measured).

``LingeringCloser`` keeps the same rule (FIN first, drain up to ``max_drain`` bytes, close at
the client's FIN or the deadline) for any number of sockets at once in one daemon thread
per worker, so the main loop never waits. Installed by ``api/gunicorn_patches.py`` in each
worker; tests/api/test_gunicorn.py holds it.
"""
from __future__ import annotations

import selectors
import socket
import threading
import time
from collections import deque

from common.logs import get_logger

log = get_logger("api.closer")

DRAIN_CHUNK = 4096


class LingeringCloser:
    def __init__(self, timeout: float = 2.0, max_drain: int = 64 * 1024):
        self.timeout, self.max_drain = timeout, max_drain
        self._incoming: deque[tuple[socket.socket, float, int]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lingering: dict[socket.socket, list] = {}   # sock -> [deadline, bytes left to drain]
        self._thread = threading.Thread(target=self._run, name="lingering-closer", daemon=True)
        self._thread.start()

    def close(self, sock: socket.socket, timeout: float | None = None, max_drain: int | None = None) -> None:
        """Half-close ``sock`` now and finish closing it in the background. Same signature
        as gunicorn.util.close_graceful, which it replaces."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:               # already reset or closed by the peer: nothing to linger for
            _close(sock)
            return
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._incoming.append((sock, deadline, self.max_drain if max_drain is None else max_drain))
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):   # the wake-up pipe is full: the thread is awake anyway
            pass

    @property
    def lingering(self) -> int:
        return len(self._lingering) + len(self._incoming)

    def _run(self) -> None:
        while True:
            try:
                self._pass()
            except Exception:           # never let the thread die: closes would pile up unclosed
                log.exception("lingering_closer_error")
                time.sleep(0.01)

    def _pass(self) -> None:
        """Wait for a wake-up, a client's bytes or FIN, or the nearest deadline; act on it."""
        timeout = None
        if self._lingering:
            timeout = max(0.0, min(entry[0] for entry in self._lingering.values()) - time.monotonic())
        for key, _events in self._selector.select(timeout):
            if key.fileobj is self._wake_r:
                self._take_incoming()
            else:
                self._drain(key.fileobj)
        now = time.monotonic()
        for sock in [s for s, entry in self._lingering.items() if entry[0] <= now]:
            self._finish(sock)

    def _take_incoming(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while self._incoming:
            sock, deadline, max_drain = self._incoming.popleft()
            try:
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ, None)
            except (OSError, ValueError):
                _close(sock)
                continue
            self._lingering[sock] = [deadline, max_drain]

    def _drain(self, sock: socket.socket) -> None:
        entry = self._lingering[sock]
        while True:
            try:
                data = sock.recv(DRAIN_CHUNK)
            except BlockingIOError:
                return                       # more may come: keep lingering
            except OSError:
                break
            if not data:
                break                        # the client closed: done
            entry[1] -= len(data)
            if entry[1] <= 0:
                break                        # drained enough: stop reading, close
        self._finish(sock)

    def _finish(self, sock: socket.socket) -> None:
        self._lingering.pop(sock, None)
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass
        _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
