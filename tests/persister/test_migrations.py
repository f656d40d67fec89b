"""Every migration applies, reverts and applies again on an empty database; migrate-down
reverts only the last one."""
from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg2
import pytest

from tests.support import ROOT
from tests.support.stores import create_database, drop_database

APP_TABLES = {"subscriptions", "balances", "orders", "executions", "positions", "dead_letters"}


@pytest.fixture
def empty_db():
    name = f"wsgw_tm_{uuid.uuid4().hex[:10]}"
    url = create_database(name)
    try:
        yield url
    finally:
        drop_database(name)


def migrate(url: str, direction: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "migrate.py"), direction, "--database", url],
                         check=True, capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def tables(url: str) -> set[str]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {r[0] for r in cur.fetchall()} & APP_TABLES
    finally:
        conn.close()


def indexes_and_options(url: str) -> tuple[set[str], dict[str, list | None]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
                        "AND tablename IN ('balances', 'orders', 'executions', 'positions')")
            names = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT relname, reloptions FROM pg_class WHERE relname IN ('balances', 'positions', 'orders')")
            return names, dict(cur.fetchall())
    finally:
        conn.close()


KEYS = {"balances_pkey", "orders_pkey", "executions_pkey", "positions_pkey"}
INDEXES_0002 = KEYS | {"balances_coin", "orders_status", "orders_symbol", "orders_updated", "executions_order",
                       "executions_time"}
INDEXES_0003 = INDEXES_0002 - {"executions_time"}


@pytest.mark.timeout(60)
def test_up_down_up(empty_db):
    assert migrate(empty_db, "up") == ("applied: 0001_subscriptions, 0002_account_state, 0003_write_throughput, "
                                       "0004_subscriptions_page, 0005_instances_leases, 0006_whole_category")
    assert tables(empty_db) == APP_TABLES
    assert indexes_and_options(empty_db) == (INDEXES_0003, {"balances": ["fillfactor=50"],
                                                            "positions": ["fillfactor=50"], "orders": None})
    assert migrate(empty_db, "down") == "reverted: 0006_whole_category"       # only the last
    assert migrate(empty_db, "down") == "reverted: 0005_instances_leases"
    assert migrate(empty_db, "down") == "reverted: 0004_subscriptions_page"
    assert migrate(empty_db, "down") == "reverted: 0003_write_throughput"
    assert indexes_and_options(empty_db) == (INDEXES_0002, {"balances": None, "positions": None, "orders": None})
    assert migrate(empty_db, "down") == "reverted: 0002_account_state"
    assert tables(empty_db) == {"subscriptions"}
    assert migrate(empty_db, "down") == "reverted: 0001_subscriptions"
    assert tables(empty_db) == set()
    assert migrate(empty_db, "down") == "reverted: nothing"
    assert migrate(empty_db, "up") == ("applied: 0001_subscriptions, 0002_account_state, 0003_write_throughput, "
                                       "0004_subscriptions_page, 0005_instances_leases, 0006_whole_category")
    assert tables(empty_db) == APP_TABLES
    assert indexes_and_options(empty_db)[0] == INDEXES_0003
    assert migrate(empty_db, "up") == "applied: nothing"
