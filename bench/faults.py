#!/usr/bin/env python3
"""Every fault, once, against the gateway under supervisord with a steady public load and the
simulator's account trading; prints one table and exits non-zero if any account event is lost
or any recovery misses its target.

    .venv/bin/python bench/faults.py [--rate 2000] [--account-rate 5] [--outage 10] [--only kill9_ingest,...]
                                     [--repeat N]

Stores: a private PostgreSQL cluster on its own port (stopped and started by the run; needs
root and a PostgreSQL installation, else that fault is reported as not run) and a throwaway
RabbitMQ vhost. The RabbitMQ fault stops the shared broker (``rabbitmqctl stop_app``) for
``--outage`` seconds and always starts it again. Writes the table to docs/bench/faults.md and
keeps the gateway's logs under /tmp/wsgw-faults-<time>/ .
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench._consumer import ConsumerProcess
from bench._faults import Run
from bench._gw import ROOT, BenchGateway, exit_on_sigterm, market_requests, private_requests, stores, subscribe
from bench._results import table

TRADE_TOPICS, BOOK = 20, "orderbook.50.B0USDT"
TICKERS = ("K0USDT", "K1USDT")      # linear tickers: snapshot once, then deltas
# How quickly a dead link is noticed is a setting: the run uses a short ping so it stays short.
GATEWAY_ENV = {"GW_PING_INTERVAL_S": "2", "GW_DEAD_AFTER_S": "6", "GW_BACKOFF_MAX_S": "30",
               "PUBLISHER_BACKOFF_MAX_S": os.environ.get("PUBLISHER_BACKOFF_MAX_S", "5"),
               "SIM_RATE": "0", "SIM_ACCOUNT_RATE": "0", "GW_LOG_LEVEL": "info", "GW_STALL_AFTER_S": "5"}


def faults(run: Run) -> list[tuple[str, object]]:
    return [
        ("kill9_ingest", run.kill9("ingest")), ("kill9_publisher", run.kill9("publisher")),
        ("kill9_publisher_tickers", run.kill9_tickers([f"tickers.{s}" for s in TICKERS])),
        ("kill9_persister", run.kill9("persister")), ("kill9_api", run.kill9("api")),
        ("drop_public", run.drop("linear")), ("drop_private", run.drop("private")),
        ("no_pong", run.no_pong("linear")), ("stall", run.stall("linear")),
        ("auth_failure", run.auth_failure()), ("rejected_topic", run.rejected_topic()),
        ("args_size_over_10", run.args_over_10()), ("book_gap", run.book("book_gap")),
        ("book_u1_reset", run.book("book_reset")), ("max_active_time_close", run.max_active_time()),
        ("rest_10006", run.rest_10006()), ("deleted_account_queue", run.delete_account_queue()),
        ("stalled_ingest", run.stalled_ingest()), ("wallet_a_b_a", run.wallet_a_b_a()),
        ("instance_takeover", run.takeover()),
        ("rabbitmq_stop_start", run.rabbitmq_outage()), ("postgres_stop_start", run.postgres_outage()),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=2000, help="public frames/s over all topics")
    ap.add_argument("--account-rate", type=float, default=5, help="simulator account events/s")
    ap.add_argument("--outage", type=float, default=10, help="seconds RabbitMQ / PostgreSQL stay down")
    ap.add_argument("--only", default="", help="comma-separated fault names (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="run the chosen faults this many times")
    ap.add_argument("--out", default=None,
                    help="table file (default docs/bench/faults.md for a full run, none with --only/--repeat)")
    args = ap.parse_args(argv)
    exit_on_sigterm()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    keep = Path(f"/tmp/wsgw-faults-{stamp}")
    own_cluster = os.geteuid() == 0
    results = []
    started = time.monotonic()
    with stores(own_cluster=own_cluster) as (pg_url, amqp_url, cluster):
        gw = BenchGateway(pg_url, amqp_url, **GATEWAY_ENV)
        consumer = None
        try:
            gw.start()
            subscribe(gw, market_requests(TRADE_TOPICS, books=1) + private_requests()
                      + [{"channel": "tickers", "category": "linear", "symbol": s} for s in TICKERS])
            consumer = ConsumerProcess(amqp_url, Path(tempfile.mkdtemp(prefix="wsgw-fc-")))
            run = Run(gw, consumer, account_rate=args.account_rate, cluster=cluster, outage_s=args.outage)
            run.sim_rate(rate=args.rate / (TRADE_TOPICS + 1), account_rate=args.account_rate)
            run.snapshot_subscriptions(BOOK)
            wanted = {n for n in args.only.split(",") if n}
            chosen = [(n, fn) for n, fn in faults(run) if not wanted or n in wanted]
            for name, fn in chosen * args.repeat:
                res = run.measure(name, fn)
                results.append(res)
                print(f"{name}: {'PASS' if res.ok else 'FAIL'} detect {res.detect_s} s, recovered "
                      f"{res.recovered_s} s, gaps {res.market_gaps}, dropped {res.market_dropped}, "
                      f"account missing {res.account_missing or 'none'} {res.missing_examples or ''} {res.error}",
                      flush=True)
        finally:
            try:
                if consumer is not None:
                    consumer.close(remove=True)
            finally:
                gw.stop(keep_dir=keep)
    lines = [f"# Fault run {stamp}", "",
             f"{args.rate:,.0f} public frames/s over {TRADE_TOPICS} trade topics + {BOOK}, simulator account "
             f"at {args.account_rate:g} events/s, outages {args.outage:g} s, ping "
             f"{GATEWAY_ENV['GW_PING_INTERVAL_S']} s / dead after {GATEWAY_ENV['GW_DEAD_AFTER_S']} s. "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
             f"{time.monotonic() - started:.0f} s in all.", "",
             "Detect: fault injected -> the signal named. Recovered: see the column after. Market: `stream_seq` gaps "
             "seen by the consumer / events dropped (publisher + ingest counters). Account: the simulator's "
             "ground truth (`GET /__sim/account`) vs PostgreSQL and the account queues, after the account "
             "is paused (settle s = time until both held it).", ""] + table(results)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = args.out or (None if args.only or args.repeat != 1 else str(ROOT / "docs" / "bench" / "faults.md"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"table written to {out}")
    print(f"gateway logs kept in {keep}")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
