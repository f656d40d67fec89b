"""Pure status judgements: freshness per topic type, status files, counts."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone

import pytest

from api import status


@pytest.mark.parametrize("channel, endpoint, depth, age, expected", [
    ("orderbook", "linear", 1, 12.9, "fresh"),
    ("orderbook", "linear", 1, 13.1, "stale"),
    ("orderbook", "spot", 200, 14.0, "fresh"),
    ("orderbook", "spot", 200, 16.0, "stale"),
    ("tickers", "linear", None, 10.9, "fresh"),
    ("tickers", "linear", None, 11.5, "stale"),
    ("kline", "linear", None, 69.0, "fresh"),
    ("kline", "linear", None, 71.0, "stale"),
    ("trades", "linear", None, 59.0, "fresh"),
    ("trades", "linear", None, 3600.0, "quiet"),
    ("liquidation", "linear", None, 3600.0, "quiet"),
    ("order", "private", None, 86400.0, "quiet"),
    ("wallet", "private", None, 1.0, "fresh"),
    ("tickers", "linear", None, None, "none"),
])
def test_freshness(channel, endpoint, depth, age, expected):
    assert status.freshness(channel, endpoint, depth, age) == expected


def test_topic_status_prefers_the_newer_of_db_and_ingest():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = {"id": "x", "endpoint": "linear", "topic": "tickers.BTCUSDT", "channel": "tickers", "depth": None,
           "status": "active", "last_event_at": now - timedelta(seconds=100)}
    assert status.topic_status(row, now)["freshness"] == "stale"
    live = status.topic_status(row, now, live_last=now.timestamp() - 0.5)
    assert live["freshness"] == "fresh" and live["last_event_age_s"] == 0.5
    assert status.topic_status(row | {"status": "pending"}, now)["freshness"] is None


def test_status_files_age_and_garbage(tmp_path):
    (tmp_path / "ingest.json").write_text(json.dumps({"handoff": {"publisher": {"buffered": 1, "dropped": {}}}}))
    (tmp_path / "publisher.json").write_text("[1, 2]")
    (tmp_path / "persister.json").write_text(json.dumps({"pending": {"orders": 2}, "spooled": 1, "dead_letters": 4}))
    old = time.time() - 11
    os.utime(tmp_path / "persister.json", (old, old))
    files = status.read_status_files(tmp_path)
    procs = {p["process"]: p for p in status.process_list(files)}
    assert procs["ingest"]["reporting"] and procs["ingest"]["buffered"] == {"publisher": 1}
    assert procs["publisher"]["reporting"] is False           # not an object: not reporting
    assert procs["persister"]["reporting"] is False
    assert procs["persister"]["buffered"] == {"pending": {"orders": 2}, "spooled": 1}
    assert procs["persister"]["dropped"] == {"dead_letters": 4}
    assert status.read_status_files(tmp_path / "missing") == {}


def test_connections_from_each_process_shape():
    files = {
        "ingest": {"age_s": 0.1, "data": {"connections": [{"id": "spot-1", "state": "open", "reconnects": True,
                                                            "last_error": 5}]}},
        "persister": {"age_s": 0.1, "data": {"database": {"up": False, "error": "refused"}}},
        "other": {"age_s": 0.1, "data": {"connections": {"x": "up"}}},
    }
    conns = {c["name"]: c for c in status.connection_list(files)}
    assert conns["spot-1"]["reconnects"] is None and conns["spot-1"]["last_error"] == "5"
    assert conns["postgresql"]["state"] == "down" and conns["postgresql"]["last_error"] == "refused"
    assert conns["x"]["state"] == "up" and conns["x"]["process"] == "other"


def test_overall():
    procs = [{"reporting": True}]
    assert status.overall(procs, [{"freshness": "quiet"}], True, True) == "ok"
    assert status.overall(procs, [{"freshness": "stale"}], True, True) == "degraded"
    assert status.overall([{"reporting": False}], [], True, True) == "degraded"
    assert status.overall(procs, [], False, True) == "degraded"


def test_rest_ban_from_ingest_status():
    def files(rest):
        return {"ingest": {"age_s": 0.5, "data": {"reconciliation": {"configured": True, "rest": rest}}}}

    assert status.rest_ban({}) is None
    assert status.rest_ban({"ingest": {"age_s": 0.5, "data": {"reconciliation": {"configured": False}}}}) is None
    assert status.rest_ban(files({"calls": 3})) == {"banned": False, "until": None, "bans": 0}
    assert status.rest_ban(files({"bans": 1, "banned_until": 2000.5}), now=1000) == \
        {"banned": True, "until": 2000.5, "bans": 1}
    assert status.rest_ban(files({"bans": 1, "banned_until": 2000.5}), now=2001)["banned"] is False
    assert status.rest_ban(files({"bans": "x", "banned_until": True}), now=0) == \
        {"banned": False, "until": None, "bans": 0}
