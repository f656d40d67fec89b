"""api/closer.py on real sockets: the RFC 9112 9.6 close (FIN after the answer, drain, close at
the client's FIN or the deadline) for many connections at once, never blocking the caller."""
from __future__ import annotations

import socket
import time

import pytest

from api.closer import LingeringCloser
from tests.support import wait_for


@pytest.fixture
def pairs():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    made = []

    def make(n: int):
        for _ in range(n):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            made.append((client, server))
        return made[-n:]

    yield make
    for client, server in made:
        client.close()
        server.close()
    listener.close()


def test_closes_without_blocking_and_finishes_at_fin_or_deadline(pairs):
    closer = LingeringCloser(timeout=0.5)
    conns = pairs(20)
    for client, server in conns:
        client.sendall(b"x" * 5000)               # unread request bytes: a plain close would reset
        server.sendall(b"the answer")
    started = time.monotonic()
    for _client, server in conns:
        closer.close(server)
    assert time.monotonic() - started < 0.1       # 20 closes; the old inline linger took 2 s each
    for client, _server in conns:                 # each client reads the whole answer, then the FIN
        client.settimeout(5)
        assert client.recv(100) == b"the answer"
        assert client.recv(100) == b""
    conns[0][0].close()                           # a client that closes ends its linger at once
    wait_for(lambda: conns[0][1].fileno() == -1, 2, message="closed at the client's FIN")
    assert conns[1][1].fileno() != -1             # the others still linger ...
    wait_for(lambda: closer.lingering == 0, 5, message="every linger ended at its deadline")
    assert all(server.fileno() == -1 for _client, server in conns)   # ... and are closed, not leaked


def test_stops_reading_after_max_drain(pairs):
    closer = LingeringCloser(timeout=30, max_drain=10_000)
    [(client, server)] = pairs(1)
    closer.close(server)
    client.sendall(b"y" * 50_000)                 # a client still uploading a refused body
    wait_for(lambda: server.fileno() == -1, 5, message="closed once 10 KB were drained, not at 30 s")


def test_a_socket_already_reset_is_just_closed(pairs):
    closer = LingeringCloser()
    [(client, server)] = pairs(1)
    server.close()
    closer.close(server)                          # shutdown fails on a closed socket: no linger, no error
    assert closer.lingering == 0
