#!/usr/bin/env python3
"""The ceiling: a bare pika publisher with asynchronous confirms.

One AsyncioConnection, confirm mode, a bounded in-flight window (like the
publisher's PUBLISHER_CONFIRM_WINDOW), N messages of ~600 bytes to one durable
queue in a throwaway vhost (created and deleted with rabbitmqctl). Prints msg/s.

    .venv/bin/python bench/bare_pika.py --messages 100000 --window 2000 [--persistent]
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

AMQP_BASE = "amqp://guest:guest@127.0.0.1:5672"
BODY = b'{"event_class":"trades","data":[' + b'{"T":1785000001231,"s":"BTCUSDT","S":"Buy","v":"0.015"},' * 9 + b'{}]}'


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def throwaway_vhost(prefix: str = "wsgw-bench"):
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost, f"{AMQP_BASE}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


async def publish(url: str, n: int, window: int, persistent: bool) -> tuple[float, float]:
    """Publish n messages with async confirms; returns (msg/s first publish -> last confirm,
    CPU us per message in this process)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    state = {"tag": 0, "sent": 0, "confirmed": 0, "t0": 0.0, "ch": None}
    inflight: dict[int, None] = {}
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2 if persistent else 1)

    def pump():
        ch = state["ch"]
        while state["sent"] < n and len(inflight) < window:
            state["sent"] += 1
            ch.basic_publish("", "bench", BODY, props)
            state["tag"] += 1
            inflight[state["tag"]] = None

    def on_confirm(frame):
        m = frame.method
        if m.multiple:
            while inflight:
                tag = next(iter(inflight))
                if tag > m.delivery_tag:
                    break
                del inflight[tag]
                state["confirmed"] += 1
        elif inflight.pop(m.delivery_tag, 0) is None:
            state["confirmed"] += 1
        if state["confirmed"] >= n and not done.done():
            done.set_result((time.perf_counter() - state["t0"], time.process_time() - state["cpu0"]))
        else:
            pump()

    def on_declared(_frame):
        state["t0"] = time.perf_counter()
        state["cpu0"] = time.process_time()
        pump()

    def on_channel(ch):
        state["ch"] = ch
        ch.confirm_delivery(ack_nack_callback=on_confirm,
                            callback=lambda _f: ch.queue_declare("bench", durable=True, callback=on_declared))

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_error(_conn, exc):
        if not done.done():
            done.set_exception(RuntimeError(f"connection failed: {exc!r}"))

    conn = AsyncioConnection(pika.URLParameters(url), on_open_callback=on_open, on_open_error_callback=on_error,
                             on_close_callback=on_error, custom_ioloop=loop)
    elapsed, cpu = await done
    conn.close()
    return n / elapsed, cpu / n * 1e6


def measure(n: int = 100_000, window: int = 2000, persistent: bool = False) -> tuple[float, float]:
    with throwaway_vhost() as (_vhost, url):
        return asyncio.run(publish(url, n, window, persistent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="bare pika publisher with async confirms")
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--persistent", action="store_true")
    args = ap.parse_args(argv)
    rate, cpu_us = measure(args.messages, args.window, args.persistent)
    mode = "persistent" if args.persistent else "transient"
    print(f"bare pika, async confirms, window {args.window}, {args.messages} {mode} messages: {rate:,.0f} msg/s, "
          f"{cpu_us:.1f} us CPU per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
