#!/usr/bin/env python3
"""End-to-end latency and throughput of the publisher, against the bare-pika ceiling.

Modes:
  --mode publisher (default): envelopes PUSHed straight into ``python -m publisher``
      (recv_ns = push time) -> RabbitMQ -> a consumer process; latency is
      push -> consumer.
  --mode full: the Bybit simulator -> ``python -m ingest`` -> publisher -> consumer;
      latency is ingest's receive time (received_at) -> consumer. Needs PostgreSQL
      (a throwaway database with the migrations and the subscriptions).

Prints a table: p50/p99/max latency at each rate (default 1,000 and 5,000 frames/s) to
the consumer, and "confirm p99 <=": push (or ingest's receive) time -> RabbitMQ's confirm,
the latency target's own measure (docs/performance.md), counted by the publisher for every event in fixed buckets (the
figure is the upper edge of the bucket holding the 99th percentile);
the highest rate with zero loss (ramp), flood throughput, and bare pika's
ceiling measured in the same run. Everything runs in a throwaway vhost.

    .venv/bin/python bench/pipeline.py [--mode publisher|full] [--duration 5]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson
import pika
import zmq

from bench import bare_pika
from common import addresses
from common.envelope import Envelope
from publisher.metrics import percentile_ms

ROOT = Path(__file__).resolve().parent.parent
FRAME = orjson.loads((ROOT / "tests" / "frames" / "public_trade.json").read_bytes())
TOPIC = FRAME["topic"]


def _iso_to_ns(s: str) -> int:
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


# -- consumer process -----------------------------------------------------------------
def consumer(url: str, queue: str, expected: int, idle_s: float, ready, out) -> None:
    """Consume until ``expected`` messages (or ``idle_s`` of silence); report latencies (ms)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2000)
    lat: list[float] = []
    seqs: set[int] = set()
    state = {"last": time.monotonic(), "n": 0, "tag": 0}

    def on_message(ch, method, _props, body):
        now = time.time_ns()
        doc = orjson.loads(body)
        lat.append((now - _iso_to_ns(doc["received_at"])) / 1e6)
        seqs.add(doc["stream_seq"])
        state["n"] += 1
        state["last"] = time.monotonic()
        state["tag"] = method.delivery_tag
        if state["n"] % 200 == 0:
            ch.basic_ack(method.delivery_tag, multiple=True)
            state["tag"] = 0

    ch.basic_consume(queue, on_message)
    ready.set()
    while len(seqs) < expected and time.monotonic() - state["last"] < idle_s:
        conn.process_data_events(time_limit=0.05)
        if state["tag"]:               # ack what this poll took (as bench/_consumer.py does)
            ch.basic_ack(state["tag"], multiple=True)
            state["tag"] = 0
    conn.close()
    out.put({"received": len(seqs), "messages": state["n"], "lat": lat})


