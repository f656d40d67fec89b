"""The API against the real gateway (supervisord: simulator, ingest, publisher,
persister, api): requester counting reaches the simulator, and /api/v1/status and
/metrics reflect a reconnect."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import gateway, gateway_stores  # noqa: F401  (fixtures)
from tests.support import wait_for

pytestmark = pytest.mark.timeout(180)


def _status(gateway) -> dict:
    resp = gateway.api("GET", "/api/v1/status")
    assert resp.status_code == 200, resp.text
    return resp.json()


def _topic(status: dict, topic: str) -> dict:
    return next((t for t in status["subscriptions"] if t["topic"] == topic), {})


def test_two_requesters_keep_the_topic_until_both_let_go(gateway):
    body = {"channel": "tickers", "category": "linear", "symbol": "ETHUSDT"}
    a = gateway.api("POST", "/api/v1/subscriptions", json=body | {"requested_by": "svc-a"})
    b = gateway.api("POST", "/api/v1/subscriptions", json=body | {"requested_by": "svc-b"})
    assert a.status_code == 201 and b.status_code == 200, (a.text, b.text)
    assert a.json()["ingest"] == "accepted" and b.json()["requesters"] == ["svc-a", "svc-b"]
    sid = a.json()["id"]
    assert b.json()["id"] == sid
    wait_for(lambda: "tickers.ETHUSDT" in gateway.sim_subscribed("linear"), 20, message="simulator subscribed")
    wait_for(lambda: gateway.api("GET", f"/api/v1/subscriptions/{sid}").json()["status"] == "active", 20,
             message="subscription active")
    wait_for(lambda: _topic(_status(gateway), "tickers.ETHUSDT").get("freshness") == "fresh", 20,
             message="ticker judged fresh")

    first = gateway.api("DELETE", f"/api/v1/subscriptions/{sid}", params={"requested_by": "svc-a"})
    assert first.status_code == 200 and first.json()["requesters"] == ["svc-b"]
    assert first.json()["status"] == "active" and first.json()["ingest"] == "not_needed"
    # svc-b still holds it: still subscribed, and events keep arriving after the release.
    released_at = gateway.sim_state()["frames_sent"]
    wait_for(lambda: gateway.sim_state()["frames_sent"] != released_at, 20, message="frames still sent")
    assert "tickers.ETHUSDT" in gateway.sim_subscribed("linear")

    last = gateway.api("DELETE", f"/api/v1/subscriptions/{sid}", params={"requested_by": "svc-b"})
    assert last.status_code == 200 and last.json()["status"] == "removed" and last.json()["ingest"] == "accepted"
    wait_for(lambda: "tickers.ETHUSDT" not in gateway.sim_subscribed("linear"), 20, message="unsubscribed")
    assert gateway.api("DELETE", f"/api/v1/subscriptions/{sid}").status_code == 404


def _linear(status: dict) -> dict:
    return next((c for c in status["connections"] if c.get("endpoint") == "linear"), {})


def test_status_and_metrics_reflect_a_reconnect(gateway):
    body = {"channel": "trades", "category": "linear", "symbol": "SOLUSDT", "requested_by": "svc-r"}
    sid = gateway.api("POST", "/api/v1/subscriptions", json=body).json()["id"]
    try:
        wait_for(lambda: _linear(_status(gateway)).get("state") == "ready", 20, message="linear connection ready")
        before = _linear(_status(gateway))["reconnects"]
        status = _status(gateway)
        assert {p["process"]: p["reporting"] for p in status["processes"]} == \
            {"ingest": True, "publisher": True, "persister": True}
        assert status["database"]["reachable"] and status["broker"]["reachable"]

        gateway.sim("POST", "/__sim/drop", json={"endpoint": "linear"})
        wait_for(lambda: (_linear(_status(gateway)).get("reconnects") or 0) > before
                 and _linear(_status(gateway)).get("state") == "ready", 30, message="reconnected and reported")
        assert _linear(_status(gateway))["last_error"]
        wait_for(lambda: "publicTrade.SOLUSDT" in gateway.sim_subscribed("linear"), 20, message="resubscribed")

        def reconnects_metric() -> float:
            text = gateway.api("GET", "/metrics").text
            lines = [line for line in text.splitlines()
                     if line.startswith('wsgw_ingest_reconnects_total{endpoint="linear"}')]
            return float(lines[0].split()[-1]) if lines else 0.0

        wait_for(lambda: reconnects_metric() >= 1, 15, message="reconnect counted in /metrics")
        metrics = gateway.api("GET", "/metrics").text
        assert "wsgw_api_requests_total" in metrics
    finally:
        gateway.api("DELETE", f"/api/v1/subscriptions/{sid}", params={"requested_by": "svc-r"})
