"""Upserts per second through the persister's sink, into a throwaway database.

    .venv/bin/python bench/persister_bench.py [--rows 20000] [--repeat 3] [--tables balances,orders,...]
                                              [--admin-url URL]

For balances, orders and executions, at batch sizes 100 and 1000: rows are
built by ``persister.rows`` from the recorded frames (not timed), then written
with ``PostgresSink.write`` (COPY into staging + guarded INSERT ... ON CONFLICT, one
commit per batch). "insert" writes new keys; "update" writes every key again
with a newer exchange timestamp (executions: the same ids again, a no-op by
design). Each figure is the best of --repeat runs.

Target: >= 50,000 rows/s at batch 1000, the persister's batch size
(PERSISTER_BATCH_ROWS) whenever the write rate matters. A batch is written at
1000 rows or after 200 ms (PERSISTER_BATCH_MS), and rows arriving during a
write make the next batch bigger, so batches only stay small while fewer than
~5,000 rows/s arrive; a catch-up after an outage is written in full batches.
Batch 100 (fewer than 500 rows/s arriving) shows the cost per commit: as high
as it goes, no target.

A last "reference" line writes a fixed table of four small columns the same way, on
its own connection (on an idle machine, before the persister was written, it measured
70k rows/s at batch 100 and 127-158k at batch 500-2000), so it tells how much of the
machine this run had.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import orjson
import psycopg2

from persister.pending import Batch
from persister.rows import balance_rows, execution_row, order_row
from persister.sink import PostgresSink

ROOT = Path(__file__).resolve().parent.parent
FRAMES = ROOT / "tests" / "frames"


def _frame(name: str) -> dict:
    return orjson.loads((FRAMES / f"{name}.json").read_bytes())


def build(table: str, n: int, version: int) -> list:
    if table == "balances":
        account = _frame("wallet")["data"][0]
        coin = account["coin"][0]
        rows = []
        for i in range(n):
            acc = dict(account, accountType=f"A{i // 1000}", coin=[dict(coin, coin=f"C{i % 1000}",
                                                                          walletBalance=f"{i}.{version}")])
            rows += balance_rows(acc, 1_800_000_000_000 + version, "ws", f"ev{i}")
        return rows
    if table == "orders":
        rec = _frame("order")["data"][0]
        return [order_row(dict(rec, orderId=f"o{i}", updatedTime=str(1_800_000_000_000 + version),
                               cumExecQty=f"0.{version}"), "ws", f"ev{i}") for i in range(n)]
    rec = _frame("execution")["data"][0]
    return [execution_row(dict(rec, execId=f"x{i}"), "ws", f"ev{i}") for i in range(n)]


def run(sink: PostgresSink, rows: list, batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        result = sink.write(Batch(rows=rows[i:i + batch]))
        assert not result.dead and not result.row_by_row, result
    return len(rows) / (time.perf_counter() - started)


def reference(url: str, n: int, batch: int) -> tuple[float, float]:
    """The fixed reference table (4 small columns), same COPY + guarded upsert: how busy the
    machine is right now, against the idle-machine figures in the module docstring. On its own connection:
    on the sink's, every commit also emptied the sink's four staging tables (while they had
    TOAST tables, that cost the batch-100 reference line about 40%)."""
    import io
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS ref_balances (account text, coin text, balance numeric(38,18), "
                    "updated_at timestamptz, PRIMARY KEY (account, coin))")
        cur.execute("TRUNCATE ref_balances")
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS ref_stage (LIKE ref_balances) ON COMMIT DELETE ROWS")
    conn.commit()
    out = []
    for ts in ("2026-01-01", "2026-01-02"):
        lines = [f"a{i // 10}\tc{i % 10}\t{i}.123456789\t{ts}\n" for i in range(n)]
        started = time.perf_counter()
        for i in range(0, n, batch):
            with conn.cursor() as cur:
                cur.copy_expert("COPY ref_stage FROM STDIN", io.BytesIO("".join(lines[i:i + batch]).encode()))
                cur.execute("INSERT INTO ref_balances SELECT * FROM ref_stage ON CONFLICT (account, coin) DO UPDATE "
                            "SET balance = EXCLUDED.balance, updated_at = EXCLUDED.updated_at "
                            "WHERE ref_balances.updated_at <= EXCLUDED.updated_at")
            conn.commit()
        out.append(n / (time.perf_counter() - started))
    conn.close()
    return out[0], out[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is printed")
    parser.add_argument("--tables", default="balances,orders,executions,reference",
                        help="comma-separated subset of balances,orders,executions,reference")
    parser.add_argument("--admin-url", default=os.environ.get("TEST_PG_ADMIN_URL",
                                                              "postgresql://wsgw:wsgw@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    from yoyo import get_backend, read_migrations

    name = f"wsgw_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(args.admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = args.admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        backend = get_backend(url)
        with backend.lock():
            backend.apply_migrations(backend.to_apply(read_migrations(str(ROOT / "sql"))))
        sink = PostgresSink(url)
        sink.connect()
        print(f"{'table':<11} {'batch':>5} {'insert rows/s':>14} {'update rows/s':>14}")
        tables = args.tables.split(",")
        for table in [t for t in ("balances", "orders", "executions") if t in tables]:
            for batch in (100, 1000):
                fresh = build(table, args.rows, 1)
                newer = build(table, args.rows, 2)
                ins = upd = 0.0
                for _ in range(args.repeat):   # best of N: other work on the machine only slows a run down
                    with sink.conn.cursor() as cur:
                        cur.execute(f"TRUNCATE {table}")
                    sink.conn.commit()
                    ins = max(ins, run(sink, fresh, batch))
                    upd = max(upd, run(sink, newer, batch))
                print(f"{table:<11} {batch:>5} {ins:>14,.0f} {upd:>14,.0f}", flush=True)
        for batch in (100, 1000) if "reference" in tables else ():
            ins, upd = map(max, zip(*(reference(url, args.rows, batch) for _ in range(args.repeat))))
            print(f"{'reference':<11} {batch:>5} {ins:>14,.0f} {upd:>14,.0f}   (4-column reference table)", flush=True)
        sink.close()
    finally:
        backend = None
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
