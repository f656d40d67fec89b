"""Books and tickers that heal, through the whole gateway (simulator -> ingest -> publisher ->
RabbitMQ): a book delta dropped in the publisher (too old after the publisher was held still
for a second) is followed on the bus by a fresh snapshot of each affected topic; a publisher
killed with -9 while linear tickers stream has complete tickers on the bus again within 5 s
of being back, made from ingest's copy of each ticker (no new subscription at the exchange);
/api/v1/status judges freshness on what reaches RabbitMQ."""
from __future__ import annotations

import os
import signal
import threading
import time

import orjson
import pika
import pytest

from common.classify import EXCHANGE
from tests.e2e.conftest import start_gateway, stop_gateway
from tests.support import wait_for
from tests.support.stores import AMQP_BASE, throwaway_database, throwaway_vhost

pytestmark = [pytest.mark.timeout(240), pytest.mark.e2e]
BOOKS = [{"channel": "orderbook", "category": "linear", "symbol": s, "depth": 50} for s in ("BTCUSDT", "ETHUSDT")]
TICKERS = [{"channel": "tickers", "category": "linear", "symbol": s} for s in ("BTCUSDT", "SOLUSDT")]


class Collector(threading.Thread):
    """Every event published under ``keys`` from now on: (routing key, body, time taken)."""

    def __init__(self, amqp_url: str, keys: list[str]):
        super().__init__(daemon=True)
        self.url, self.keys = amqp_url, keys
        self.events: list[tuple[str, dict, float]] = []
        self.ready, self.halt = threading.Event(), threading.Event()

    def run(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for key in self.keys:
            ch.queue_bind(q, EXCHANGE, key)
        self.ready.set()
        try:
            for method, _props, body in ch.consume(q, auto_ack=True, inactivity_timeout=0.1):
                if self.halt.is_set():
                    break
                if method is not None:
                    self.events.append((method.routing_key, orjson.loads(body), time.time()))
        finally:
            conn.close()

    def of(self, prefix: str, since: float = 0.0) -> list[dict]:
        return [b for k, b, t in list(self.events) if k.startswith(prefix) and t >= since]

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


@pytest.fixture(scope="module")
def gateway(xprocess):
    import uuid

    with throwaway_database() as pg_url, throwaway_vhost() as vhost:
        gw, run_dir = start_gateway(xprocess, f"gateway-heal-{uuid.uuid4().hex[:8]}", pg_url, f"{AMQP_BASE}/{vhost}",
                                    SIM_RATE="20")
        try:
            gw.wait_ready()
            ids = []
            for req in BOOKS + TICKERS:
                resp = gw.api("POST", "/api/v1/subscriptions", json={**req, "requested_by": "e2e-heal"})
                assert resp.status_code in (200, 201), resp.text
                ids.append(resp.json()["id"])
            wait_for(lambda: all(gw.subscription(i).get("status") == "active" for i in ids), 30,
                     message="book and ticker subscriptions active")
            yield gw
        finally:
            stop_gateway(xprocess, gw, run_dir)


def publisher_status(gw) -> dict:
    try:
        return orjson.loads((gw.run_dir / "status" / "publisher.json").read_bytes())
    except (OSError, ValueError):
        return {}


def test_book_deltas_dropped_in_the_publisher_are_healed_by_a_snapshot(gateway):
    col = Collector(gateway.amqp_url, ["orderbook.#", "system.#"])
    col.start()
    col.ready.wait(10)
    try:
        wait_for(lambda: len(col.of("orderbook.")) >= 20, 20, message="book events flowing")
        pid = gateway.pid("publisher")
        os.kill(pid, signal.SIGSTOP)        # frames wait in the sockets and grow old
        try:
            time.sleep(1.2)                  # held still on purpose: past the 500 ms bound for books
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.time()
        wait_for(lambda: (publisher_status(gateway).get("dropped_by_reason") or {}).get("too_old", {}).get("orderbook"),
                 15, message="book events dropped as too old in the publisher")
        notice = wait_for(lambda: next((e for e in col.of("system.events_dropped")
                                        if e["data"].get("reason") == "too_old"), None), 15,
                          message="system.events_dropped (too_old)")
        dropped_keys = {k for k in notice["data"]["dropped_streams"] if k.startswith("orderbook.")}
        assert dropped_keys and dropped_keys <= {"orderbook.linear.BTCUSDT", "orderbook.linear.ETHUSDT"}
        for key, r in notice["data"]["dropped_streams"].items():
            assert r["count"] >= 1 and r["to_seq"] >= r["from_seq"]
        for req in BOOKS:
            topic, key = f"orderbook.50.{req['symbol']}", f"orderbook.linear.{req['symbol']}"
            if key not in dropped_keys:
                continue
            resync = wait_for(lambda: next((e for e in col.of("system.book_resync")
                                            if e["data"]["topic"] == topic
                                            and "dropped in the publisher" in e["data"]["reason"]), None),
                              15, message=f"system.book_resync for {topic}")
            assert "too_old" in resync["data"]["reason"]
            snap = wait_for(lambda: next((e for e in col.of("orderbook.linear.", since=resumed)
                                          if e["topic"] == topic and e["type"] == "snapshot"), None),
                            15, message=f"a fresh snapshot of {topic} after the drop")
            # consumers see the hole: the snapshot comes after the numbers dropped
            assert snap["stream_seq"] > notice["data"]["dropped_streams"][key]["to_seq"]
    finally:
        col.stop()


def test_publisher_kill9_tickers_flow_again_and_freshness_follows_rabbitmq(gateway):
    keys = [f"linear:tickers.{r['symbol']}" for r in TICKERS]
    col = Collector(gateway.amqp_url, ["tickers.#", "system.#"])
    col.start()
    col.ready.wait(10)
    try:
        wait_for(lambda: {b["symbol"] for b in col.of("tickers.linear.")} >= {r["symbol"] for r in TICKERS}, 20,
                 message="tickers flowing")
        full = set(col.of("tickers.linear.")[0]["data"])       # a complete linear ticker's fields
        subscribed = {k: v for k, v in gateway.sim_state()["subscribes"].items() if k in keys}
        assert set(subscribed) == set(keys)
        old = gateway.pid("publisher")
        killed = time.time()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: publisher_status(gateway).get("pid") not in (None, old), 30, interval=0.1,
                 message="the publisher back (supervisord) and reporting")
        back = time.time()
        for r in TICKERS:
            ev = wait_for(lambda: next((b for b in col.of(f"tickers.linear.{r['symbol']}", since=back)
                                        if set(b["data"]) >= full), None), 5, interval=0.05,
                          message=f"a complete {r['symbol']} ticker on the bus within 5 s of the restart")
            assert ev["stream_seq"] >= 1
        # Each ticker announced as resynced: asked for by the restarted publisher (its merged tickers
        # died with it), or made by ingest for frames its hand-off dropped while the publisher was away.
        wanted = {f"tickers.{r['symbol']}" for r in TICKERS}
        wait_for(lambda: {e["data"]["topic"] for e in col.of("system.ticker_resync", since=killed)} >= wanted, 5,
                 message="system.ticker_resync for every ticker")
        # healed from ingest's copy of each ticker: nothing was subscribed again at the exchange
        reasons = [e["data"]["reason"] for e in col.of("system.ticker_resync", since=killed)]
        assert all(r.startswith(("dropped in the publisher: ", "dropped in ingest's hand-off: "))
                   and r.endswith("; snapshot from ingest's copy of the ticker") for r in reasons), reasons
        assert {k: v for k, v in gateway.sim_state()["subscribes"].items() if k in keys} == subscribed

        def freshness() -> dict[str, str]:
            report = gateway.api("GET", "/api/v1/status").json()
            return {f"{s['endpoint']}:{s['topic']}": s["freshness"] for s in report["subscriptions"]}

        wait_for(lambda: all(freshness()[k] == "fresh" for k in keys), 15, message="tickers fresh again")
        # The publisher stopped: ingest still reads every ticker, but nothing reaches RabbitMQ.
        gateway.ctl("stop", "publisher", check=True)
        try:
            wait_for(lambda: all(freshness()[k] == "stale" for k in keys), 40, interval=0.5,
                     message="tickers stale while nothing reaches RabbitMQ")
            ingest = orjson.loads((gateway.run_dir / "status" / "ingest.json").read_bytes())
            assert all(time.time() - ingest["topics"][k]["last_event_ms"] / 1000 < 5 for k in keys)   # still read
        finally:
            gateway.ctl("start", "publisher", check=True)
        wait_for(lambda: all(freshness()[k] == "fresh" for k in keys), 30, message="fresh once delivered again")
    finally:
        col.stop()
