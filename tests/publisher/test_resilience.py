"""Broker outage and kill -9 of the publisher under load, against the real broker.

The outage test stops the shared RabbitMQ app for a few seconds (restored in
``finally``); keep it short, other suites use the same broker.
"""
from __future__ import annotations

import os
import signal
import threading

import pytest
import zmq

from tests.publisher.conftest import Broker, PublisherProc, account_env, frame_seq, market_env
from tests.support import free_port, wait_for
from tests.support.stores import rabbitmqctl


def _ids_by_seq(messages, name: str = "") -> dict[int, set[str]]:
    """message ids per seq: the consumer's ``stream_seq`` or, with ``name``, the frame each came from."""
    out: dict[int, set[str]] = {}
    for _m, props, body in messages:
        out.setdefault(frame_seq(body, name) if name else body["stream_seq"], set()).add(props.message_id)
    return out


def _drain_until(broker: Broker, queue: str, name: str, last: int, timeout: float = 30.0) -> list:
    """Everything in ``queue`` up to and including the event of frame ``last``."""
    got: list = []
    wait_for(lambda: got.extend(broker.drain(queue, None, timeout=2)) or last in _ids_by_seq(got, name),
             timeout, interval=0.1, message=f"{queue}: the event of the last frame pushed ({last})")
    return got


def _drop_ranges(system, stream: str) -> list[dict]:
    """The ranges of ``stream`` (routing key) the system queue's drop announcements name."""
    return [b["data"]["dropped_streams"][stream] for m, _p, b in system
            if m.routing_key in ("system.broker_outage", "system.events_dropped")
            and stream in b["data"]["dropped_streams"]]


@pytest.mark.destructive
@pytest.mark.timeout(150)
def test_broker_outage_keeps_account_events_and_counts_market_drops(publisher, broker, amqp_url):
    pub = publisher(PUBLISHER_BUFFER=500)
    m_seq, a_seq, again = 0, 0, 0

    def push(markets: int, accounts: int, ratio: int = 10) -> None:
        nonlocal m_seq, a_seq, again
        for i in range(markets):
            m_seq += 1
            try:
                pub.push(market_env(m_seq), block=False)
            except zmq.Again:
                again += 1
            if i % ratio == 0 and accounts:
                accounts -= 1
                a_seq += 1
                pub.push(account_env(a_seq), block=False)

    push(200, 20)
    wait_for(lambda: pub.total("confirmed") == 220, timeout=15, message="phase 1 confirmed")
    received_m = broker.drain("ws-gateway.trades", 200)
    received_a = broker.drain("ws-gateway.order_status", 20)
    broker.close()

    rabbitmqctl("stop_app")
    try:
        wait_for(lambda: pub.status()["broker"]["state"] != "ready", timeout=15, message="publisher sees outage")
        push(1500, 100, ratio=15)
        wait_for(lambda: pub.status()["events_in"]["frame"] == 1820, timeout=10, message="outage frames taken")
        st = pub.status()
        assert st["buffered"] <= 500 and st["dropped"].get("trades", 0) >= 1000
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    wait_for(lambda: pub.status()["broker"]["state"] == "ready", timeout=30, message="publisher reconnected")
    push(200, 20)
    wait_for(lambda: (s := pub.status())["buffered"] == 0 and s["unconfirmed"] == 0
             and s["events_in"]["frame"] == m_seq + a_seq, timeout=30, message="all confirmed after outage")

    after = Broker(amqp_url)
    try:
        received_m += after.drain("ws-gateway.trades", None, timeout=20)
        received_a += after.drain("ws-gateway.order_status", None, timeout=20)
        # an age drop at the reconnect is announced by the next drop notice, up to seconds later
        dropped = pub.status()["dropped"].get("trades", 0)
        system: list = []
        wait_for(lambda: system.extend(after.drain("ws-gateway.system", None, timeout=1))
                 or sum(r["count"] for r in _drop_ranges(system, "trades.linear.BTCUSDT")) >= dropped, timeout=20,
                 message="every drop announced")
    finally:
        after.purge_gateway_queues()
        after.close()

    assert again == 0, "ingest would have been blocked"
    # Every account event arrived (duplicates allowed, always with the same message_id).
    by_seq = _ids_by_seq(received_a)
    assert sorted(by_seq) == list(range(1, a_seq + 1))
    assert all(len(ids) == 1 for ids in by_seq.values())
    # Every missing market event is counted as dropped.
    got_m = _ids_by_seq(received_m)
    assert all(len(ids) == 1 for ids in got_m.values())
    assert len(got_m) + dropped == m_seq, (len(got_m), dropped, m_seq)
    # Consumers are told: a broker_outage event with the buffer's drop counts and ranges. Trades
    # held past their age bound (a slow broker restart) are dropped at the reconnect and announced
    # as events_dropped instead; together the announcements account for every drop, once.
    outage = [b for m, _p, b in system if m.routing_key == "system.broker_outage"]
    assert outage, [m.routing_key for m, _p, _b in system]
    assert outage[0]["data"]["dropped"]["trades"] >= 1000     # the 500-event buffer overflowed
    # named as the consumer sees the stream: its routing key and its stream_seq numbers
    ranges = _drop_ranges(system, "trades.linear.BTCUSDT")
    assert sum(r["count"] for r in ranges) == dropped, (ranges, dropped)
    missing = set(range(1, m_seq + 1)) - set(got_m)
    assert all(any(r["from_seq"] <= seq <= r["to_seq"] for r in ranges) for seq in missing)
    assert pub.stop() == 0


