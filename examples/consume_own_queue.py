#!/usr/bin/env python3
"""Consume your own copy of some streams: declare a queue and bind it to the
ws-gateway.events topic exchange with patterns.

    python examples/consume_own_queue.py --pattern 'orderbook.linear.#'
    python examples/consume_own_queue.py --queue my-svc.trades --pattern 'trades.linear.BTCUSDT' \\
        --pattern 'trades.spot.#' --max-messages 1000

Routing keys: ``{class}.{category}.{symbol}`` for market data,
``{class}.{category}`` (``balances.{accountType}``) for account data,
``system.{kind}`` for the gateway's own events. Without ``--queue`` the queue is
server-named and deleted when this process disconnects; with ``--queue`` it is
durable and keeps collecting while you are away (give it a retention policy).
Manual acks, prefetch, de-duplication on message_id, clean Ctrl-C/SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import OrderedDict

import pika

EXCHANGE = "ws-gateway.events"


def handle(event: dict, routing_key: str) -> None:
    """Your service's work goes here. The example prints one line per event."""
    print(json.dumps({"routing_key": routing_key, "event_id": event["event_id"], "type": event["type"],
                      "stream_seq": event["stream_seq"], "exchange_ts": event["exchange_ts"]}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    ap.add_argument("--pattern", action="append", help="binding pattern, repeatable (default orderbook.linear.#)")
    ap.add_argument("--queue", default="", help="durable queue name (default: a temporary server-named queue)")
    ap.add_argument("--prefetch", type=int, default=200)
    ap.add_argument("--max-messages", type=int, default=0, help="stop after this many (0: run until stopped)")
    ap.add_argument("--idle-timeout", type=float, default=0.0, help="stop after this many idle seconds (0: never)")
    args = ap.parse_args(argv)
    patterns = args.pattern or ["orderbook.linear.#"]

    stop = {"now": False}
    # Ctrl-C and SIGTERM only set a flag, seen within 0.5 s: a KeyboardInterrupt raised inside
    # pika's I/O can leave the channel half-way through a frame, and the cancel below then hangs.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.update(now=True))
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)   # same arguments as the gateway
    if args.queue:
        queue = ch.queue_declare(args.queue, durable=True).method.queue
    else:
        queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
    for pattern in patterns:
        ch.queue_bind(queue, EXCHANGE, routing_key=pattern)
    print(json.dumps({"queue": queue, "patterns": patterns}), file=sys.stderr, flush=True)
    ch.basic_qos(prefetch_count=args.prefetch)
    seen: OrderedDict[str, None] = OrderedDict()
    handled, last = 0, time.monotonic()
    try:
        for method, props, body in ch.consume(queue, inactivity_timeout=0.5):
            if stop["now"]:
                break
            if method is None:
                if args.idle_timeout and time.monotonic() - last > args.idle_timeout:
                    break
                continue
            last = time.monotonic()
            if props.message_id not in seen:          # at-least-once delivery: skip repeats
                seen[props.message_id] = None
                if len(seen) > 100_000:
                    seen.popitem(last=False)
                handle(json.loads(body), method.routing_key)
            ch.basic_ack(method.delivery_tag)
            handled += 1
            if args.max_messages and handled >= args.max_messages:
                break
    finally:
        if ch.is_open:
            ch.cancel()
        if conn.is_open:
            conn.close()
    print(json.dumps({"consumed": handled}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
