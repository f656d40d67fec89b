#!/usr/bin/env python3
"""The reference for the overload table: the least a forwarder can do, measured beside the gateway.

One process, one asyncio loop: a websockets client on the simulator's public socket (the same
topics the gateway holds) and a pika AsyncioConnection in confirm mode on the same broker,
vhost and topology, read by the same consumer process. Per frame: parse it (the topic names
the routing key), wrap the raw bytes as ``data`` in a body the consumer can measure
(``event_class``, ``received_at``, ``exchange_ts``, ``stream_seq``), ``basic_publish`` it (public pika API,
mandatory, the contract's properties) and count the confirm. At most ``--window`` messages
unconfirmed; when the window is full it stops reading the socket, so TCP pushes back on the
simulator (which skips what it cannot send: the rate it reaches is what this forwarder carries).

``--discard``: read and drop every frame (no broker): how fast the simulator plus one reader go
on this machine, i.e. whether the exchange side is the bottleneck.

Runs until SIGTERM; every 0.5 s writes ``{"read", "published", "confirmed", "cpu_s", "at"}``
to ``--status`` (JSON).

    .venv/bin/python bench/bare_forwarder.py ws://127.0.0.1:PORT/v5/public/linear AMQP_URL \
        --topics publicTrade.T0USDT,orderbook.50.B0USDT --status /tmp/bare.json
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import orjson
import pika
import websockets
from pika.adapters.asyncio_connection import AsyncioConnection

from common import classify


def iso(ns: int) -> bytes:
    sec, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode() + b".%06dZ" % (rem // 1000)


async def forward(ws_url: str, amqp_url: str | None, topics: list[str], window: int, status: Path) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    st = {"read": 0, "published": 0, "confirmed": 0}
    inflight: dict[int, None] = {}
    room = asyncio.Event()
    room.set()
    seq: dict[str, int] = {}
    routes: dict[str, tuple[str, bytes]] = {}
    ch_box: dict = {}

    async def write_status() -> None:
        while not stop.is_set():
            tmp = status.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps({**st, "cpu_s": time.process_time(), "at": time.time()}))
            os.replace(tmp, status)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    if amqp_url:
        opened: asyncio.Future = loop.create_future()

        def on_confirm(frame) -> None:
            m = frame.method
            if m.multiple:
                while inflight:
                    tag = next(iter(inflight))
                    if tag > m.delivery_tag:
                        break
                    del inflight[tag]
                    st["confirmed"] += 1
            elif m.delivery_tag in inflight:
                del inflight[m.delivery_tag]
                st["confirmed"] += 1
            if len(inflight) < window:
                room.set()

        def declared(ch) -> None:
            steps = [lambda cb: ch.exchange_declare(classify.EXCHANGE, exchange_type="topic", durable=True,
                                                    callback=cb)]
            for cls in classify.EVENT_CLASSES:
                q = classify.queue_name(cls)
                steps.append(lambda cb, q=q: ch.queue_declare(q, durable=True, callback=cb))
                steps.append(lambda cb, q=q, c=cls: ch.queue_bind(q, classify.EXCHANGE, routing_key=f"{c}.#",
                                                                  callback=cb))

            def run(i: int) -> None:
                if i == len(steps):
                    ch_box["ch"] = ch
                    opened.set_result(None)
                else:
                    steps[i](lambda _f: run(i + 1))
            run(0)

        def on_channel(ch) -> None:
            ch.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda _f: declared(ch))

        def on_error(_conn, exc) -> None:
            if not opened.done():
                opened.set_exception(RuntimeError(f"broker: {exc!r}"))
            stop.set()

        conn = AsyncioConnection(pika.URLParameters(amqp_url), on_open_callback=lambda c: c.channel(
            on_open_callback=on_channel), on_open_error_callback=on_error, on_close_callback=on_error,
            custom_ioloop=loop)
        await opened

    status_task = asyncio.create_task(write_status())
    async with websockets.connect(ws_url, max_size=None, ping_interval=None) as ws:
        for i in range(0, len(topics), 10):
            await ws.send(orjson.dumps({"op": "subscribe", "args": topics[i:i + 10]}).decode())

        async def pinger() -> None:
            while True:
                await asyncio.sleep(15)
                await ws.send('{"op":"ping"}')

        ping_task = asyncio.create_task(pinger())
        ch = ch_box.get("ch")

        async def pump() -> None:
            tag = 0
            recv, publish = ws.recv, ch.basic_publish if ch is not None else None
            while True:
                if not room.is_set():
                    await room.wait()
                raw = await recv(decode=False)
                recv_ns = time.time_ns()
                st["read"] += 1
                if publish is None:
                    continue
                frame = orjson.loads(raw)
                topic = frame.get("topic")
                if not isinstance(topic, str):
                    continue                      # subscribe acks, pongs
                route = routes.get(topic)
                if route is None:
                    cls, _cat, _sym, key = classify.public_route("linear", topic)
                    route = routes[topic] = (key, cls.encode())
                key, cls = route
                n = seq[key] = seq.get(key, 0) + 1
                ts = frame.get("ts")
                body = (b'{"event_class":"' + cls + b'","received_at":"' + iso(recv_ns) + b'","exchange_ts":'
                        + (str(ts).encode() if ts.__class__ is int else b"null") + b',"stream_seq":'
                        + str(n).encode() + b',"stream_epoch":"bare","data":' + raw + b"}")
                publish(classify.EXCHANGE, key, body, pika.BasicProperties(
                    content_type="application/json", message_id=f"bare-{key}-{n}", timestamp=recv_ns // 10 ** 9,
                    headers={"event_class": cls.decode(), "stream_seq": n}, delivery_mode=1), mandatory=True)
                st["published"] += 1
                tag += 1
                inflight[tag] = None
                if len(inflight) >= window:
                    room.clear()

        task = asyncio.create_task(pump())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, stopping, ping_task):
                t.cancel()
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()
    stop.set()
    await status_task
    if amqp_url and ch_box.get("ch") is not None:
        conn.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ws_url")
    ap.add_argument("amqp_url", nargs="?")
    ap.add_argument("--topics", required=True, help="comma-separated Bybit topics")
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--status", required=True)
    ap.add_argument("--discard", action="store_true", help="read and drop (no broker)")
    args = ap.parse_args(argv)
    asyncio.run(forward(args.ws_url, None if args.discard else args.amqp_url, args.topics.split(","),
                        args.window, Path(args.status)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
