"""The control client alone: acks, refusals, timeouts that never hang, a dead peer."""
from __future__ import annotations

import time

import pytest

from api.control import ControlClient, ControlUnavailable
from common.addresses import ingest_control

SUB = {"id": "x", "channel": "trades", "endpoint": "linear", "category": "linear", "symbol": "BTCUSDT",
       "depth": None, "interval": None, "topic": "publicTrade.BTCUSDT"}


def test_ack_and_refusal(fake_ingest, short_tmp):
    client = ControlClient(ingest_control(short_tmp), 1000)
    reply = client.request("add", SUB, "t-1")
    assert reply.ok and reply.error is None
    fake_ingest.mode = "refuse"
    reply = client.request("remove", SUB, "t-2")
    assert not reply.ok and reply.error == fake_ingest.error
    assert [(r["op"], r["trace_id"]) for r in fake_ingest.requests] == [("add", "t-1"), ("remove", "t-2")]
    assert fake_ingest.requests[0]["subscription"] == SUB


@pytest.mark.parametrize("with_peer", [True, False])
def test_timeout_is_bounded_and_the_next_request_works(fake_ingest, short_tmp, with_peer):
    address = ingest_control(short_tmp) if with_peer else ingest_control(short_tmp / "nobody")
    client = ControlClient(address, 200)
    fake_ingest.mode = "silent"
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(ControlUnavailable):
            client.request("add", SUB, "t")
        assert time.monotonic() - started < 1.5   # 200 ms budget; slack for a loaded CI box
    if with_peer:
        fake_ingest.mode = "ack"
        assert client.request("add", SUB, "t").ok
