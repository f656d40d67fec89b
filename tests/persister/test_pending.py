"""In-memory merge (newest wins, order-independent), the bound, and the spool."""
from __future__ import annotations

import itertools

from persister.pending import Pending, SubStatus
from persister.rows import EXECUTIONS, ORDERS, Row
from persister.spool import RowSpool


def order(oid: str, status_rank: int, ts: int, tag: str = "") -> Row:
    return Row(ORDERS, (oid,), (status_rank, ts), (oid, tag), f"e-{oid}-{ts}")


def execution(eid: str) -> Row:
    return Row(EXECUTIONS, (eid,), (1,), (eid, "raw"), f"e-{eid}")


def test_newest_wins_in_any_order(tmp_path):
    versions = [order("a", 0, 10, "new"), order("a", 0, 20, "partial"), order("a", 1, 15, "filled")]
    results = set()
    for perm in itertools.permutations(versions):
        p = Pending(RowSpool(tmp_path / "s"))
        for r in perm:
            p.add(r, 0.0)
        batch = p.take(10)
        assert len(batch.rows) == 1
        results.add(batch.rows[0].values[1])
    assert results == {"filled"}


def test_take_and_restore_keeps_newer(tmp_path):
    p = Pending(RowSpool(tmp_path / "s"))
    p.add(order("a", 0, 10), 1.0)
    batch = p.take(10)
    assert p.count == 0 and p.oldest_at is None
    p.add(order("a", 0, 30, "newer"), 2.0)
    p.restore(batch, 3.0)
    again = p.take(10)
    assert [r.values[1] for r in again.rows] == ["newer"]


def test_bound_spills_to_spool_in_order_and_comes_back(tmp_path):
    spool = RowSpool(tmp_path / "spool" / "p.jsonl")
    p = Pending(spool, max_rows=3)
    for i in range(10):
        p.add(execution(f"x{i}"), 0.0)
    assert p.rows_in_memory == 3 and len(spool) == 7 and p.count == 10
    p.add(execution("x0"), 0.0)          # a key already in memory merges, takes no room
    assert p.rows_in_memory == 3
    seen = []
    while p.count:
        seen += [r.key[0] for r in p.take(2).rows]
    assert seen == [f"x{i}" for i in range(10)]
    assert spool.remove_if_drained() and not spool.path.exists()


def test_spool_survives_a_restart_and_a_torn_line(tmp_path):
    path = tmp_path / "p.jsonl"
    s = RowSpool(path)
    s.append([execution("a"), Row(ORDERS, ("o",), (1, 5), ("o", None, True, "1.50"), "e")])
    s.close()
    with path.open("ab") as f:
        f.write(b'["executions", ["torn"')      # a crash mid-write
    again = RowSpool(path)
    assert len(again) == 3
    again.append([execution("b")])
    rows = again.read(10)
    assert [r.key for r in rows] == [("a",), ("o",), ("b",)]
    assert rows[1].values == ("o", None, True, "1.50") and rows[1].rank == (1, 5)
    assert again.corrupt == 1 and len(again) == 0


def test_shutdown_spills_everything(tmp_path):
    p = Pending(RowSpool(tmp_path / "s"))
    p.add(order("a", 0, 1), 0.0)
    p.add(execution("x"), 0.0)
    assert p.spill_all() == 2 and p.rows_in_memory == 0 and len(p.spool) == 2


def test_subscription_updates_merge(tmp_path):
    p = Pending(RowSpool(tmp_path / "s"))
    p.add_sub_status(SubStatus("linear", "tickers.BTCUSDT", "active", None, 20), 0.0)
    p.add_sub_status(SubStatus("linear", "tickers.BTCUSDT", "failed", "late", 10), 0.0)
    p.add_activity("linear", "tickers.BTCUSDT", 50, 0.0)
    p.add_activity("linear", "tickers.BTCUSDT", 40, 0.0)
    batch = p.take(10)
    assert [s.status for s in batch.sub_status] == ["active"]
    assert batch.activity == {("linear", "tickers.BTCUSDT"): 50}
    assert p.count == 0
