"""Recordings make test fixtures: a real gateway records a session against the simulator
(public trades, books and tickers, private account pushes); the recording is replayed through
`python -m bybitsim.replay` into a fresh gateway (new database and vhost), and the bus carries
the same events: the same message_ids, in the same order per routing key, with the same data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import pika
import pytest

from bybitsim.replay import load_tracks, read_recording
from common.classify import queue_name
from tests.e2e.conftest import start_gateway, stop_gateway
from tests.support import free_port, wait_for
from tests.support.gateway import E2E_KEY, E2E_SECRET, ROOT
from tests.support.stores import AMQP_BASE, throwaway_database, throwaway_vhost

pytestmark = pytest.mark.timeout(300)
SUBSCRIPTIONS = [
    {"channel": "trades", "category": "linear", "symbol": "BTCUSDT"},
    {"channel": "orderbook", "category": "linear", "symbol": "BTCUSDT", "depth": 50},
    {"channel": "tickers", "category": "linear", "symbol": "ETHUSDT"},
    {"channel": "trades", "category": "spot", "symbol": "ETHUSDT"},
    {"channel": "order"}, {"channel": "execution"}, {"channel": "position"}, {"channel": "wallet"},
]
PUBLIC_TOPICS = ["linear:publicTrade.BTCUSDT", "linear:orderbook.50.BTCUSDT", "linear:tickers.ETHUSDT",
                 "spot:publicTrade.ETHUSDT"]
PRIVATE_TOPICS = ["private:order", "private:execution", "private:position", "private:wallet"]
QUEUES = [queue_name(c) for c in ("trades", "tickers", "orderbook", "order_status", "executions", "positions",
                                  "balances")]


def subscribe_all(gw) -> None:
    ids = []
    for body in SUBSCRIPTIONS:
        resp = gw.api("POST", "/api/v1/subscriptions", json={**body, "requested_by": "e2e-replay"})
        assert resp.status_code in (200, 201), resp.text
        ids.append(resp.json()["id"])
    wait_for(lambda: all(gw.subscription(i)["status"] == "active" for i in ids), 30, interval=0.2,
             message="every subscription active")


def drain(amqp_url: str, into: dict[str, list]) -> dict[str, list]:
    """Take every message from the event queues; keep what came from Bybit's pushes, per routing key."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        for queue in QUEUES:
            while True:
                method, props, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                event = json.loads(body)
                if event["source"] == "bybit":
                    into.setdefault(method.routing_key, []).append(
                        (props.message_id, event["type"], event["exchange_ts"], event["data"]))
    finally:
        conn.close()
    return into


def settled(read, for_s: float, timeout: float, message: str):
    """Wait until ``read()`` returns the same value for ``for_s`` seconds; returns it."""
    last = [object(), time.monotonic()]

    def same():
        value = read()
        if value != last[0]:
            last[:] = [value, time.monotonic()]
            return False
        return time.monotonic() - last[1] >= for_s

    wait_for(same, timeout, interval=0.2, message=message)
    return last[0]


def ingest_status(gw) -> dict:
    return json.loads((gw.run_dir / "status" / "ingest.json").read_text())