@pytest.mark.timeout(120)
def test_kill9_under_load_never_changes_an_event_id(publisher, broker, short_tmp):
    # what waits for B is judged on stream gaps alone: a slow start must not age trades out
    keep = {"MARKET_MAX_AGE_MS_TRADES": 600_000}
    pub_a = publisher(**keep)
    stop, sent_all, release = threading.Event(), threading.Event(), threading.Event()
    counts = {"market": 0, "account": 0}

    def pusher() -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        from common import addresses
        sock.connect(addresses.publisher_frames(short_tmp))
        try:
            while not stop.is_set():
                for _ in range(20):   # ~2,000 frames/s in bursts of 20, 1 in 5 an account event
                    counts["market"] += 1
                    sock.send_multipart(market_env(counts["market"]).encode())
                    if counts["market"] % 5 == 0:
                        counts["account"] += 1
                        sock.send_multipart(account_env(counts["account"]).encode())
                stop.wait(0.01)
            sent_all.set()
            # open until B has published the last frame: a reader at its receive queue's bound has
            # not taken what waits in the connection, and a close then loses it (ingest waits too),
            # where no later frame would show the gap
            release.wait(60)
        finally:
            sock.close(0)
            ctx.term()

    t = threading.Thread(target=pusher, daemon=True)
    t.start()
    try:
        wait_for(lambda: pub_a.total("confirmed") > 3000, timeout=30, message="publisher A under load")
        os.kill(pub_a.proc.pid, signal.SIGKILL)
        pub_a.proc.wait(10)
        killed_at = dict(counts)
        pub_b = publisher(**keep)
        wait_for(lambda: pub_b.total("confirmed") > 2000, timeout=30, message="publisher B under load")
        stop.set()
        assert sent_all.wait(10), "the pusher did not finish its last burst"
        # a status snapshot can come before B has read the pusher's last frames: the judge waits
        # for each stream's last frame itself
        trades = _drain_until(broker, "ws-gateway.trades", "public_trade", counts["market"])
        orders = _drain_until(broker, "ws-gateway.order_status", "order", counts["account"])
    finally:
        stop.set()
        release.set()
        t.join(10)
    wait_for(lambda: (s := pub_b.status())["buffered"] == 0 and s["unconfirmed"] == 0, timeout=20,
             message="B drained")
    system = broker.drain("ws-gateway.system", None, timeout=5)

    # No event is ever re-published under a different message_id.
    for got in (_ids_by_seq(trades, "public_trade"), _ids_by_seq(orders, "order")):
        assert all(len(ids) == 1 for ids in got.values())
    # Whatever is missing lies inside a stream_gap range B published.
    gaps: dict[str, list[tuple[int, int]]] = {}
    for m, _p, b in system:
        if m.routing_key == "system.stream_gap" and "missing_from" in b["data"]:
            gaps.setdefault(b["data"]["stream"], []).append((b["data"]["missing_from"], b["data"]["missing_to"]))
    for stream, got, total in (("linear:publicTrade.BTCUSDT", _ids_by_seq(trades, "public_trade"), counts["market"]),
                               ("private:order", _ids_by_seq(orders, "order"), counts["account"])):
        missing = set(range(1, total + 1)) - set(got)
        uncovered = {s for s in missing if not any(a <= s <= z for a, z in gaps.get(stream, []))}
        assert not uncovered, (stream, sorted(uncovered)[:10])
        print(f"{stream}: sent {total}, received {len(got)}, missing {len(missing)} "
              f"(killed at {killed_at}), gaps {gaps.get(stream)}")
    assert pub_b.stop() == 0


@pytest.mark.timeout(90)
def test_account_events_spooled_without_broker_survive_a_restart(publisher, broker, short_tmp, amqp_url):
    """A publisher that cannot reach RabbitMQ keeps taking frames: market beyond the buffer
    is dropped, account events go to the spool file; SIGTERM keeps them there; the next
    publisher replays them in order."""
    down = PublisherProc(short_tmp, f"amqp://guest:guest@127.0.0.1:{free_port()}/x", {"PUBLISHER_BUFFER": "100"})
    try:
        down.start(ready=False)
        for i in range(1, 301):
            down.push(account_env(i))
            down.push(market_env(i))
        wait_for(lambda: down.status()["events_in"].get("frame") == 600, timeout=20, message="all taken")
        st = down.status()
        assert st["spool_depth"] > 0 and st["in_memory"] <= 101
        assert st["dropped"]["trades"] >= 200
        assert down.stop() == 0
    finally:
        down.close()
    assert (short_tmp / "spool" / "publisher.spool").stat().st_size > 0

    pub = publisher()   # same run dir, a reachable broker
    wait_for(lambda: pub.status()["spool_depth"] == 0 and pub.status()["unconfirmed"] == 0
             and pub.total("confirmed") >= 300, timeout=30, message="spool replayed")
    got = broker.drain("ws-gateway.order_status", None, timeout=20)
    seqs = [body["stream_seq"] for _m, _p, body in got]
    assert sorted(set(seqs)) == list(range(1, 301))
    assert seqs == sorted(seqs)          # in order
    assert (short_tmp / "spool" / "publisher.spool").stat().st_size == 0
    assert pub.stop() == 0
