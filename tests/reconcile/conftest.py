from __future__ import annotations

import pytest

from tests.ingest.conftest import clear_subscriptions
from tests.ingest.harness import IngestProcess
from tests.support.stores import throwaway_database

API_KEY, API_SECRET = "reconcile-test-key", "reconcile-test-secret-0123456789"


@pytest.fixture(scope="module")
def rec_db():
    with throwaway_database() as url:
        yield url


@pytest.fixture(scope="module")
def sim():
    import bybitsim

    with bybitsim.run_in_thread(port=0, rate=0, api_key=API_KEY, api_secret=API_SECRET, account_rate=0,
                                seed=11) as s:
        yield s


@pytest.fixture
def start_ingest(sim, rec_db, short_tmp):
    """``start_ingest(**env)``: an ingest process with the simulator's keys; closed after the test."""
    procs = []

    def start(**overrides):
        overrides.setdefault("BYBIT_API_KEY", API_KEY)
        overrides.setdefault("BYBIT_API_SECRET", API_SECRET)
        proc = IngestProcess(short_tmp, sim, rec_db, **overrides)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for p in procs:
            p.close()
        clear_subscriptions(rec_db)
        sim.reset()
        sim.rate(account_rate=0)