def test_a_recorded_session_replays_into_a_fresh_gateway_as_the_same_events(xprocess, tmp_path):
    rec_dir = tmp_path / "recording"
    # -- record: a real gateway against the simulator ---------------------------------------------
    with throwaway_database() as pg_url, throwaway_vhost() as vhost:
        amqp_url = f"{AMQP_BASE}/{vhost}"
        gw, run_dir = start_gateway(xprocess, f"record-{uuid.uuid4().hex[:8]}", pg_url, amqp_url,
                                    GW_RECORD_DIR=rec_dir, GW_RECORD_ROTATE_MB="0.01", SIM_ACCOUNT_RATE="5")
        try:
            gw.wait_ready()
            subscribe_all(gw)

            def enough():
                sent = gw.sim_state()["frames_sent"]
                return all(sent.get(t, 0) >= 40 for t in PUBLIC_TOPICS) and \
                    all(sent.get(t, 0) >= 3 for t in PRIVATE_TOPICS)

            wait_for(enough, 60, interval=0.3, message="a session's worth of pushes")
            gw.sim("POST", "/__sim/rate", json={"rate": 0, "account_rate": 0})   # the session ends
            settled(lambda: gw.sim_state()["frames_sent"], 1.0, 30, "simulator quiet")
            status = settled(lambda: ingest_status(gw)["recording"]["records"], 1.0, 30, "recording complete")
            recording = ingest_status(gw)["recording"]
            assert recording["enabled"] and recording["dropped"] == 0 and status > 0, recording
        finally:
            stop_gateway(xprocess, gw, run_dir)
        recorded = drain(amqp_url, {})

    files = sorted(rec_dir.glob("*.rec.gz"))
    assert len(files) >= 2, files            # rotated at 10 KiB of ~30 KiB: the replay reads across files
    tracks, counts = load_tracks([rec_dir])
    assert {t.endpoint for t in tracks} == {"linear", "spot", "private"}
    replies = [r.raw for r in read_recording([rec_dir]) if b'"topic"' not in r.raw]
    assert any(b'"op":"auth"' in raw for raw in replies) and any(b'"op":"subscribe"' in raw for raw in replies)
    assert any(b'"op":"ping"' in raw or b'"pong"' in raw for raw in replies)
    public_pushes = sum(len(t.frames) for t in tracks if t.endpoint != "private")
    market = sum(len(v) for k, v in recorded.items() if k.split(".")[0] in ("trades", "tickers", "orderbook"))
    assert market == public_pushes          # every recorded public push was one event on the bus
    assert {k.split(".")[0] for k in recorded} >= {"trades", "tickers", "orderbook", "order_status", "executions",
                                                   "positions", "balances"}, sorted(recorded)

    # -- replay: the recording through the simulator into a fresh gateway --------------------------
    port = free_port()
    env = {**os.environ, "GW_ENV_FILE": "", "SIM_API_KEY": E2E_KEY,
           "SIM_API_SECRET": E2E_SECRET, "GW_LOG_LEVEL": "info"}
    replay_log = open(tmp_path / "replay.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "bybitsim.replay", str(rec_dir), "--port", str(port),
                             "--speed", "10"], cwd=ROOT, env=env, stdout=replay_log, stderr=subprocess.STDOUT)
    try:
        sim_state = lambda: httpx.get(f"http://127.0.0.1:{port}/__sim/state", timeout=5).json()  # noqa: E731
        wait_for(sim_state, 20, interval=0.2, message="replay listening")
        with throwaway_database() as pg_url, throwaway_vhost() as vhost:
            amqp_url = f"{AMQP_BASE}/{vhost}"
            gw, run_dir = start_gateway(xprocess, f"replay-{uuid.uuid4().hex[:8]}", pg_url, amqp_url,
                                        GW_SIM_AUTOSTART="false", SIM_PORT=str(port))
            try:
                gw.wait_ready(("publisher", "persister", "ingest", "api"))
                subscribe_all(gw)
                wait_for(lambda: sim_state()["replay"]["finished"], 120, interval=0.3, message="replay finished")
                replay = sim_state()["replay"]
                assert replay["skipped"] == 0 and replay["sent"] == counts["data"], replay
                replayed: dict[str, list] = {}

                def all_there():
                    drain(amqp_url, replayed)
                    return sum(map(len, replayed.values())) >= sum(map(len, recorded.values()))

                wait_for(all_there, 60, interval=0.5, message="replayed events on the bus")
            finally:
                stop_gateway(xprocess, gw, run_dir)
            drain(amqp_url, replayed)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        replay_log.close()

    assert sorted(replayed) == sorted(recorded)
    for key in recorded:
        assert [e[0] for e in replayed[key]] == [e[0] for e in recorded[key]], key    # message_ids, in order
        assert replayed[key] == recorded[key], key
