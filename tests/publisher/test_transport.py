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


def _reader(channel: int):
    """A CorkedConnection with no socket: only what its confirm reader touches, and pika's own
    reader (``_on_data_available``) for the bytes it leaves, recorded as frames."""
    from publisher.pika_fast import CorkedConnection

    conn = object.__new__(CorkedConnection)
    conn._frame_buffer = b""
    conn.bytes_received = conn.frames_received = 0
    got: dict[str, list] = {"acks": [], "frames": []}
    conn.on_confirm_frames(channel, lambda acks: got["acks"].append(acks))
    conn._process_frame = lambda f: got["frames"].append(f)     # what pika's reader decoded
    return conn, got


def _marshal(channel: int, method) -> bytes:
    return pika.frame.Method(channel, method).marshal()       # pika's encoder: the oracle


def test_confirm_frames_are_read_from_the_bytes_as_pika_would_decode_them():
    import pika.frame

    conn, got = _reader(1)
    acks = [pika.spec.Basic.Ack(delivery_tag=7), pika.spec.Basic.Ack(delivery_tag=2 ** 40, multiple=True),
            pika.spec.Basic.Nack(delivery_tag=9, multiple=True, requeue=False),
            pika.spec.Basic.Nack(delivery_tag=10, multiple=False, requeue=True)]
    data = b"".join(_marshal(1, m) for m in acks)
    conn._on_data_available(data)
    assert got["acks"] == [[(7, False, True), (2 ** 40, True, True), (9, True, False), (10, False, False)]]
    assert got["frames"] == []
    assert conn.bytes_received == len(data) and conn.frames_received == 4


def test_anything_else_and_what_follows_it_goes_to_pikas_reader_in_order():
    import pika.frame

    conn, got = _reader(1)
    other_channel = _marshal(2, pika.spec.Basic.Ack(delivery_tag=3))
    ack = _marshal(1, pika.spec.Basic.Ack(delivery_tag=4))
    close = _marshal(1, pika.spec.Channel.Close(reply_code=406, reply_text="x", class_id=0, method_id=0))
    conn._on_data_available(ack + other_channel + ack)
    conn._on_data_available(close + ack[:10])            # a frame cut short: pika buffers the rest
    conn._on_data_available(ack[10:])
    assert got["acks"] == [[(4, False, True)]]
    kinds = [(f.channel_number, f.method.NAME, getattr(f.method, "delivery_tag", None)) for f in got["frames"]]
    assert kinds == [(2, "Basic.Ack", 3), (1, "Basic.Ack", 4), (1, "Channel.Close", None), (1, "Basic.Ack", 4)]
    assert conn.bytes_received == 3 * len(ack) + len(other_channel) + len(close)
