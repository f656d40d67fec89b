"""The publisher's pika fast path is fenced: off by setting, or on a pika release it was not
tested with, the publisher uses pika's public API and still delivers every event once."""
from __future__ import annotations

import pytest

from publisher import pika_fast
from tests.publisher.conftest import account_env, market_env
from tests.support import wait_for


def test_fast_path_only_on_the_tested_release(monkeypatch):
    import pika

    assert pika_fast.fast_path(True) == (True, "")
    assert pika_fast.fast_path(False)[0] is False
    monkeypatch.setattr(pika, "__version__", "2.0.0")
    usable, why = pika_fast.fast_path(True)
    assert not usable and "2.0.0" in why


@pytest.mark.timeout(60)
def test_publisher_delivers_through_the_public_api_when_the_fast_path_is_off(publisher, broker):
    pub = publisher(PUBLISHER_FAST_PATH="off")
    for i in range(1, 201):
        pub.push(market_env(i))
        if i % 4 == 0:
            pub.push(account_env(i // 4))
    wait_for(lambda: pub.total("confirmed") == 250, timeout=20, message="250 confirmed")
    assert pub.status()["broker"]["path"].startswith("pika public API")
    trades = broker.drain("ws-gateway.trades", 200)
    orders = broker.drain("ws-gateway.order_status", 50)
    assert len({p.message_id for _m, p, _b in trades}) == 200 and len({p.message_id for _m, p, _b in orders}) == 50
    assert [b["stream_seq"] for _m, _p, b in orders] == list(range(1, 51))
    assert all(p.content_type == "application/json" and p.headers["event_class"] == "trades" for _m, p, _b in trades)
    assert pub.stop() == 0
