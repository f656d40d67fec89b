"""Fixtures over the real services: a throwaway PostgreSQL database with the
migrations applied, and a throwaway RabbitMQ vhost, each created for the test
session and dropped after it, so tests never touch `make run`'s data."""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg2
import pytest

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://wsgw:wsgw@127.0.0.1:5432/postgres")
AMQP_BASE = os.environ.get("TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")


def _pg_admin(sql: str) -> None:
    conn = psycopg2.connect(PG_ADMIN_URL)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def apply_migrations(url: str) -> None:
    from yoyo import get_backend, read_migrations

    backend = get_backend(url)
    migrations = read_migrations(str(ROOT / "sql"))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations))


def create_database(name: str) -> str:
    _pg_admin(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def throwaway_database():
    """A fresh database with every migration applied; dropped on exit."""
    name = f"wsgw_t_{uuid.uuid4().hex[:10]}"
    url = create_database(name)
    try:
        apply_migrations(url)
        yield url
    finally:
        drop_database(name)


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


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


@contextlib.contextmanager
def throwaway_vhost():
    """A fresh RabbitMQ vhost; deleted on exit."""
    vhost = f"wsgw-t-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


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
