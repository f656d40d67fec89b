"""The replay simulator over real sockets: a recording written by ingest's Recorder is served
to a WebSocket client that subscribes like the gateway does."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

import bybitsim
from bybitsim.options import SimOptions
from bybitsim.replay import ReplayServer, load_tracks
from ingest.recorder import Recorder
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
KEY, SECRET = "replay-key", "replay-secret"
T0 = 1_700_000_000_000_000_000
TRADE, BOOK, OTHER = "publicTrade.BTCUSDT", "orderbook.50.BTCUSDT", "tickers.ETHUSDT"


def push(topic: str, i: int) -> bytes:
    return b'{"topic":"%s","type":"snapshot","ts":%d,"data":[{"i":%d,"s":"caf\xc3\xa9"}]}' % (topic.encode(), i, i)


def write_recording(directory: Path, items) -> None:
    """items: (recv_ns, endpoint, conn, raw) through the real recorder."""
    rec = Recorder(directory, 64 << 20, 3600, 1 << 30, 64 << 20)
    rec.start()
    for recv_ns, endpoint, conn, raw in items:
        rec.record(recv_ns, endpoint, conn, 1, raw)
    rec.close()


@contextmanager
def replaying(paths, speed, wait_s=5.0):
    tracks, counts = load_tracks(paths)
    server = ReplayServer(SimOptions(port=0, api_key=KEY, api_secret=SECRET), tracks, speed, wait_s, counts)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def main():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def state(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/__sim/state", timeout=5).json()


class Raw:
    """A client that keeps every frame as the bytes received, with its arrival time."""

    def __init__(self, url: str):
        self.ws = connect(url, open_timeout=5, close_timeout=1, compression=None).__enter__()

    def send(self, obj: dict) -> None:
        self.ws.send(json.dumps(obj))

    def take(self, n_data: int, timeout: float = 10.0) -> tuple[list, list]:
        """(data frames as (arrival, bytes), control replies) until ``n_data`` data frames came."""
        data, control = [], []
        deadline = time.monotonic() + timeout
        while len(data) < n_data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(data)} of {n_data} data frames before the deadline")
            raw = self.ws.recv(timeout=left, decode=False)
            (data if b'"topic"' in raw else control).append((time.monotonic(), raw))
        return data, control

    def close(self) -> None:
        self.ws.close()


def test_pushes_come_byte_for_byte_in_recorded_order_and_recorded_replies_do_not(tmp_path):
    items = [(T0, "linear", "linear-1", b'{"success":true,"ret_msg":"","conn_id":"x","req_id":"recorded-ack","op":"subscribe"}')]
    for i in range(30):
        items.append((T0 + (i + 1) * 1_000_000, "linear", "linear-1", push((TRADE, BOOK)[i % 3 == 0], i)))
        if i == 10:
            items.append((T0 + (i + 1) * 1_000_000 + 1, "linear", "linear-1",
                          b'{"success":true,"ret_msg":"pong","conn_id":"x","req_id":"recorded-pong","op":"ping"}'))
    items.append((T0 + 5, "spot", "spot-1", push("publicTrade.ETHUSDT", 99)))     # nobody subscribes: waits
    items.append((T0 + 6, "elsewhere", "elsewhere-1", push("x.y", 1)))             # not served: counted
    write_recording(tmp_path, items)
    expected = [raw for _, ep, _, raw in sorted(items) if ep == "linear" and b'"topic"' in raw]

    with replaying([tmp_path], speed=None) as server:
        c = Raw(f"ws://127.0.0.1:{server.port}/v5/public/linear")
        try:
            c.send({"req_id": "live-1", "op": "subscribe", "args": [TRADE, BOOK]})
            data, control = c.take(len(expected))
        finally:
            c.close()
        assert [raw for _, raw in data] == expected
        replies = b"".join(raw for _, raw in control)
        assert b"live-1" in replies and b"recorded" not in replies
        st = state(server.port)["replay"]
        wait_for(lambda: state(server.port)["replay"]["done"] == 1, 10, message="linear track done")
        st = state(server.port)["replay"]
        assert (st["tracks"], st["done"], st["waiting"], st["sent"], st["skipped"]) == (2, 1, 1, 30, 0)
        assert st["recorded"] == {"records": 34, "data": 31, "control": 2, "unserved": 1}


def test_a_track_waits_for_all_its_topics_then_skips_what_nobody_holds(tmp_path):
    items = [(T0 + i * 1_000_000, "linear", "linear-1", push((TRADE, OTHER)[i % 2], i)) for i in range(10)]
    write_recording(tmp_path, items)
    with replaying([tmp_path], speed=None, wait_s=0.5) as server:
        c = Raw(f"ws://127.0.0.1:{server.port}/v5/public/linear")
        try:
            c.send({"req_id": "a", "op": "subscribe", "args": [TRADE]})
            started = time.monotonic()
            data, _ = c.take(5)
        finally:
            c.close()
        # it waited for tickers.ETHUSDT for wait_s, then played: the trades came, the tickers were skipped
        assert data[0][0] - started >= 0.4
        assert [raw for _, raw in data] == [raw for _, _, _, raw in items if TRADE.encode() in raw]
        wait_for(lambda: state(server.port)["replay"]["done"] == 1, 10, message="track done")
        st = state(server.port)["replay"]
        assert (st["sent"], st["skipped"]) == (5, 5)


@pytest.mark.parametrize("speed", [1.0, 4.0])
def test_relative_timing_is_kept_at_the_given_speed(tmp_path, speed):
    gap_ns = 300_000_000
    items = [(T0 + i * gap_ns, "inverse", "inverse-1", push("publicTrade.BTCUSD", i)) for i in range(5)]
    write_recording(tmp_path, items)
    with replaying([tmp_path], speed=speed) as server:
        c = Raw(f"ws://127.0.0.1:{server.port}/v5/public/inverse")
        try:
            c.send({"req_id": "a", "op": "subscribe", "args": ["publicTrade.BTCUSD"]})
            data, _ = c.take(5)
        finally:
            c.close()
    gaps = [b[0] - a[0] for a, b in zip(data, data[1:])]
    assert [raw for _, raw in data] == [raw for *_, raw in items]
    assert all(g >= gap_ns / 1e9 / speed - 0.03 for g in gaps), gaps


def test_private_pushes_go_to_the_authenticated_socket_that_subscribed(tmp_path):
    wallet = b'{"id":"w1","topic":"wallet","creationTime":1700000000000,"data":[{"accountType":"UNIFIED","coin":[]}]}'
    order = b'{"id":"o1","topic":"order","creationTime":1700000000001,"data":[{"orderId":"1","category":"linear"}]}'
    write_recording(tmp_path, [(T0, "private", "private-1", b'{"success":true,"op":"auth","conn_id":"r"}'),
                               (T0 + 1, "private", "private-1", wallet), (T0 + 2, "private", "private-1", order)])
    with replaying([tmp_path], speed=None) as server:
        c = Raw(f"ws://127.0.0.1:{server.port}/v5/private")
        try:
            expires = int(time.time() * 1000) + 5000
            c.send({"req_id": "auth-1", "op": "auth", "args": [KEY, expires, bybitsim.sign(SECRET, expires)]})
            c.send({"req_id": "sub-1", "op": "subscribe", "args": ["wallet", "order"]})
            data, control = c.take(2)
        finally:
            c.close()
    assert [raw for _, raw in data] == [wallet, order]
    assert any(b'"auth-1"' in raw and b'"success":true' in raw for _, raw in control)


def test_the_command_serves_a_recording_and_refuses_bad_input(tmp_path):
    rec_dir = tmp_path / "rec"
    items = [(T0 + i, "spot", "spot-1", push("publicTrade.BTCUSDT", i)) for i in range(20)]
    write_recording(rec_dir, items)
    env = {**os.environ, "GW_ENV_FILE": "", "SIM_API_KEY": KEY, "SIM_API_SECRET": SECRET}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "bybitsim.replay", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30)

    out = run(str(tmp_path / "missing"))
    assert out.returncode == 2 and "no such file or directory" in out.stderr
    out = run(str(rec_dir), "--speed", "0")
    assert out.returncode == 2 and "--speed" in out.stderr
    junk = tmp_path / "junk.rec.gz"
    junk.write_bytes(b"junk")
    out = run(str(junk))
    assert out.returncode == 2 and "junk.rec.gz" in out.stderr

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bybitsim.replay", str(rec_dir), "--port", str(port),
                             "--speed", "max"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: state(port), 20, interval=0.1, message="replay listening")
        c = Raw(f"ws://127.0.0.1:{port}/v5/public/spot")
        try:
            c.send({"req_id": "a", "op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            data, _ = c.take(20)
        finally:
            c.close()
        assert [raw for _, raw in data] == [raw for *_, raw in items]
        wait_for(lambda: state(port)["replay"]["finished"], 10, message="replay finished")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
