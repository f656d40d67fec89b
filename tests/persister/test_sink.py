"""The sink against real PostgreSQL: exact decimals, idempotence, guards, dead letters,
subscription updates."""
from __future__ import annotations

import os

import pytest

from persister.pending import Batch, Pending, SubStatus
from persister.rows import rows_from_frame, rows_from_rest
from persister.sink import COPY_CHUNK_ROWS, STAGE_MAX_RAW, PostgresSink
from persister.spool import RowSpool
from tests.persister.conftest import frame


@pytest.fixture
def sink(own_pg_url, own_db):
    s = PostgresSink(own_pg_url)
    s.connect()
    yield s
    s.close()


def write(sink, *frames):
    rows, bad = [], []
    for f in frames:
        r, b = rows_from_frame(f, f.get("id") or "e")
        rows += r
        bad += b
    return sink.write(Batch(rows=rows, dead=bad))


def one(db, sql, *args):
    with db.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def order_frame(status: str, updated: str, oid: str = "o-1", **extra) -> dict:
    f = frame("order")
    f["data"][0].update(orderId=oid, orderStatus=status, updatedTime=updated, **extra)
    return f


def test_each_private_event_lands_with_exact_decimals(sink, own_db):
    result = write(sink, frame("order"), frame("execution"), frame("position"), frame("wallet"))
    assert result.written == {"orders": 1, "executions": 1, "positions": 1, "balances": 1}
    assert one(own_db, "SELECT price::text, qty::text, cum_exec_value::text, order_status, is_open, updated_time "
                       "FROM orders") == [("118000.00", "0.050", "2360", "PartiallyFilled", True, 1785000008009)]
    assert one(own_db, "SELECT exec_price::text, exec_qty::text, exec_fee::text, is_maker, seq FROM executions") == [
        ("118000.00", "0.020", "0.4248", True, 412345680001)]
    assert one(own_db, "SELECT size::text, entry_price::text, liq_price::text, cum_realised_pnl::text "
                       "FROM positions") == [("0.020", "118000", "106812.4", "-153.2219")]
    assert one(own_db, "SELECT wallet_balance::text, equity::text, usd_value::text, exchange_ts FROM balances") == [
        ("20936.5757", "20941.5577", "20939.46", 1785000008025)]
    raw = one(own_db, "SELECT raw->'cumFeeDetail'->>'USDT' FROM orders")
    assert raw == [("0.4248",)]


def test_tiny_and_huge_decimals_exact(sink, own_db):
    f = frame("wallet")
    f["data"][0]["coin"][0].update(walletBalance="0.000000000000000001", equity="123456789012345678901234.5678")
    write(sink, f)
    assert one(own_db, "SELECT wallet_balance::text, equity::text FROM balances") == [
        ("0.000000000000000001", "123456789012345678901234.5678")]


def test_same_event_twice_changes_nothing(sink, own_db):
    write(sink, frame("order"), frame("execution"), frame("position"), frame("wallet"))
    before = {t: one(own_db, f"SELECT *, xmin::text FROM {t}") for t in ("orders", "executions", "positions", "balances")}
    write(sink, frame("order"), frame("execution"), frame("position"), frame("wallet"))
    after = {t: one(own_db, f"SELECT *, xmin::text FROM {t}") for t in ("orders", "executions", "positions", "balances")}
    assert before == after   # not even rewritten: xmin and written_at unchanged


def test_older_event_after_newer_keeps_newer(sink, own_db):
    write(sink, order_frame("PartiallyFilled", "200", cumExecQty="0.030"))
    write(sink, order_frame("New", "100", cumExecQty="0"))
    assert one(own_db, "SELECT order_status, cum_exec_qty::text, updated_time FROM orders") == [
        ("PartiallyFilled", "0.030", 200)]
    newer, older = frame("position"), frame("position")
    older["data"][0].update(updatedTime="1", size="9")
    write(sink, newer)
    write(sink, older)
    assert one(own_db, "SELECT size::text FROM positions") == [("0.020",)]
    w_old = frame("wallet")
    w_old["creationTime"] = 1
    w_old["data"][0]["coin"][0]["walletBalance"] = "1"
    write(sink, frame("wallet"))
    write(sink, w_old)
    assert one(own_db, "SELECT wallet_balance::text FROM balances") == [("20936.5757",)]


def test_filled_never_returns_to_open(sink, own_db):
    write(sink, order_frame("Filled", "300"))
    write(sink, order_frame("New", "900"))              # later timestamp, open status
    write(sink, order_frame("PartiallyFilled", "901"))
    assert one(own_db, "SELECT order_status, is_open, updated_time FROM orders") == [("Filled", False, 300)]
    write(sink, order_frame("Filled", "310", rejectReason="EC_OrigClOrdIDDoesNotExist"))   # cancel/fill race
    assert one(own_db, "SELECT raw->>'rejectReason', updated_time FROM orders") == [("EC_OrigClOrdIDDoesNotExist", 310)]


