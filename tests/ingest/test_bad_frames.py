"""A frame ingest can't parse is logged (rate-limited) and counted, and never kills the process."""
from __future__ import annotations

import asyncio
import json
import threading

import pytest
from websockets.asyncio.server import serve

from common.topics import build_topic
from tests.ingest.harness import IngestProcess
from tests.ingest.test_ingest import subscribe_all
from tests.support import free_port, wait_for

pytestmark = pytest.mark.timeout(60)

GARBAGE = ["not json at all", "[1, 2, 3]", '"a string"', '{"topic": "orderbook.50.BTCUSDT", "type": "delta"}',
           '{"topic": "orderbook.50.BTCUSDT", "type": "delta", "data": {"u": "x"}}', "{" * 50]


class GarbageServer:
    """Answers subscribe and ping like Bybit's linear socket, then sends garbage between good trades."""

    def __init__(self):
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.started.wait(5)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self):
        self.stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", self.port):
            self.started.set()
            await self.stop.wait()

    async def _handler(self, ws):
        async def talk():
            async for msg in ws:
                req = json.loads(msg)
                if req["op"] == "ping":
                    await ws.send(json.dumps({"success": True, "ret_msg": "pong", "conn_id": "c", "req_id": req.get("req_id", ""), "op": "ping"}))
                else:
                    await ws.send(json.dumps({"success": True, "ret_msg": "", "conn_id": "c", "req_id": req.get("req_id", ""), "op": req["op"]}))
        talker = asyncio.create_task(talk())
        n = 0
        try:
            while True:
                await asyncio.sleep(0.02)
                n += 1
                await ws.send(GARBAGE[n % len(GARBAGE)])
                await ws.send(json.dumps({"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": n,
                                          "data": [{"T": n, "s": "BTCUSDT", "S": "Buy", "v": "1", "p": "1", "i": str(n)}]}))
        except Exception:
            talker.cancel()

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(5)


def test_garbage_frames_are_counted_and_the_feed_goes_on(ingest_db, short_tmp):
    server = GarbageServer()

    class FakeSim:
        port = server.port

    proc = IngestProcess(short_tmp, FakeSim, ingest_db, BYBIT_ENV="testnet",
                         BYBIT_WS_PUBLIC_URL=f"ws://127.0.0.1:{server.port}/v5/public")
    try:
        topics = [build_topic("trades", "linear", "BTCUSDT"), build_topic("orderbook", "linear", "BTCUSDT", 50)]
        subscribe_all(proc, ingest_db, topics)
        wait_for(lambda: len(proc.publisher.frames("publicTrade.BTCUSDT")) >= 60, 20, message="good frames flowing")
        assert proc.proc.poll() is None
        log = proc.log()
        assert '"bad_frame"' in log
        # rate-limited: far fewer log lines than bad frames
        assert log.count('"bad_frame"') < 10
        status = proc.status()
        assert status["connections"][0]["reconnects"] == 0
        assert status["bad_frames"] >= 20
    finally:
        proc.close()
        server.close()
        from tests.ingest.conftest import clear_subscriptions
        clear_subscriptions(ingest_db)
