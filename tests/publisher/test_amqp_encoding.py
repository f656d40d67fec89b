"""The publisher's fast encoders (properties, whole publish) write exactly what pika's generic ones do."""
from __future__ import annotations

import pika
import pika.exceptions
import pytest
from pika.callback import CallbackManager
from pika.channel import Channel

from common import classify
from publisher.amqp import Broker, backoff_delay
from publisher.pika_fast import CorkedConnection, EventProperties
from tests.publisher.test_events import env_for
from publisher.pipeline import Pipeline


@pytest.mark.parametrize("name,endpoint", [("public_trade", "linear"), ("order", "private"),
                                           ("ticker_linear_snapshot", "linear"), ("wallet", "private")])
def test_event_properties_match_pika(name, endpoint):
    [ev] = Pipeline().process(env_for(name, endpoint))
    ev.headers["changed_keys"] = "markPrice,bid1Size"
    ev.headers["big"] = 2**40
    fast = EventProperties(ev.event_id, ev.timestamp, ev.headers, 2 if ev.persistent else 1)
    ref = pika.BasicProperties(content_type="application/json", message_id=ev.event_id, timestamp=ev.timestamp,
                               headers=ev.headers, delivery_mode=2 if ev.persistent else 1)
    assert b"".join(fast.encode()) == b"".join(ref.encode())
    decoded = pika.BasicProperties()
    decoded.decode(b"".join(fast.encode()))
    assert decoded.headers == ev.headers and decoded.message_id == ev.event_id


@pytest.mark.parametrize("seq", [1, 2**31 - 1, 2**31, -2**31, 2**40])
def test_event_properties_of_one_stream_match_pika_whatever_its_number(seq):
    """A stream's headers but its number are encoded once and kept: the number is still its own."""
    [ev] = Pipeline().process(env_for("public_trade", "linear"))
    for n in (7, seq, 8):
        ev.headers["stream_seq"] = n
        fast = EventProperties(ev.event_id, ev.timestamp, ev.headers, 1).encode_bytes()
        ref = pika.BasicProperties(content_type="application/json", message_id=ev.event_id, timestamp=ev.timestamp,
                                   headers=ev.headers, delivery_mode=1)
        assert fast == b"".join(ref.encode())
    ev.headers["stream_seq"] = "7"
    with pytest.raises(TypeError):
        EventProperties(ev.event_id, ev.timestamp, ev.headers, 1).encode_bytes()


def test_backoff_first_retry_at_once_then_capped_with_jitter():
    assert backoff_delay(0, 30) == 0
    assert [backoff_delay(n, 30, rng=lambda: 1.0) for n in (1, 2, 3, 10)] == [0.5, 1.0, 2.0, 30]
    assert backoff_delay(10, 30, rng=lambda: 0.0) == 15


class _CaptureConnection(CorkedConnection):
    """A pika connection without a socket: what would be written is collected."""

    def __init__(self, body_max: int):
        self.written: list[bytes] = []
        self.bytes_sent = self.frames_sent = 0
        self._body_max_length = body_max
        self.connection_state = self.CONNECTION_OPEN
        self.callbacks = CallbackManager()

    def _adapter_emit_data(self, data: bytes) -> None:
        self.written.append(data)


def _open_channel(conn, number: int) -> Channel:
    ch = Channel(conn, number, lambda *_: None)
    ch._state = ch.OPEN
    return ch


@pytest.mark.parametrize("body_max", [131_064, 100, 7])
def test_publish_writes_exactly_what_pika_basic_publish_writes(body_max):
    evs = []
    for name, endpoint in [("public_trade", "linear"), ("order", "private"), ("wallet", "private"),
                           ("ticker_linear_snapshot", "linear"), ("public_trade", "linear")]:
        evs.extend(Pipeline().process(env_for(name, endpoint)))
    evs[-1].body = b""     # no body frame at all
    mine, ref = _CaptureConnection(body_max), _CaptureConnection(body_max)
    broker = Broker("amqp://guest:guest@127.0.0.1:5672/%2F", on_ready=lambda: None, on_confirm=lambda *_: None,
                    on_lost=lambda *_: None, on_return=lambda *_: None)
    broker._conn, broker._ch = mine, _open_channel(mine, 3)
    ref_ch = _open_channel(ref, 3)
    for ev in evs + evs:          # the second round uses the cached method frames
        broker.publish(ev)
        props = pika.BasicProperties(content_type="application/json", message_id=ev.event_id,
                                     timestamp=ev.timestamp, headers=ev.headers,
                                     delivery_mode=2 if ev.persistent else 1)
        ref_ch.basic_publish(classify.EXCHANGE, ev.routing_key, ev.body, props, mandatory=True)
    assert b"".join(mine.written) == b"".join(ref.written)
    assert (mine.bytes_sent, mine.frames_sent) == (ref.bytes_sent, ref.frames_sent)
    assert list(broker.inflight) == list(range(1, 2 * len(evs) + 1))


def test_publish_on_a_closed_channel_raises_pikas_error():
    conn = _CaptureConnection(131_064)
    broker = Broker("amqp://guest:guest@127.0.0.1:5672/%2F", on_ready=lambda: None, on_confirm=lambda *_: None,
                    on_lost=lambda *_: None, on_return=lambda *_: None)
    ch = _open_channel(conn, 1)
    ch._state = ch.CLOSED
    broker._conn, broker._ch = conn, ch
    [ev] = Pipeline().process(env_for("public_trade", "linear"))
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        broker.publish(ev)
    assert conn.written == [] and not broker.inflight
