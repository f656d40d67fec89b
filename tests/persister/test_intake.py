"""Envelope routing: what the persister accepts and what it refuses."""
from __future__ import annotations

import orjson
import pytest

from common.envelope import Envelope, json_envelope
from persister.intake import BadInput, parse
from tests.persister.conftest import frame


def env(body, topic=None, endpoint="private", kind="frame", seq=7):
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return Envelope(kind, payload, endpoint, topic or body["topic"], 0, seq, "ep1", "c1")


def test_private_frame_rows_and_event_id():
    got = parse(env(frame("order")))
    assert len(got.rows) == 1 and got.rows[0].event_id == frame("order")["id"]
    fast = parse(env(frame("execution_fast")))
    assert fast.rows[0].event_id == "ep1:private:execution.fast:7"   # no Bybit id on execution.fast


def test_public_frame_refused_and_greeks_ignored():
    with pytest.raises(BadInput) as exc:
        parse(env(frame("public_trade"), endpoint="linear"))
    assert exc.value.reason == "not_private"
    assert parse(env(frame("greeks"))).ignored


def test_unparseable_account_frame_becomes_a_dead_letter():
    got = parse(env(b"{not json", topic="order"))
    assert got.rows == [] and len(got.bad) == 1 and got.bad[0].table == "orders"
    assert got.bad[0].record["text"] == "{not json"


def test_sub_status_and_activity():
    s = parse(json_envelope("sub_status", {"endpoint": "linear", "topic": "tickers.BTCUSDT", "status": "failed",
                                           "error": "handler not found", "at_ms": 5, "trace_id": "t"}))
    assert s.sub_status.status == "failed" and s.sub_status.error == "handler not found"
    a = parse(json_envelope("activity", {"topics": {"private:order": 10, "linear:tickers.BTCUSDT": 11}}))
    assert a.activity == [("private", "order", 10), ("linear", "tickers.BTCUSDT", 11)]


@pytest.mark.parametrize("kind,body", [
    ("sub_status", {"endpoint": "linear", "topic": "t", "status": "removed", "error": None, "at_ms": 1}),
    ("sub_status", {"endpoint": "linear", "topic": "t", "status": "active", "error": None, "at_ms": "1"}),
    ("activity", {"topics": {"no-colon": 1}}),
    ("activity", {"topics": []}),
    ("system", {"x": 1}),
])
def test_bad_control_payloads(kind, body):
    with pytest.raises(BadInput):
        parse(json_envelope(kind, body))


def test_rest_payload():
    f = frame("rest_order_realtime")
    got = parse(json_envelope("rest", {"topic": "order", "category": "linear", "list": f["result"]["list"],
                                       "fetched_at_ms": f["time"]}))
    assert len(got.rows) == 1 and got.rows[0].event_id == "rest:order:linear:1785000010100"
