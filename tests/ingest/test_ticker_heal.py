"""A linear ticker push lost on the way to consumers is healed by ingest from its own merged copy
of the ticker: announced as ``ticker_resync``, a full ticker handed off, nothing subscribed again
at the exchange. The oracle merges the pushes ingest handed off with a plain dict update; it
shares nothing with ingest's copy."""
from __future__ import annotations

import asyncio

import orjson
import pytest
import zmq

from common import addresses
from common.config import load_settings
from common.topics import build_topic
from ingest.handoff import Handoff
from ingest.manager import Manager
from tests.ingest.harness import Capture
from tests.support import until

pytestmark = pytest.mark.timeout(60)
TOPIC = "tickers.ETHUSDT"
KEY = f"linear:{TOPIC}"


def _merged(frames: list[dict]) -> dict:
    """The ticker a consumer holds after ``frames`` (snapshot replaces, delta overwrites)."""
    state: dict = {}
    for f in frames:
        state = dict(f["data"]) if f["type"] == "snapshot" else {**state, **f["data"]}
    return state


@pytest.mark.parametrize("path", ["hand-off", "publisher"])
def test_a_lost_ticker_push_is_healed_from_ingests_copy_without_a_resubscribe(sim, short_tmp, path):
    settings = load_settings({"BYBIT_ENV": "sim", "SIM_PORT": str(sim.port), "GW_RUN_DIR": str(short_tmp),
                              "GW_PING_INTERVAL_S": "0.5", "GW_DEAD_AFTER_S": "2", "GW_BACKOFF_MAX_S": "2"})
    ctx = zmq.Context()
    publisher = Capture(ctx, addresses.publisher_frames(short_tmp), addresses.publisher_priority(short_tmp))
    persister = Capture(ctx, addresses.persister_frames(short_tmp))

    def pushes() -> list[dict]:
        return [orjson.loads(e.payload) for e in publisher.frames(TOPIC, "linear")]

    async def main():
        handoff = Handoff(short_tmp, 10_000, ctx=ctx)
        mgr = Manager(settings, handoff)
        try:
            assert mgr.add(build_topic("tickers", "linear", "ETHUSDT")) is None
            await until(lambda: sum(p["type"] == "delta" for p in pushes()) >= 5, 15, "ticker deltas flowing")
            subscribes = sim.state()["subscribes"][KEY]
            before = len(pushes())
            seq = len(publisher.frames(TOPIC, "linear"))
            if path == "hand-off":       # what Handoff.flush reports after dropping frames of the topic
                mgr.hand_off_lost("linear", TOPIC, seq, "too_old")
            else:                        # the publisher's control request
                assert mgr.resync_requested("linear", TOPIC, "dropped in the publisher: too_old in the publisher")
            handoff.flush()
            await until(lambda: any(p["type"] == "snapshot" for p in pushes()[before:]), 10,
                        "a full ticker handed off after the loss")
            got = pushes()
            at = next(i for i in range(before, len(got)) if got[i]["type"] == "snapshot")
            # the snapshot is the ticker as the pushes handed off before it make it, field for field
            assert got[at]["data"] == _merged(got[:at])
            assert got[at]["topic"] == TOPIC and got[at]["data"]["symbol"] == "ETHUSDT"
            [notice] = [orjson.loads(e.payload) for e in publisher.of_kind("system", "ticker_resync")]
            assert notice["topic"] == TOPIC and notice["reason"].endswith("; snapshot from ingest's copy of the ticker")
            assert ("hand-off" in notice["reason"]) == (path == "hand-off")
            assert mgr.status()["ticker_heals"] == 1
            # deltas go on after it, and the exchange was not asked for the topic again
            await until(lambda: sum(p["type"] == "delta" for p in pushes()[at:]) >= 3, 10, "deltas after the heal")
            assert sim.state()["subscribes"][KEY] == subscribes
        finally:
            await mgr.close()
            handoff.close()

    try:
        asyncio.run(main())
    finally:
        publisher.close()
        persister.close()
        ctx.term()
        sim.reset()
