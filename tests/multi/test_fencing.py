"""PostgreSQL out of reach (a TCP proxy that stops forwarding: the half-open case, where no
error ever comes back): ingest keeps publishing what it owns until its lease would expire, then
stops (not one frame received after the expiry is handed off); once the database answers again
it takes its units back under a new epoch and says so (system.owner_changed, reason reacquired)."""
from __future__ import annotations

import socket
import threading
import time
import uuid

import psycopg2
import pytest

import bybitsim
from tests.ingest.harness import IngestProcess
from tests.support import wait_for
from tests.support.stores import throwaway_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
TTL_S = 6.0


class Proxy:
    """127.0.0.1:<port> -> PostgreSQL. ``blackhole()``: bytes are accepted and never forwarded
    (connections stay open, new ones are accepted and hang); ``restore()``: the held connections
    are reset and new ones are forwarded again."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5432):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.holing = threading.Event()
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.socks.append(client)
            if self.holing.is_set():
                continue                      # accepted, never answered
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.socks.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.holing.is_set():
                    time.sleep(0.05)          # held: the peer sees silence, not an error
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def blackhole(self) -> None:
        self.holing.set()

    def restore(self) -> None:
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()                     # reset: whoever waits on it gets an error now
            except OSError:
                pass
        self.holing.clear()

    def close(self) -> None:
        self.listener.close()
        self.restore()


def via(url: str, port: int) -> str:
    return url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")


def test_database_out_of_reach_fences_at_expiry_and_takes_back_after(short_tmp):
    with throwaway_database() as pg_url, bybitsim.run_in_thread(port=0, rate=20) as sim:
        conn = psycopg2.connect(pg_url)
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("INSERT INTO subscriptions (channel, endpoint, category, symbol, topic, requesters) VALUES "
                    "('trades', 'linear', 'linear', 'BTCUSDT', 'publicTrade.BTCUSDT', ARRAY['t'])")
        proxy = Proxy()
        ingest = IngestProcess(short_tmp, sim, via(pg_url, proxy.port), GW_INSTANCE_ID=f"solo-{uuid.uuid4().hex[:6]}",
                               GW_LEASE_TTL_S=str(TTL_S), GW_LEASE_RENEW_S="1")
        try:
            wait_for(lambda: len(ingest.publisher.frames("publicTrade.BTCUSDT")) > 20, 30,
                     message="trades flowing")
            first = ingest.publisher.frames("publicTrade.BTCUSDT")[-1].extra
            assert first["oi"].startswith("solo-") and first["oe"] >= 1

            proxy.blackhole()
            t_cut = time.time()
            cur.execute("SELECT extract(epoch FROM expires_at)::float8, epoch FROM gateway_leases "
                        "WHERE owner IS NOT NULL AND unit LIKE 'shard-%%'")
            rows = cur.fetchall()
            assert len(rows) == 16
            expires_at = max(r[0] for r in rows)        # the last renewal that got through, + TTL
            wait_for(lambda: ingest.status()["instance"]["owned"] == {}, TTL_S + 10, interval=0.1,
                     message="units given up")
            stopped = time.time()
            time.sleep(2)         # anything still handed off would show now (a window, not a condition)
            frames = ingest.publisher.frames("publicTrade.BTCUSDT")
            during = [f for f in frames if f.recv_ns / 1e9 > t_cut]
            late = [f for f in frames if f.recv_ns / 1e9 > expires_at]
            assert during, "kept publishing what it owns while the lease was still valid"
            assert not late, f"{len(late)} frames received after the lease expired were handed off"
            assert stopped <= expires_at + 1.0
            status = ingest.status()["instance"]
            assert status["database"] is False and status["lost"] >= 16
            print(f"cut at {t_cut:.2f}, lease expiring at {expires_at:.2f}: {len(during)} frames in between, "
                  f"none after; units given up {stopped - t_cut:.2f} s after the cut")

            proxy.restore()
            t_back = time.time()
            wait_for(lambda: any(f.recv_ns / 1e9 > t_back for f in ingest.publisher.frames("publicTrade.BTCUSDT")),
                     30, interval=0.2, message="publishing again once the database answers")
            again = ingest.publisher.frames("publicTrade.BTCUSDT")[-1].extra
            assert again["oi"] == first["oi"] and again["oe"] > first["oe"]
            notes = [e.json() for e in ingest.publisher.of_kind("system", "owner_changed")]
            back = [n for n in notes if n["reason"] == "reacquired" and n["gap_s"] and n["gap_s"] >= TTL_S - 2]
            assert len({n["unit"] for n in back}) >= 16, notes[-3:]
        finally:
            ingest.close()
            proxy.close()
            conn.close()
