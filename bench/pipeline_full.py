"""``bench/pipeline.py --mode full``: simulator -> ingest -> publisher -> consumer.

A throwaway PostgreSQL database (migrations applied, K linear trade
subscriptions inserted) and a throwaway RabbitMQ vhost; ``python -m bybitsim``,
``python -m publisher`` and ``python -m ingest`` as processes. The simulator's
per-topic rate is set to rate / K through its control API. Latency is ingest's
receive time (``received_at``) -> consumer; loss is counted from ``stream_seq``
holes per stream inside each measuring window.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pika
import psycopg2

from bench import bare_pika
from bench.pipeline import ROOT, Publisher, _iso_to_ns, pct
from tests.support.stores import apply_migrations, create_database, drop_database

TOPICS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def consume_window(url: str, warmup: float, duration: float, ready, out) -> None:
    """Consume ws-gateway.trades; measure only messages received in [warmup, warmup+duration)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2000)
    lat, seqs, state = [], {}, {"n": 0}
    t0 = time.monotonic()

    def on_message(ch, method, _props, body):
        now = time.monotonic()
        doc = orjson.loads(body)
        state["n"] += 1
        if state["n"] % 500 == 0:
            ch.basic_ack(method.delivery_tag, multiple=True)
        state["tag"] = method.delivery_tag
        if warmup <= now - t0 < warmup + duration:
            lat.append((time.time_ns() - _iso_to_ns(doc["received_at"])) / 1e6)
            seqs.setdefault(doc["topic"], set()).add(doc["stream_seq"])

    ch.basic_consume("ws-gateway.trades", on_message)
    ready.set()
    while time.monotonic() - t0 < warmup + duration:
        conn.process_data_events(time_limit=0.1)
    if state.get("tag"):
        ch.basic_ack(state["tag"], multiple=True)
    conn.close()
    lost = sum(max(s) - min(s) + 1 - len(s) for s in seqs.values() if s)
    out.put({"received": sum(len(s) for s in seqs.values()), "lost": lost, "lat": lat})


def _spawn(module: str, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)


def run_full(args) -> int:
    db = f"wsgw_bench_{uuid.uuid4().hex[:8]}"
    pg_url = create_database(db)
    procs: list[subprocess.Popen] = []
    rows = []
    try:
        apply_migrations(pg_url)
        conn = psycopg2.connect(pg_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            for i in range(TOPICS):
                sym = f"B{i}USDT"
                cur.execute("INSERT INTO subscriptions (channel, endpoint, category, symbol, topic) "
                            "VALUES ('trades', 'linear', 'linear', %s, %s)", (sym, f"publicTrade.{sym}"))
        conn.close()
        with bare_pika.throwaway_vhost() as (_vh, url), \
                tempfile.TemporaryDirectory(prefix="wsgwf-", dir="/tmp") as d:
            run_dir = Path(d)
            port = _free_port()
            base = {k: v for k, v in os.environ.items() if not k.startswith(("BYBIT_", "GW_", "SIM_"))}
            base.update({"GW_ENV_FILE": "", "BYBIT_ENV": "sim", "SIM_PORT": str(port), "SIM_RATE": "0",
                         "SIM_ACCOUNT_RATE": "0", "GW_RUN_DIR": str(run_dir), "DATABASE_URL": pg_url,
                         "RABBITMQ_URL": url, "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"),
                         "GW_LOG_LEVEL": "WARNING", "LOG_LEVEL": "WARNING"})
            (run_dir / "metrics").mkdir()
            procs.append(_spawn("bybitsim", base, run_dir / "sim.log"))
            pub = Publisher(run_dir, url)
            procs.append(pub.proc)
            procs.append(_spawn("ingest", base, run_dir / "ingest.log"))
            sim = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:   # every subscription live on the simulator
                try:
                    if len(sim.get("/__sim/state").json()["subscribed"]["linear"]) >= TOPICS:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            ctx = mp.get_context("spawn")
            rates = [float(r) for r in args.rates.split(",") if r]
            ramp = [float(r) for r in args.ramp.split(",") if r]
            best = None
            for i, rate in enumerate(rates + ramp):
                sim.post("/__sim/rate", json={"rate": rate / TOPICS}).raise_for_status()
                ready, out = ctx.Event(), ctx.Queue()
                duration = args.duration if i < len(rates) else min(args.duration, 3.0)
                cpu0 = pub.cpu_s()
                sent0 = sum(sim.get("/__sim/state").json()["frames_sent"].values())
                c = ctx.Process(target=consume_window, args=(url, 1.0, duration, ready, out))
                c.start()
                res = out.get(timeout=duration + 120)
                c.join()
                lat = res["lat"]
                sent = sum(sim.get("/__sim/state").json()["frames_sent"].values()) - sent0
                r = {"rate": rate, "sim_sent": sent / (duration + 1.0), "achieved": res["received"] / duration, "received": res["received"],
                     "lost": res["lost"], "p50": pct(lat, 50), "p99": pct(lat, 99),
                     "max": max(lat) if lat else float("nan"),
                     "cpu_us": (pub.cpu_s() - cpu0) / max(res["received"], 1) * 1e6}
                rows.append(r)
                ok = not r["lost"] and r["achieved"] >= 0.9 * rate and r["max"] <= 1000
                if i >= len(rates):
                    if not ok:
                        break
                    best = rate
                elif ok:
                    best = max(best or 0, rate)
            sim.post("/__sim/rate", json={"rate": 0})
            st = pub.status()
            for p in procs[::-1]:
                p.terminate()
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        ceiling, ceiling_cpu = bare_pika.measure(60_000, 2000, persistent=False, same=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        drop_database(db)

    print(f"\nfull pipeline (simulator -> ingest -> publisher -> RabbitMQ -> consumer), {TOPICS} topics, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'rate/s':>8} {'sim /s':>7} {'achieved':>9} {'recv':>7} {'lost':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'pub cpu us/ev':>13}")
    for r in rows:
        print(f"{r['rate']:>8.0f} {r['sim_sent']:>7.0f} {r['achieved']:>9.0f} {r['received']:>7} {r['lost']:>5} {r['p50']:>8.2f} "
              f"{r['p99']:>8.2f} {r['max']:>8.2f} {r['cpu_us']:>13.1f}")
    print(f"highest rate with zero loss (max latency <= 1 s): {best or 0:,.0f} frames/s")
    print(f"publisher dropped: {st['dropped']}, stream gaps: {st['stream_gaps']}")
    print(f"bare pika ceiling (same run, window 2000, the same trade events on the gateway's topology): "
          f"{ceiling:,.0f} msg/s, "
          f"{ceiling_cpu:.1f} us CPU per message")
    return 0
