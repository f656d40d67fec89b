"""ingest as a process whose Bybit REST API answers HTTP 403 (an IP ban): the reconciliation's
REST client makes no further call for the ban's 10 minutes, and the ban shows in ingest's
status file, in GET /api/v1/status, in a warning and in a system event."""
from __future__ import annotations

import time

import pytest

from tests.reconcile.test_rest_client import BanningServer
from tests.support import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def banning_server():
    server = BanningServer()
    yield server
    server.close()


def test_a_403_stops_rest_calls_and_is_reported(start_ingest, banning_server, rec_db, short_tmp):
    started = time.time()
    ingest = start_ingest(BYBIT_REST_URL=banning_server.url)

    def banned():
        rest = ingest.status().get("reconciliation", {}).get("rest", {})
        return rest if rest.get("bans") else None
    rest = wait_for(banned, 20, message="ingest's status to show the ban")
    assert started + 595 < rest["banned_until"] < time.time() + 601
    event = wait_for(lambda: ingest.publisher.of_kind("system", "rest_banned"), 10, message="rest_banned event")
    body = event[0].json()
    assert body["status"] == 403 and body["paused_s"] == 600.0 and body["until"] == rest["banned_until"]
    assert '"event":"rest_banned"' in ingest.log() and '"level":"warning"' in ingest.log()
    # the reconciliation fails and is retried (1 s, 2 s, 4 s ...): every retry fails at once, saying until when
    failed = wait_for(lambda: len(ingest.publisher.of_kind("system", "reconciliation_failed")) >= 3 and
                      ingest.publisher.of_kind("system", "reconciliation_failed"), 30,
                      message="three reconciliation attempts")
    assert all("paused until" in f.json()["error"] for f in failed)
    ours = [a for a in banning_server.agents if a == "ws-gateway"]
    assert len(ours) == 1, banning_server.paths          # the REST client asked once, then stopped
    wait_for(lambda: ingest.status()["reconciliation"]["rest"].get("refused_banned", 0) >= 2, 5,
             message="the status file to count the calls refused during the ban")

    # GET /api/v1/status reads ingest's status file: banned, until when, overall degraded
    from api import create_app
    from api.db import close_pools
    from tests.api.conftest import make_settings

    app = create_app({"SETTINGS": make_settings(rec_db, short_tmp), "TESTING": True})
    try:
        report = app.test_client().get("/api/v1/status").get_json()
    finally:
        close_pools()
    assert report["rest"] == {"banned": True, "until": rest["banned_until"], "bans": 1}
    assert report["overall"] == "degraded"
