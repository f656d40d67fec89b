"""``python -m persister`` as supervisord runs it, fed over ZeroMQ like ingest feeds it."""
from __future__ import annotations

import time
import uuid

import psycopg2
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from tests.persister.conftest import frame
from tests.support import free_port, wait_for
from tests.support.stores import apply_migrations, create_database, drop_database


def q(db, sql, *args):
    with db.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def metric_samples(directory) -> dict:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return {(sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))): sample.value
            for family in registry.collect() for sample in family.samples}


def count(db, table):
    return q(db, f"SELECT count(*) FROM {table}")[0][0]


@pytest.mark.timeout(60)
def test_events_land_and_sigterm_exits_cleanly(own_pg_url, own_db, start_persister, pusher):
    sub_id = q(own_db, "INSERT INTO subscriptions (channel, endpoint, topic) VALUES ('order', 'private', 'order') "
                       "RETURNING id::text")[0][0]
    proc = start_persister(own_pg_url)
    for name in ("order", "execution", "execution_fast", "position", "wallet"):
        pusher.frame(frame(name))
    rest = frame("rest_execution_list")
    extra = dict(rest["result"]["list"][0], execId="rest-exec-1", execFee="0.000001")
    pusher.json("rest", {"topic": "execution", "category": "linear", "list": [extra], "fetched_at_ms": rest["time"]})
    pusher.json("sub_status", {"endpoint": "private", "topic": "order", "status": "active", "error": None,
                               "at_ms": 1785000000000, "trace_id": "t1"})
    pusher.json("activity", {"topics": {"private:order": 1785000001000}})
    wait_for(lambda: count(own_db, "executions") == 2 and count(own_db, "balances") == 1
             and q(own_db, "SELECT last_event_at IS NOT NULL FROM subscriptions")[0][0], 15, message="rows")
    assert q(own_db, "SELECT price::text, order_status FROM orders") == [("118000.00", "PartiallyFilled")]
    assert q(own_db, "SELECT exec_fee::text, source FROM executions ORDER BY exec_id") == [
        ("0.4248", "ws"), ("0.000001", "rest")]
    assert q(own_db, "SELECT size::text FROM positions") == [("0.020",)]
    assert q(own_db, "SELECT wallet_balance::text FROM balances") == [("20936.5757",)]
    assert q(own_db, "SELECT status, extract(epoch from status_at)::bigint, "
                     "(extract(epoch from last_event_at) * 1000)::bigint FROM subscriptions WHERE id = %s", sub_id) == [
        ("active", 1785000000, 1785000001000)]

    status = wait_for(lambda: (s := proc.status())["rows_written"].get("executions") == 2 and s, 5)
    assert status["database"]["up"] is True and status["database"]["schema_ready"] is True
    assert status["pending"]["orders"] == 0 and status["last_batch"]["rows"] >= 1
    samples = metric_samples(proc.run_dir / "metrics")
    assert samples[("wsgw_persister_rows_written_total", (("table", "executions"),))] == 2
    assert samples[("wsgw_persister_db_up", ())] == 1

    started = time.monotonic()
    assert proc.stop() == 0
    assert time.monotonic() - started < 10
    assert proc.events("stopped") and not proc.events("database_unavailable")


@pytest.mark.timeout(60)
def test_poisoned_event_is_dead_lettered_and_the_rest_written(own_pg_url, own_db, start_persister, pusher):
    proc = start_persister(own_pg_url, PERSISTER_BATCH_MS="300")
    good = frame("order")
    good["data"] = [dict(good["data"][0], orderId=f"ok-{i}") for i in range(20)]
    poisoned = frame("order")
    poisoned["id"] = "poison-event"
    poisoned["data"][0].update(orderId="poison", orderLinkId="nul\u0000byte")
    unbuildable = frame("execution")
    unbuildable["id"] = "bad-exec"
    unbuildable["data"][0]["execQty"] = {"not": "a number"}
    pusher.frame(good)
    pusher.frame(poisoned)
    pusher.frame(unbuildable)
    pusher.frame(frame("wallet"))
    pusher.raw([b"gw1", b"not json", b""])          # bad envelope: counted, logged, not fatal
    wait_for(lambda: count(own_db, "dead_letters") == 2 and count(own_db, "orders") == 20
             and count(own_db, "balances") == 1, 15, message="batch written around the poison")
    dead = dict(q(own_db, "SELECT event_id, table_name FROM dead_letters"))
    assert dead == {"poison-event": "orders", "bad-exec": "executions"}
    status = wait_for(lambda: (s := proc.status())["dead_letters"] == 2 and s, 5)
    assert status["bad_input"] == 1 and proc.p.poll() is None


@pytest.mark.timeout(60)
def test_waits_for_migrations_then_writes(start_persister, pusher):
    name = f"wsgw_tp_{uuid.uuid4().hex[:10]}"
    url = create_database(name)
    try:
        proc = start_persister(url)
        pusher.frame(frame("order"))
        wait_for(lambda: proc.status()["database"]["schema_waits"] >= 2, 15, message="schema waits")
        assert proc.status()["database"]["schema_ready"] is False and proc.status()["pending"]["orders"] == 1
        assert len(proc.events("schema_not_ready")) == 1        # logged once, not per retry
        apply_migrations(url)
        conn = psycopg2.connect(url)
        try:
            wait_for(lambda: q(conn, "SELECT count(*) FROM orders")[0][0] == 1, 15, message="order written")
        finally:
            conn.close()
        assert proc.stop() == 0
    finally:
        drop_database(name)


@pytest.mark.timeout(60)
def test_sigterm_while_database_away_spools_and_next_start_writes(own_pg_url, own_db, start_persister, pusher,
                                                                  short_tmp):
    dead_url = f"postgresql://wsgw:wsgw@127.0.0.1:{free_port()}/nothing"
    first = start_persister(dead_url)
    for i in range(50):
        f = frame("execution")
        f["data"][0]["execId"] = f"x-{i}"
        pusher.frame(f)
    pusher.frame(frame("wallet"))
    wait_for(lambda: first.status()["received"] == 51, 10, message="all received")
    assert first.status()["database"]["up"] is False
    assert len(first.events("database_unavailable")) == 1
    assert first.stop() == 0
    assert (short_tmp / "spool" / "persister.jsonl").exists()

    second = start_persister(own_pg_url)
    wait_for(lambda: count(own_db, "executions") == 50 and count(own_db, "balances") == 1, 15, message="spool written")
    wait_for(lambda: not (short_tmp / "spool" / "persister.jsonl").exists(), 5, message="spool removed")
    rc = second.stop()
    print(second.log_path.read_text())
    assert rc == 0


@pytest.mark.timeout(60)
def test_sigterm_commits_the_batch_in_hand(own_pg_url, own_db, start_persister, pusher):
    proc = start_persister(own_pg_url, PERSISTER_BATCH_MS="60000", PERSISTER_BATCH_ROWS="100000")
    wait_for(lambda: proc.status()["database"]["up"], 10, message="connected")
    for i in range(300):
        f = frame("execution")
        f["data"][0]["execId"] = f"held-{i}"
        pusher.frame(f)
    wait_for(lambda: proc.status()["pending"]["executions"] == 300, 10, message="held in memory")
    assert count(own_db, "executions") == 0
    assert proc.stop() == 0
    assert count(own_db, "executions") == 300
    assert not (proc.run_dir / "spool" / "persister.jsonl").exists()