def test_open_then_cancelled_with_older_clock_still_closes(sink, own_db):
    write(sink, order_frame("New", "500"))
    write(sink, order_frame("Cancelled", "499"))
    assert one(own_db, "SELECT order_status FROM orders") == [("Cancelled",)]


def test_fast_execution_completed_by_full_record(sink, own_db):
    write(sink, frame("execution_fast"))
    assert one(own_db, "SELECT exec_fee, source FROM executions") == [(None, "ws_fast")]
    write(sink, frame("execution"))
    write(sink, frame("execution_fast"))
    assert one(own_db, "SELECT exec_fee::text, source FROM executions") == [("0.4248", "ws")]


def test_rest_rows_and_ws_rows_share_keys(sink, own_db):
    f = frame("rest_position_list")
    body = {"topic": "position", "category": "linear", "list": f["result"]["list"], "fetched_at_ms": f["time"]}
    rows, _ = rows_from_rest(body, "r")
    sink.write(Batch(rows=rows))
    write(sink, frame("position"))   # same updatedTime: WS record replaces the REST one
    assert one(own_db, "SELECT count(*), max(entry_price)::text, max(source) FROM positions") == [(1, "118000", "ws")]


def test_poisoned_row_goes_to_dead_letters_and_the_rest_is_written(sink, own_db):
    good = [order_frame("New", "1", oid=f"g{i}") for i in range(5)]
    poison = order_frame("New", "1", oid="p1", orderLinkId="bad\x00link")
    bad_status = order_frame("New", "1", oid="p2")
    bad_status["data"][0]["qty"] = "lots"
    result = write(sink, *good[:2], poison, bad_status, *good[2:])
    assert result.row_by_row and result.written == {"orders": 5}
    assert [d.event_id for d in result.dead] == [poison["id"]]
    assert one(own_db, "SELECT count(*) FROM orders") == [(5,)]
    dead = one(own_db, "SELECT table_name, event_id, error, payload->>'orderId' FROM dead_letters ORDER BY id")
    assert [(d[0], d[3]) for d in dead] == [("orders", "p2"), ("orders", "p1")]
    assert "qty: not a decimal" in dead[0][2]
    assert "NUL" in dead[1][2]


def test_constraint_violation_is_dead_lettered(sink, own_db):
    f = frame("wallet")
    f["data"][0]["accountType"] = "UNIFIED"
    f["data"][0]["coin"].append(dict(f["data"][0]["coin"][0], coin="BTC"))
    rows, _ = rows_from_frame(f, "w1")
    # A row that passes the builder but not the table: empty coin violates CHECK (coin <> '').
    broken = rows[1].__class__(rows[1].table, ("UNIFIED", ""), rows[1].rank, ("UNIFIED", "", *rows[1].values[2:]),
                               "w1")
    result = sink.write(Batch(rows=[rows[0], broken]))
    assert result.written == {"balances": 1} and len(result.dead) == 1
    assert "check constraint" in one(own_db, "SELECT error FROM dead_letters")[0][0]


def insert_sub(db, endpoint, topic, status="pending"):
    return one(db, "INSERT INTO subscriptions (channel, endpoint, category, symbol, topic, status) "
                   "VALUES ('tickers', %s, %s, 'BTCUSDT', %s, %s) RETURNING id::text", endpoint, endpoint, topic,
               status)[0][0]


def test_sub_status_and_activity_never_resurrect(sink, own_db):
    removed = insert_sub(own_db, "linear", "tickers.BTCUSDT", "removed")
    live = insert_sub(own_db, "linear", "tickers.BTCUSDT")
    sink.write(Batch(sub_status=[SubStatus("linear", "tickers.BTCUSDT", "failed", "handler not found", 2000)],
                     activity={("linear", "tickers.BTCUSDT"): 3000}))
    rows = dict((r[0], r[1:]) for r in one(
        own_db, "SELECT id::text, status, last_error, extract(epoch from status_at)::bigint, "
                "extract(epoch from last_event_at)::bigint FROM subscriptions"))
    assert rows[live] == ("failed", "handler not found", 2, 3)
    assert rows[removed] == ("removed", None, None, None)
    # a late status (older at_ms) and older activity change nothing
    sink.write(Batch(sub_status=[SubStatus("linear", "tickers.BTCUSDT", "active", None, 1000)],
                     activity={("linear", "tickers.BTCUSDT"): 1000}))
    assert one(own_db, "SELECT status, extract(epoch from last_event_at)::bigint FROM subscriptions WHERE id = %s",
               live) == [("failed", 3)]
    # once removed, nothing brings it back
    one(own_db, "UPDATE subscriptions SET status = 'removed' WHERE id = %s RETURNING id", live)
    sink.write(Batch(sub_status=[SubStatus("linear", "tickers.BTCUSDT", "active", None, 9000)]))
    assert one(own_db, "SELECT count(*) FROM subscriptions WHERE status <> 'removed'") == [(0,)]


