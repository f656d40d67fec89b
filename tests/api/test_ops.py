"""/health, /metrics, /api/v1/status, /openapi.json."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone

import pika
import pytest

from api import broker


def test_health_answers_without_dependencies(app_factory):
    client = app_factory(DATABASE_URL="postgresql://x:y@127.0.0.1:1/none").test_client()
    resp = client.get("/health")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}


def test_metrics_text_format_counts_requests(client):
    client.get("/health")
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    text = resp.get_data(as_text=True)
    assert 'wsgw_api_requests_total{method="GET",route="/health",status="200"}' in text
    assert "wsgw_api_request_seconds_bucket" in text


def test_openapi_document_matches_committed_copy(client):
    """If this fails, regenerate: .venv/bin/python -m api.spec (writes docs/openapi.json)."""
    from api.spec import COMMITTED, render

    served = client.get("/openapi.json")
    assert served.status_code == 200
    assert served.get_json()["paths"].keys() >= {"/api/v1/subscriptions", "/api/v1/subscriptions/{id}",
                                                "/api/v1/balances", "/api/v1/orders", "/api/v1/status",
                                                "/health", "/metrics"}
    assert COMMITTED.read_text() == render(), "docs/openapi.json is stale: run .venv/bin/python -m api.spec"
    assert json.loads(COMMITTED.read_text()) == served.get_json()


def test_docs_page_works_offline(client):
    page = client.get("/docs/swagger")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "http://" not in html.replace("http://localhost", "") and "https://" not in html
    assert client.get("/docs/swagger/js/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/openapi.json").get_json() == client.get("/openapi.json").get_json()


def _write_status(run_dir, name, data, age_s=0.0):
    path = run_dir / "status" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    then = time.time() - age_s
    os.utime(path, (then, then))


@pytest.fixture
def status_client(app_factory, amqp_url, fake_ingest):
    broker.clear_cache()
    yield app_factory(RABBITMQ_URL=amqp_url).test_client()
    broker.clear_cache()


def test_status_reports_processes_connections_topics_and_dependencies(status_client, clean_db, short_tmp, amqp_url):
    now = datetime.now(timezone.utc)
    _write_status(short_tmp, "ingest", {
        "process": "ingest",
        "connections": [{"id": "linear-1", "endpoint": "linear", "state": "open", "since": 1.0, "reconnects": 2,
                         "last_error": "closed by peer (1006 )"}],
        "handoff": {"publisher": {"sent": 10, "buffered": 3, "dropped": {"trades": 5}},
                    "persister": {"sent": 1, "buffered": 0, "dropped": {}}},
        "topics": {"linear:tickers.ETHUSDT": {"status": "active", "last_event_ms": int(time.time() * 1000)}},
    })
    _write_status(short_tmp, "publisher", {"buffered": 7, "dropped": {"orderbook": 1},
                                           "broker": {"state": "ready", "since": 1.0, "connects": 3, "last_error": ""}},
                  age_s=30)
    with clean_db.cursor() as cur:
        for channel, topic, depth, status, age in (
                ("orderbook", "orderbook.1.BTCUSDT", 1, "active", 2),      # fresh: repeats every 3 s
                ("orderbook", "orderbook.50.BTCUSDT", 50, "active", 120),  # stale
                ("trades", "publicTrade.BTCUSDT", None, "active", 600),    # quiet is normal
                ("tickers", "tickers.ETHUSDT", None, "active", 600),       # PG lags; ingest's file is fresh
                ("kline", "kline.1.BTCUSDT", None, "pending", None)):
            cur.execute("INSERT INTO subscriptions (channel, endpoint, category, symbol, depth, topic, status, "
                        "requesters, last_event_at) VALUES (%s, 'linear', 'linear', 'BTCUSDT', %s, %s, %s, "
                        "'{svc}', %s)", (channel, depth, topic, status,
                                         now - timedelta(seconds=age) if age is not None else None))
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.queue_delete("ws-gateway.balances")      # absent, whatever earlier tests declared here
        ch.queue_declare("ws-gateway.trades", durable=True)
        for _ in range(3):
            ch.basic_publish("", "ws-gateway.trades", b"x")
        resp = status_client.get("/api/v1/status")
    finally:
        conn.channel().queue_delete("ws-gateway.trades")
        conn.close()
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    procs = {p["process"]: p for p in body["processes"]}
    assert procs["ingest"]["reporting"] is True
    assert procs["ingest"]["buffered"] == {"publisher": 3, "persister": 0}
    assert procs["ingest"]["dropped"]["publisher"] == {"trades": 5}
    assert procs["publisher"]["reporting"] is False and procs["publisher"]["age_s"] >= 29
    assert procs["publisher"]["buffered"] == 7
    assert procs["persister"] == {"process": "persister", "reporting": False, "age_s": None,
                                  "buffered": None, "dropped": None}
    conns = {c["name"]: c for c in body["connections"]}
    assert conns["linear-1"]["state"] == "open" and conns["linear-1"]["reconnects"] == 2
    assert conns["linear-1"]["last_error"].startswith("closed by peer")
    assert conns["rabbitmq"]["reconnects"] == 2 and conns["rabbitmq"]["last_error"] is None
    fresh = {t["topic"]: t["freshness"] for t in body["subscriptions"]}
    assert fresh == {"orderbook.1.BTCUSDT": "fresh", "orderbook.50.BTCUSDT": "stale",
                     "publicTrade.BTCUSDT": "quiet", "tickers.ETHUSDT": "fresh", "kline.1.BTCUSDT": None}
    ages = {t["topic"]: t["last_event_age_s"] for t in body["subscriptions"]}
    assert ages["tickers.ETHUSDT"] < 5 and ages["kline.1.BTCUSDT"] is None
    assert body["database"] == {"reachable": True, "error": None}
    assert body["broker"]["reachable"] is True
    assert body["broker"]["queues"]["ws-gateway.trades"] == 3
    assert body["broker"]["queues"]["ws-gateway.balances"] is None
    assert body["overall"] == "degraded"


def test_status_with_everything_down(app_factory, short_tmp, fake_ingest):
    broker.clear_cache()
    client = app_factory(DATABASE_URL="postgresql://x:y@127.0.0.1:1/none",
                         RABBITMQ_URL="amqp://guest:guest@127.0.0.1:1/%2F").test_client()
    (short_tmp / "status").mkdir(exist_ok=True)
    (short_tmp / "status" / "ingest.json").write_text("{half a fi")
    started = time.monotonic()
    body = client.get("/api/v1/status").get_json()
    assert time.monotonic() - started < 5
    assert body["database"]["reachable"] is False and body["broker"]["reachable"] is False
    assert body["subscriptions"] == [] and body["overall"] == "degraded"
    assert {p["process"]: p["reporting"] for p in body["processes"]}["ingest"] is False
    broker.clear_cache()
