"""The publisher's transport shortcuts (publisher.pika_fast.CorkedConnection) against the real RabbitMQ.

- writes go to the socket at once, and what the kernel does not take goes through pika's
  own buffer: a batch far larger than the socket's send buffer still arrives whole;
- Basic.Ack/Nack frames of the confirm channel reach the Broker directly: every event is
  confirmed, and pika's callback registry never sees a confirm.
"""
from __future__ import annotations

import asyncio
import time

import pika.spec

from common import classify
from publisher.amqp import READY, Broker
from publisher.events import Event


def _event(i: int, body_size: int) -> Event:
    body = b'{"i":%d,"pad":"%s"}' % (i, b"x" * body_size)
    return Event(event_id=f"00000000-0000-8000-8000-{i:012d}", event_class="trades",
                 routing_key="trades.linear.TRANSPORTTEST", body=body,
                 headers={"event_class": "trades", "category": "linear", "symbol": "TRANSPORTTEST",
                          "trace_id": "", "stream_seq": i},
                 persistent=False, timestamp=1_785_000_000, stream="linear:t", stream_seq=i)


async def _publish_all(url: str, events: list[Event]) -> dict:
    out = {"confirmed": 0, "nacked": 0, "registry_confirms": 0, "buffered_after_write": None}
    ready, done = asyncio.Event(), asyncio.Event()

    def on_confirm(settled, ok, _now):
        out["confirmed" if ok else "nacked"] += len(settled)
        if out["confirmed"] + out["nacked"] >= len(events):
            done.set()

    b = Broker(url, on_ready=ready.set, on_confirm=on_confirm, on_lost=lambda *_: None,
               on_return=lambda *_: None)
    b.start()
    try:
        await asyncio.wait_for(ready.wait(), 20)
        assert b.state == READY
        conn = b._conn
        process = conn.callbacks.process

        def spy(prefix, key, *args, **kw):          # pika's registry: must never see a confirm
            if isinstance(key, (pika.spec.Basic.Ack, pika.spec.Basic.Nack)):
                out["registry_confirms"] += 1
            return process(prefix, key, *args, **kw)

        conn.callbacks.process = spy
        b.cork()
        for ev in events:
            b.publish(ev)
        b.uncork()
        out["buffered_after_write"] = conn._transport.get_write_buffer_size()
        await asyncio.wait_for(done.wait(), 60)
        out["bytes_sent"] = conn.bytes_sent
    finally:
        await b.close()
    return out


def test_a_batch_larger_than_the_socket_buffer_arrives_whole_and_confirmed(amqp_url, broker):
    # ``broker`` purges the gateway's queues before and after: the Broker under test declares
    # them, and ws-gateway.trades (bound trades.#) gets a copy of every event sent here.
    inspector = broker
    queue = "wsgw-transport-test"
    try:
        # 3,000 events of ~8 KB: 24 MB in one write, far beyond a loopback socket's send buffer,
        # so the direct send is partial and pika's buffer must carry the rest in order.
        events = [_event(i, 8_000) for i in range(3_000)]
        inspector.ch.exchange_declare(classify.EXCHANGE, exchange_type="topic", durable=True)
        inspector.ch.queue_declare(queue, auto_delete=False)
        inspector.ch.queue_bind(queue, classify.EXCHANGE, routing_key="trades.linear.TRANSPORTTEST")
        out = asyncio.run(_publish_all(amqp_url, events))
        assert out["buffered_after_write"] > 0, "the partial-send path was not exercised"
        assert out["confirmed"] == len(events) and out["nacked"] == 0
        assert out["registry_confirms"] == 0
        deadline = time.monotonic() + 10
        while inspector.count(queue) < len(events) and time.monotonic() < deadline:
            inspector.conn.sleep(0.05)
        got = inspector.drain(queue, n=len(events))
        assert [m[2]["i"] for m in got] == list(range(len(events)))        # whole and in order
        assert [m[1].message_id for m in got[:3]] == [ev.event_id for ev in events[:3]]
        assert all(len(m[2]["pad"]) == 8_000 for m in got)
    finally:
        inspector.ch.queue_delete(queue)