def test_batch_dedup_through_pending(sink, own_db, tmp_path):
    p = Pending(RowSpool(tmp_path / "s"))
    for status, ts in (("New", "1"), ("PartiallyFilled", "2"), ("Filled", "3"), ("New", "4")):
        for r in rows_from_frame(order_frame(status, ts), "e")[0]:
            p.add(r, 0.0)
    sink.write(p.take(100))
    assert one(own_db, "SELECT order_status, updated_time FROM orders") == [("Filled", 3)]


def test_stage_tables_have_no_toast_table(sink):
    # Each TOAST table would be truncated and its index rebuilt at every commit (sink._create_stage).
    with sink.conn.cursor() as cur:
        cur.execute("SELECT relname, reltoastrelid::int FROM pg_class WHERE relpersistence = 't' "
                    "AND relname LIKE 'stage\\_%' ORDER BY relname")
        stages = cur.fetchall()
    sink.conn.rollback()
    assert stages == [("stage_balances", 0), ("stage_executions", 0), ("stage_orders", 0), ("stage_positions", 0)]


def test_rows_too_big_for_the_stage_are_written_with_their_batch(sink, own_db):
    small = [order_frame("New", "1", oid=f"s{i}") for i in range(3)]
    long_ascii = order_frame("New", "1", oid="big", note="x" * 9_000)      # over a page: skips the stage
    result = write(sink, small[0], long_ascii, *small[1:])
    assert result.written == {"orders": 4} and not result.row_by_row and not result.dead
    # Under STAGE_MAX_RAW characters but over a page in UTF-8: the COPY fails, the batch is
    # written row by row, and nothing is lost.
    wide = order_frame("New", "2", oid="wide", orderLinkId="\U0001F600" * 650, note="\U0001F600" * 650)
    assert len(rows_from_frame(wide, "w")[0][0].raw) <= STAGE_MAX_RAW
    result = write(sink, order_frame("New", "2", oid="s9"), wide)
    assert result.row_by_row and result.written == {"orders": 2} and not result.dead
    assert one(own_db, "SELECT order_id, length(raw->>'note') FROM orders WHERE raw->>'note' IS NOT NULL "
                       "ORDER BY order_id") == [("big", 9_000), ("wide", 650)]
    assert one(own_db, "SELECT count(*) FROM orders") == [(6,)]
    write(sink, long_ascii)   # replay of the big row changes nothing
    assert one(own_db, "SELECT count(*) FROM dead_letters") == [(0,)]


def test_index_row_too_big_is_dead_lettered_not_an_outage(sink, own_db):
    # SQLSTATE 54000 is an OperationalError in psycopg2, yet the row is at fault: the batch must not
    # be retried forever as if the database were down.
    huge = order_frame("New", "1", oid="huge", symbol=os.urandom(4_000).hex())   # incompressible, > 2704 bytes
    result = write(sink, order_frame("New", "1", oid="ok1"), huge, order_frame("New", "1", oid="ok2"))
    assert result.row_by_row and result.written == {"orders": 2}
    assert [d.event_id for d in result.dead] == [huge["id"]]
    assert "index row" in one(own_db, "SELECT error FROM dead_letters")[0][0]
    assert one(own_db, "SELECT order_id FROM orders ORDER BY order_id") == [("ok1",), ("ok2",)]


def test_batch_streamed_in_chunks_arrives_whole_and_exact(sink, own_db):
    # More rows than one COPY chunk, with values that need COPY escapes in several chunks.
    links = [f"l{i}" + ("\t\\\n\r"[i % 4] if i % 7 == 0 else "") for i in range(3 * COPY_CHUNK_ROWS + 5)]
    result = write(sink, *[order_frame("New", str(i), oid=f"c{i}", orderLinkId=link) for i, link in enumerate(links)])
    assert result.written == {"orders": len(links)} and not result.row_by_row
    got = one(own_db, "SELECT order_link_id, updated_time, raw->>'orderLinkId' FROM orders")
    assert sorted(got, key=lambda r: r[1]) == [(link, i, link) for i, link in enumerate(links)]
