"""One instance alone, as ``make run`` starts it: no instance setting at all (its id is the host
name), every unit its own; a stored private subscription without Bybit keys is still reported
failed saying why (no other instance has keys to hold it)."""
from __future__ import annotations

import socket

import psycopg2
import pytest

import bybitsim
from tests.ingest.harness import IngestProcess
from tests.support import wait_for
from tests.support.stores import throwaway_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_one_instance_needs_no_setting_and_refuses_private_without_keys(short_tmp):
    with throwaway_database() as pg_url, bybitsim.run_in_thread(port=0, rate=20) as sim:
        conn = psycopg2.connect(pg_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("INSERT INTO subscriptions (channel, endpoint, topic, requesters) "
                        "VALUES ('order', 'private', 'order', ARRAY['t'])")
            cur.execute("INSERT INTO subscriptions (channel, endpoint, category, symbol, topic, requesters) VALUES "
                        "('trades', 'linear', 'linear', 'BTCUSDT', 'publicTrade.BTCUSDT', ARRAY['t'])")
        ingest = IngestProcess(short_tmp, sim, pg_url)          # no BYBIT_API_KEY, no GW_INSTANCE_ID
        try:
            wait_for(lambda: ingest.statuses().get("private:order") == "failed", 20, message="private refused")
            body = next(e.json() for e in ingest.persister.of_kind("sub_status") if e.json()["topic"] == "order")
            assert "BYBIT_API_KEY" in body["error"]
            wait_for(lambda: len(ingest.publisher.frames("publicTrade.BTCUSDT")) > 5, 20, message="trades flowing")
            inst = ingest.status()["instance"]
            host = socket.gethostname()
            assert inst["instance"] == host or host.startswith(inst["instance"])
            assert len(inst["owned"]) == 16 and "private" not in inst["owned"]   # no keys: not the private unit
            assert ingest.publisher.frames("publicTrade.BTCUSDT")[-1].extra["oi"] == inst["instance"]
        finally:
            ingest.close()
            conn.close()
