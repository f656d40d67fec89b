"""The publisher's fast property encoder writes exactly what pika's generic one does."""
from __future__ import annotations

import pika
import pytest

from publisher.amqp import EventProperties, backoff_delay
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


def test_backoff_first_retry_at_once_then_capped_with_jitter():
    assert backoff_delay(0, 30) == 0
    assert [backoff_delay(n, 30, rng=lambda: 1.0) for n in (1, 2, 3, 10)] == [0.5, 1.0, 2.0, 30]
    assert backoff_delay(10, 30, rng=lambda: 0.0) == 15