# -- pusher process -----------------------------------------------------------------------
def pusher(run_dir: str, rate: float, count: int, first_seq: int, epoch: str, done, taken=None) -> None:
    """PUSH ``count`` trade envelopes at ``rate``/s (0: as fast as possible), then keep the socket
    open until ``taken`` is set (at most 60 s): ZeroMQ discards what a closing socket still queues
    beyond the reader's receive HWM (the publisher's is small), even within the linger time."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 200_000)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(addresses.publisher_frames(Path(run_dir)))
    payloads = []
    for i in range(count):
        frame = dict(FRAME, ts=FRAME["ts"] + first_seq + i)
        payloads.append(orjson.dumps(frame))
    t0 = time.perf_counter()
    for i, payload in enumerate(payloads):
        if rate:
            due = t0 + i / rate
            while (delay := due - time.perf_counter()) > 0:
                time.sleep(min(delay, 0.001))
        sock.send_multipart(Envelope("frame", payload, endpoint="linear", topic=TOPIC, recv_ns=time.time_ns(),
                                     stream_seq=first_seq + i, epoch=epoch).encode())
    done.put(time.perf_counter() - t0)
    if taken is not None:
        taken.wait(60)
    sock.close()
    ctx.term()


# -- harness ------------------------------------------------------------------------------------
class Publisher:
    def __init__(self, run_dir: Path, url: str):
        self.run_dir = run_dir
        env = {**os.environ, "GW_ENV_FILE": "", "RABBITMQ_URL": url, "GW_RUN_DIR": str(run_dir),
               "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"), "LOG_LEVEL": "WARNING"}
        (run_dir / "metrics").mkdir(parents=True, exist_ok=True)
        self.log = open(run_dir / "publisher.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "publisher"], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        # Retention is set with rabbitmqctl, an Erlang VM that takes a core for a second or two:
        # measuring before it is done would measure it.
        self.wait(lambda s: s["broker"]["state"] == "ready" and s["retention"] != "pending", 60)

    def status(self) -> dict:
        return orjson.loads(addresses.status_file(self.run_dir, "publisher").read_bytes())

    def cpu_s(self) -> float:
        """User + system CPU seconds the publisher process has used."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait(self, pred, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                st = self.status()
                if pred(st):
                    return st
            except (FileNotFoundError, orjson.JSONDecodeError):
                pass
            time.sleep(0.1)
        raise TimeoutError("publisher status condition not reached")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def run_rate(url: str, run_dir: Path, rate: float, duration: float, seq: list[int], pub: Publisher) -> dict:
    n = int(rate * duration)
    ctx = mp.get_context("spawn")
    ready, out, done, taken = ctx.Event(), ctx.Queue(), ctx.Queue(), ctx.Event()
    st0 = pub.status()
    dropped0, lat0 = sum(st0["dropped"].values()), st0.get("received_to_confirmed_ms")
    cpu0 = pub.cpu_s()
    c = ctx.Process(target=consumer, args=(url, "ws-gateway.trades", n, 3.0, ready, out))
    c.start()
    ready.wait(20)
    p = ctx.Process(target=pusher, args=(str(run_dir), rate, n, seq[0], "bench", done, taken))
    p.start()
    push_s = done.get(timeout=duration * 10 + 60)
    res = out.get(timeout=120)
    taken.set()
    p.join()
    c.join()
    seq[0] += n
    st1 = pub.status()
    dropped = sum(st1["dropped"].values()) - dropped0
    lat1 = st1.get("received_to_confirmed_ms")
    confirm_p99 = percentile_ms(lat0, lat1, 99) if lat0 and lat1 else None
    lat = res["lat"]
    return {"rate": rate, "sent": n, "received": res["received"], "lost": n - res["received"],
            "dropped": dropped, "achieved": n / push_s, "p50": pct(lat, 50), "p99": pct(lat, 99),
            "max": max(lat) if lat else float("nan"), "cpu_us": (pub.cpu_s() - cpu0) / n * 1e6,
            "confirm_p99": confirm_p99 if confirm_p99 is not None else float("nan")}


