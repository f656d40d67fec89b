#!/usr/bin/env python3
"""Consume a shared ws-gateway queue (a work queue: several instances of one
service share its messages).

    python examples/consume_shared.py --event-class trades
    python examples/consume_shared.py --event-class order_status --prefetch 50 --max-messages 100

Manual acks after handling, a prefetch window, de-duplication on message_id
(delivery is at least once: a publisher reconnect may re-send an event with
the same id), a clean stop on Ctrl-C or SIGTERM. Needs only pika.
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

EVENT_CLASSES = ("trades", "tickers", "orderbook", "orderbook_rpi", "klines", "liquidations", "price_limits",
                 "insurance", "adl_alerts", "order_status", "executions", "executions_fast", "positions",
                 "balances", "greeks", "exchange_status", "system")


class Seen:
    """The last ``size`` message ids, to drop re-deliveries of the same event."""

    def __init__(self, size: int = 100_000):
        self.size, self.ids = size, OrderedDict()

    def add(self, message_id: str | None) -> bool:
        if not message_id:
            return True
        if message_id in self.ids:
            return False
        self.ids[message_id] = None
        if len(self.ids) > self.size:
            self.ids.popitem(last=False)
        return True


def handle(event: dict, routing_key: str) -> None:
    """Your service's work goes here. The example prints one line per event."""
    print(json.dumps({"routing_key": routing_key, "event_id": event["event_id"], "type": event["type"],
                      "symbol": event["symbol"], "stream_seq": event["stream_seq"],
                      "received_at": event["received_at"]}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    ap.add_argument("--event-class", choices=EVENT_CLASSES, default="trades")
    ap.add_argument("--prefetch", type=int, default=200)
    ap.add_argument("--max-messages", type=int, default=0, help="stop after this many (0: run until stopped)")
    ap.add_argument("--idle-timeout", type=float, default=0.0, help="stop after this many idle seconds (0: never)")
    args = ap.parse_args(argv)

    stop = {"now": False}
    # Ctrl-C and SIGTERM only set a flag, seen within 0.5 s: a KeyboardInterrupt raised inside
    # pika's I/O can leave the channel half-way through a frame, and the cancel below then hangs.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.update(now=True))
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=args.prefetch)
    queue = f"ws-gateway.{args.event_class}"
    seen, handled, last = Seen(), 0, time.monotonic()
    try:
        # The generator services heartbeats while it waits.
        for method, props, body in ch.consume(queue, inactivity_timeout=0.5):
            if stop["now"]:
                break
            if method is None:
                if args.idle_timeout and time.monotonic() - last > args.idle_timeout:
                    break
                continue
            last = time.monotonic()
            if seen.add(props.message_id):
                handle(json.loads(body), method.routing_key)
            ch.basic_ack(method.delivery_tag)   # after handling: a crash re-delivers, never loses
            handled += 1
            if args.max_messages and handled >= args.max_messages:
                break
    finally:
        if ch.is_open:
            ch.cancel()   # unacked prefetched messages go back to the queue
        if conn.is_open:
            conn.close()
    print(json.dumps({"consumed": handled}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
