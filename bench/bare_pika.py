#!/usr/bin/env python3
"""The ceiling: a bare pika publisher with asynchronous confirms.

One AsyncioConnection, confirm mode, a bounded in-flight window (like the
publisher's PUBLISHER_CONFIRM_WINDOW), N messages in a throwaway vhost (created and
deleted with rabbitmqctl). Prints msg/s. Two kinds of message:

- ``--same``: the gateway's own trade event (body, properties, routing key, mandatory)
  on the gateway's topology. The broker does the same work per message as for the
  publisher, so this is the ceiling ``bench/pipeline.py`` compares against.
- default: a ~600-byte body with two properties into one queue via the default
  exchange, the cheapest path through RabbitMQ (about half the broker CPU per message
  measured here); printed as a reference.

    .venv/bin/python bench/bare_pika.py --messages 100000 --window 2000 [--persistent] [--same]
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from common import classify

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


def gateway_message():
    """(exchange, routing key, body, properties) of one event exactly as the publisher sends it:
    the recorded public trade turned into its contract body by the publisher's pipeline, with
    pika's own BasicProperties (content type, message id, timestamp, the five headers)."""
    from common.envelope import Envelope
    from publisher.pipeline import Pipeline

    root = Path(__file__).resolve().parent.parent
    payload = (root / "tests" / "frames" / "public_trade.json").read_bytes()
    [ev] = Pipeline().process(Envelope("frame", payload, endpoint="linear", topic="publicTrade.BTCUSDT",
                                       recv_ns=time.time_ns(), stream_seq=1, epoch="bench"))
    props = pika.BasicProperties(content_type="application/json", message_id=ev.event_id, timestamp=ev.timestamp,
                                 headers=ev.headers, delivery_mode=2 if ev.persistent else 1)
    return classify.EXCHANGE, ev.routing_key, ev.body, props


async def publish(url: str, n: int, window: int, persistent: bool, same: bool = False) -> tuple[float, float]:
    """Publish n messages with async confirms; returns (msg/s first publish -> last confirm,
    CPU us per message in this process).

    ``same``: the gateway's messages on the gateway's topology (topic exchange, a queue per
    event class bound ``<class>.#``, mandatory, the contract's properties), so the broker does
    the same work per message as for the publisher. Otherwise: a ~600-byte body with two
    properties to the default exchange, straight into one queue (the cheapest path).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    state = {"tag": 0, "sent": 0, "confirmed": 0, "t0": 0.0, "ch": None}
    inflight: dict[int, None] = {}
    if same:
        exchange, key, body, props = gateway_message()
    else:
        exchange, key, body = "", "bench", BODY
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2 if persistent else 1)

    def pump():
        ch = state["ch"]
        while state["sent"] < n and len(inflight) < window:
            state["sent"] += 1
            ch.basic_publish(exchange, key, body, props, mandatory=same)
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

    def on_declared(_frame=None):
        state["t0"] = time.perf_counter()
        state["cpu0"] = time.process_time()
        pump()

    def declare(ch):
        if not same:
            ch.queue_declare("bench", durable=True, callback=on_declared)
            return
        steps = [lambda cb: ch.exchange_declare(classify.EXCHANGE, exchange_type="topic", durable=True, callback=cb)]
        for cls in classify.EVENT_CLASSES:
            q = classify.queue_name(cls)
            steps.append(lambda cb, q=q: ch.queue_declare(q, durable=True, callback=cb))
            steps.append(lambda cb, q=q, c=cls: ch.queue_bind(q, classify.EXCHANGE, routing_key=f"{c}.#", callback=cb))

        def run(i: int) -> None:
            if i == len(steps):
                on_declared()
            else:
                steps[i](lambda _frame: run(i + 1))
        run(0)

    def on_channel(ch):
        state["ch"] = ch
        ch.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda _f: declare(ch))

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


def measure(n: int = 100_000, window: int = 2000, persistent: bool = False, same: bool = False) -> tuple[float, float]:
    with throwaway_vhost() as (_vhost, url):
        return asyncio.run(publish(url, n, window, persistent, same))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="bare pika publisher with async confirms")
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--persistent", action="store_true")
    ap.add_argument("--same", action="store_true", help="the gateway's messages and topology (see publish())")
    args = ap.parse_args(argv)
    rate, cpu_us = measure(args.messages, args.window, args.persistent, args.same)
    mode = "gateway trade" if args.same else ("persistent" if args.persistent else "transient")
    print(f"bare pika, async confirms, window {args.window}, {args.messages} {mode} messages: {rate:,.0f} msg/s, "
          f"{cpu_us:.1f} us CPU per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
