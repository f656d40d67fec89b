"""Fixtures over the real services: a throwaway PostgreSQL database with the
migrations applied, and a throwaway RabbitMQ vhost, each created for the test
session and dropped after it, so tests never touch `make run`'s data (the helpers
behind them are in tests.support.stores)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg2
import pytest

from tests.support.stores import AMQP_BASE, throwaway_database, throwaway_vhost


@pytest.fixture(scope="session")
def pg_url():
    with throwaway_database() as url:
        yield url


@pytest.fixture
def db(pg_url):
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def amqp_vhost():
    with throwaway_vhost() as vhost:
        yield vhost


@pytest.fixture(scope="session")
def amqp_url(amqp_vhost):
    return f"{AMQP_BASE}/{amqp_vhost}"


@pytest.fixture
def short_tmp():
    """A short directory path: ipc:// socket paths must stay under ~100 bytes."""
    with tempfile.TemporaryDirectory(prefix="wsgw-", dir="/tmp") as d:
        yield Path(d)


# Fixtures that reach PostgreSQL or RabbitMQ or start a gateway process (directly or through
# another fixture): a test using none of them is a unit test.
_SERVICE_FIXTURES = frozenset({"pg_url", "db", "amqp_vhost", "amqp_url", "own_pg_url", "ingest_db", "rec_db",
                               "gateway_stores", "start_persister", "start_ingest", "publisher", "broker"})
# Modules whose tests start gateway processes or stores without going through those fixtures.
_INTEGRATION_MODULES = ("tests/ops/", "tests/e2e/", "tests/reconcile/test_chaos.py", "tests/multi/",
                        "tests/persister/test_bench_smoke.py", "tests/persister/test_migrations.py")


def pytest_collection_modifyitems(config, items):
    """Mark every test unit, integration or e2e by what it uses; destructive ones run last."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        path = item.nodeid
        if "xprocess" in names:
            item.add_marker(pytest.mark.e2e)
        elif names & _SERVICE_FIXTURES or path.startswith(_INTEGRATION_MODULES) or item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)
    items.sort(key=lambda it: it.get_closest_marker("destructive") is not None)
