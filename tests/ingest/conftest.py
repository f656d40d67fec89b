from __future__ import annotations

import psycopg2
import pytest

from tests.ingest.harness import IngestProcess
from tests.support.stores import throwaway_database

API_KEY, API_SECRET = "ingest-test-key", "ingest-test-secret-0123456789"


@pytest.fixture(scope="module")
def ingest_db():
    with throwaway_database() as url:
        yield url


@pytest.fixture(scope="module")
def sim():
    import bybitsim

    with bybitsim.run_in_thread(port=0, rate=20, api_key=API_KEY, api_secret=API_SECRET) as s:
        yield s


@pytest.fixture
def ingest(sim, ingest_db, short_tmp, request):
    """A fresh ingest process per test; its desired state starts empty."""
    overrides = getattr(request, "param", {}) or {}
    overrides.setdefault("BYBIT_API_KEY", API_KEY)
    overrides.setdefault("BYBIT_API_SECRET", API_SECRET)
    proc = IngestProcess(short_tmp, sim, ingest_db, **overrides)
    try:
        yield proc
    finally:
        proc.close()
        clear_subscriptions(ingest_db)
        sim.reset()


def clear_subscriptions(url: str) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM subscriptions")
    finally:
        conn.close()
