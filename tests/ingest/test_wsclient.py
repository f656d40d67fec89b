"""PushConnection (ingest/wsclient.py) against a real WebSocket server on a real socket:
messages reach the callback whole and in order, those that waited for recv() first, and
recv() still reports the end of the socket; without compression (the frames taken off the
buffer directly, as from Bybit) and with it (websockets' parser decoding every frame)."""
from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from ingest.wsclient import PushConnection
from tests.support import until


COMPRESSION = pytest.mark.parametrize("compression", [None, "deflate"])


@COMPRESSION
def test_messages_go_to_the_callback_whole_in_order_and_recv_reports_the_close(compression):
    async def main():
        go = asyncio.Event()

        async def handler(ws):
            await ws.send(b"m1", text=True)
            await ws.send(b"m2", text=True)
            await ws.send([b"m3-", b"a", b"b"], text=True)        # fragmented: three frames
            await ws.ping()
            await go.wait()
            await ws.send([b"m4-", b"c"], text=True)
            await ws.send(b"m5", text=True)
            await ws.close(1000, "bye")

        async with serve(handler, "127.0.0.1", 0, compression=compression) as server:
            port = server.sockets[0].getsockname()[1]
            ws = await connect(f"ws://127.0.0.1:{port}", create_connection=PushConnection, ping_interval=None,
                               compression=compression)
            assert bool(ws.protocol.extensions) == (compression is not None)
            try:
                assert await ws.recv(decode=False) == b"m1"            # before deliver_to: recv() as usual
                # m2 and m3's three frames parsed and waiting for recv()
                await until(lambda: len(ws.recv_messages.frames) >= 4, 5, "m2 and m3 parsed", interval=0.01)
                got: list[bytes] = []
                ws.deliver_to(got.extend)
                assert got == [b"m2", b"m3-ab"]                       # what waited goes first, whole
                go.set()
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(decode=False), 5)
                assert closed.value.rcvd.code == 1000
                assert got == [b"m2", b"m3-ab", b"m4-c", b"m5"]
                assert all(type(m) is bytes for m in got)
            finally:
                go.set()              # the handler ends, the server can stop (also on a failure)
                await ws.close()

    asyncio.run(main())


@COMPRESSION
def test_a_callback_that_is_set_at_once_gets_every_message(compression):
    async def main():
        async def handler(ws):
            for i in range(200):
                await ws.send(f"n{i}" * (i * 7 % 300), text=True)      # sizes across 125/126 header forms
            await ws.close()

        async with serve(handler, "127.0.0.1", 0, compression=compression) as server:
            port = server.sockets[0].getsockname()[1]
            ws = await connect(f"ws://127.0.0.1:{port}", create_connection=PushConnection, ping_interval=None,
                               compression=compression)
            assert bool(ws.protocol.extensions) == (compression is not None)
            got: list[bytes] = []
            ws.deliver_to(got.extend)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(decode=False), 5)
            assert got == [(f"n{i}" * (i * 7 % 300)).encode() for i in range(200)]

    asyncio.run(main())