def flood(url: str, run_dir: Path, n: int, seq: list[int], pub: Publisher) -> tuple[float, float]:
    """PUSH n envelopes as fast as possible (no consumer); (msg/s until all are in the queue,
    publisher CPU us per event)."""
    cpu0 = pub.cpu_s()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_purge("ws-gateway.trades")
    ctx = mp.get_context("spawn")
    done, taken = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=pusher, args=(str(run_dir), 0, n, seq[0], "bench", done, taken))
    p.start()
    t0 = None
    dropped0, deadline = sum(pub.status()["dropped"].values()), time.monotonic() + 300
    while True:
        count = ch.queue_declare("ws-gateway.trades", passive=True).method.message_count
        if t0 is None and count > 0:
            t0 = time.perf_counter() - count / 20_000   # first messages landed within one poll
        # events the publisher dropped (slower broker) never arrive: stop counting on them
        if count >= n or count + sum(pub.status()["dropped"].values()) - dropped0 >= n \
                or time.monotonic() > deadline:
            break
        conn.sleep(0.01)
    elapsed = time.perf_counter() - t0
    taken.set()
    p.join()
    seq[0] += n
    ch.queue_purge("ws-gateway.trades")
    conn.close()
    return count / elapsed, (pub.cpu_s() - cpu0) / n * 1e6   # throughput of what reached the queue


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("publisher", "full"), default="publisher")
    ap.add_argument("--rates", default="1000,5000", help="latency rates, frames/s")
    ap.add_argument("--ramp", default="10000,15000,20000,25000,30000", help="zero-loss ramp after --rates")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per rate")
    ap.add_argument("--flood", type=int, default=60_000, help="messages for the throughput run (0: skip)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="flood and ceilings run this many times, interleaved; the best of each is kept "
                         "(other work on a shared machine only slows a run down)")
    args = ap.parse_args(argv)
    if args.mode == "full":
        from bench.pipeline_full import run_full  # the simulator -> ingest -> publisher variant
        return run_full(args)

    rows, seq = [], [1]
    with bare_pika.throwaway_vhost() as (_vhost, url), tempfile.TemporaryDirectory(prefix="wsgwb-", dir="/tmp") as d:
        run_dir = Path(d)
        pub = Publisher(run_dir, url)
        try:
            for rate in [float(r) for r in args.rates.split(",") if r]:
                rows.append(run_rate(url, run_dir, rate, args.duration, seq, pub))
            for rate in [float(r) for r in args.ramp.split(",") if r]:
                r = run_rate(url, run_dir, rate, min(args.duration, 3.0), seq, pub)
                rows.append(r)
                if r["lost"] or r["dropped"] or r["achieved"] < 0.95 * rate or r["max"] > 1000:
                    break
            floods, same, cheap = [], [], []
            for _ in range(max(1, args.repeat) if args.flood else 0):
                floods.append(flood(url, run_dir, args.flood, seq, pub))
                same.append(bare_pika.measure(args.flood, 2000, persistent=False, same=True))
                cheap.append(bare_pika.measure(args.flood, 2000, persistent=False))
        finally:
            pub.stop()
    tput, flood_cpu = max(floods) if floods else (None, None)
    ceiling, ceiling_cpu = max(same) if same else bare_pika.measure(60_000, 2000, persistent=False, same=True)
    cheapest, cheapest_cpu = max(cheap) if cheap else bare_pika.measure(60_000, 2000, persistent=False)
    zero_loss = [r["rate"] for r in rows if not r["lost"] and not r["dropped"] and r["max"] <= 1000
                 and r["achieved"] >= 0.95 * r["rate"]]

    print(f"\npublisher-only pipeline (PUSH -> publisher -> RabbitMQ -> consumer), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'rate/s':>8} {'achieved':>9} {'sent':>7} {'recv':>7} {'lost':>5} {'dropped':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'cpu us/ev':>9} {'confirm p99 <=':>14}")
    for r in rows:
        print(f"{r['rate']:>8.0f} {r['achieved']:>9.0f} {r['sent']:>7} {r['received']:>7} {r['lost']:>5} "
              f"{r['dropped']:>7} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.2f} {r['cpu_us']:>9.1f} "
              f"{r['confirm_p99']:>14}")
    print(f"highest rate with zero loss (no drops, max latency <= 1 s): "
          f"{max(zero_loss) if zero_loss else 0:,.0f} frames/s")
    runs = f"best of {len(floods)}, interleaved" if len(floods) > 1 else "one run"
    if tput:
        print(f"flood throughput ({args.flood} transient events, no consumer, {runs}): {tput:,.0f} msg/s, "
              f"publisher CPU {flood_cpu:.1f} us/event")
    print(f"bare pika ceiling (same run, window 2000, the same trade events on the gateway's topology, {runs}): "
          f"{ceiling:,.0f} msg/s, {ceiling_cpu:.1f} us CPU per message")
    print(f"bare pika, cheapest path (default exchange, 2 properties, {runs}): {cheapest:,.0f} msg/s, "
          f"{cheapest_cpu:.1f} us CPU per message")
    if tput:
        print(f"ratio: {tput / ceiling:.2f} (target >= 0.7); against the cheapest path: {tput / cheapest:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
