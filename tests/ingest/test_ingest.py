"""ingest against the simulator over real sockets: connections, limits, liveness, reconnect,
acks, book integrity, private auth and rotation. ingest runs as its own process."""
from __future__ import annotations

import signal
import time

import psycopg2
import pytest

from common.topics import build_topic
from tests.ingest.conftest import API_SECRET
from tests.ingest.harness import frame_counts
from tests.support import wait_for

pytestmark = pytest.mark.timeout(120)

EVERY_CHANNEL = [
    *[("trades", c, s) for c, s in (("spot", "BTCUSDT"), ("linear", "BTCUSDT"), ("inverse", "BTCUSD"),
                                    ("option", "BTC-31JUL26-120000-C"))],
    *[("tickers", c, s) for c, s in (("spot", "BTCUSDT"), ("linear", "ETHUSDT"), ("inverse", "BTCUSD"),
                                     ("option", "BTC-31JUL26-120000-C"))],
    ("orderbook", "spot", "BTCUSDT", 50), ("orderbook", "linear", "BTCUSDT", 200),
    ("orderbook", "inverse", "BTCUSD", 1), ("orderbook", "option", "BTC-31JUL26-120000-C", 25),
    ("kline", "spot", "BTCUSDT", None, "1"), ("kline", "linear", "BTCUSDT", None, "5"),
    ("kline", "inverse", "BTCUSD", None, "D"),
    ("liquidation", "linear", "BTCUSDT"), ("liquidation", "inverse", "BTCUSD"),
    ("order",), ("execution",), ("position",), ("wallet",),
]


def store(url: str, topics) -> None:
    """Write desired subscriptions as the API does (PostgreSQL first)."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            for t in topics:
                cur.execute("INSERT INTO subscriptions (channel, endpoint, category, symbol, depth, interval, topic)"
                            " VALUES (%s,%s,%s,%s,%s,%s,%s)",
                            (t.channel, t.endpoint, t.category, t.symbol, t.depth, t.interval, t.name))
    finally:
        conn.close()


def subscribe_all(ingest, db_url, topics) -> None:
    store(db_url, topics)
    wait_for(lambda: ingest.control("sync")["ok"], 15, message="ingest control socket")


def wait_active(ingest, keys, timeout=15.0):
    wait_for(lambda: all(ingest.statuses().get(k) == "active" for k in keys), timeout,
             message=f"active: {sorted(set(keys) - {k for k, s in ingest.statuses().items() if s == 'active'})[:5]}")


def test_every_channel_of_every_category_flows(ingest, ingest_db, sim):
    topics = [build_topic(*args) for args in EVERY_CHANNEL]
    subscribe_all(ingest, ingest_db, topics)
    keys = [t.key for t in topics]
    wait_active(ingest, keys)
    wait_for(lambda: all(frame_counts(ingest.publisher)[k] > 0 for k in keys if not k.startswith("private")), 15,
             message="a frame from every public topic")
    sim.rate(account_rate=20)
    wait_for(lambda: all(frame_counts(ingest.publisher)[k] > 0 for k in keys if k.startswith("private")), 15,
             message="a push from every private topic")
    # account pushes go to the persister too, market data does not
    assert {e.endpoint for e in ingest.persister.frames()} == {"private"}
    # one public connection per category in use, one private, and Bybit's system-status socket
    assert sorted(c["endpoint"] for c in ingest.status()["connections"]) == \
        ["inverse", "linear", "misc", "option", "private", "spot"]
    # stream_seq rises by one per frame of a stream
    seqs = [e.stream_seq for e in ingest.publisher.frames("publicTrade.BTCUSDT", "linear")]
    assert seqs == list(range(1, len(seqs) + 1))


def test_150_spot_topics_in_requests_of_at_most_ten(ingest, ingest_db, sim):
    topics = [build_topic("trades", "spot", f"S{i:03d}USDT") for i in range(150)]
    subscribe_all(ingest, ingest_db, topics)
    wait_active(ingest, [t.key for t in topics], timeout=30)
    assert len(sim.state()["subscribed"]["spot"]) == 150
    assert "args size" not in ingest.log()
    assert len([c for c in ingest.status()["connections"] if c["endpoint"] == "spot"]) == 1


def _linear_flowing_since(ingest, keys, t0_ns):
    frames = ingest.publisher.frames(endpoint="linear")
    fresh = {f"linear:{e.topic}" for e in frames if e.recv_ns > t0_ns}
    return all(k in fresh for k in keys)


def test_dropped_connection_flows_again_within_2s(ingest, ingest_db, sim):
    topics = [build_topic("trades", "linear", s) for s in ("BTCUSDT", "ETHUSDT")] + \
             [build_topic("orderbook", "linear", "BTCUSDT", 50)]
    subscribe_all(ingest, ingest_db, topics)
    keys = [t.key for t in topics]
    wait_active(ingest, keys)
    opened = sim.state()["connections_opened"]["linear"]
    t0 = time.time_ns()
    sim.drop(endpoint="linear")
    wait_for(lambda: sim.state()["connections_opened"]["linear"] > opened, 2.0, message="reconnected")
    wait_for(lambda: _linear_flowing_since(ingest, keys, t0), 2.0, message="every topic flowing again")
    wait_for(lambda: ingest.publisher.of_kind("system", "connection_restored"), 2.0, message="restored event")
    lost = ingest.publisher.of_kind("system", "connection_lost")[0].json()
    assert lost["endpoint"] == "linear" and "publicTrade.BTCUSDT" in lost["topics"]


@pytest.mark.parametrize("fault", ["pong", "stall"])
def test_unanswered_pings_or_stall_reconnect_within_window(ingest, ingest_db, sim, fault):
    topic = build_topic("trades", "inverse", "BTCUSD")
    subscribe_all(ingest, ingest_db, [topic])
    wait_active(ingest, [topic.key])
    opened = sim.state()["connections_opened"]["inverse"]
    if fault == "pong":
        sim.pong(endpoint="inverse", enabled=False)
    else:
        sim.stall(endpoint="inverse", enabled=True)
    t0 = time.monotonic()
    # window: GW_DEAD_AFTER_S=2 plus a ping interval of slack
    wait_for(lambda: sim.state()["connections_opened"]["inverse"] > opened, 4.0, message="reconnected")
    assert time.monotonic() - t0 >= 1.5      # not before the window: a quiet link is not dead
    assert "dead_link" in ingest.log()
    sim.reset()
    t1 = time.time_ns()
    wait_for(lambda: any(e.recv_ns > t1 for e in ingest.publisher.frames("publicTrade.BTCUSD")), 10,
             message="flowing after recovery")


@pytest.mark.parametrize("mode", ["whole", "partial"])
def test_one_invalid_topic_fails_alone(ingest, ingest_db, sim, mode):
    sim.reject_mode(mode=mode)
    sim.reject(topic="tickers.BADUSDT")
    topics = [build_topic("tickers", "linear", s) for s in ("BTCUSDT", "BADUSDT", "ETHUSDT", "SOLUSDT")]
    subscribe_all(ingest, ingest_db, topics)
    good = [t.key for t in topics if "BAD" not in t.name]
    wait_active(ingest, good)
    wait_for(lambda: ingest.statuses().get("linear:tickers.BADUSDT") == "failed", 10, message="bad topic failed")
    err = [e.json() for e in ingest.persister.of_kind("sub_status") if e.json()["topic"] == "tickers.BADUSDT"][-1]
    assert "tickers.BADUSDT" in err["error"]
    wait_for(lambda: all(frame_counts(ingest.publisher)[k] > 0 for k in good), 10, message="good topics flowing")


@pytest.mark.parametrize("channel", ["orderbook", "orderbook_rpi"])
@pytest.mark.parametrize("hook", ["book_gap", "book_reset"])
def test_book_gap_and_restart_snapshot_resync(ingest, ingest_db, sim, hook, channel):
    topic = build_topic("orderbook", "linear", "BTCUSDT", 50) if channel == "orderbook" else \
        build_topic("orderbook_rpi", "linear", "BTCUSDT")
    subscribe_all(ingest, ingest_db, [topic])
    wait_active(ingest, [topic.key])
    wait_for(lambda: len(ingest.publisher.frames(topic.name)) > 5, 10, message="book flowing")
    getattr(sim, hook)(topic=topic.name, endpoint="linear")
    wait_for(lambda: ingest.publisher.of_kind("system", "book_resync"), 10, message="resync event")
    event = ingest.publisher.of_kind("system", "book_resync")[0].json()
    assert event["topic"] == topic.name
    n = len(ingest.publisher.frames(topic.name))
    wait_for(lambda: len(ingest.publisher.frames(topic.name)) > n + 5, 10, message="book flowing on")
    frames = [e.json() for e in ingest.publisher.frames(topic.name)]
    if hook == "book_gap":
        # the gapped delta is not forwarded; what follows the resubscribe starts with a snapshot
        at = ingest.publisher.of_kind("system", "book_resync")[0].recv_ns
        after = [e.json() for e in ingest.publisher.frames(topic.name) if e.recv_ns > at]
        assert after[0]["type"] == "snapshot"
        us = [f["data"]["u"] for f in frames]
        assert all(b == a + 1 for a, b, f in zip(us, us[1:], frames[1:]) if f["type"] == "delta")
    else:
        assert any(f["type"] == "snapshot" and f["data"]["u"] == 1 for f in frames)


@pytest.mark.parametrize("ingest", [{"BYBIT_API_SECRET": "wrong-" + API_SECRET}], indirect=True)
def test_wrong_secret_backs_off_and_never_logs_it(ingest, ingest_db, sim):
    topic = build_topic("order")
    subscribe_all(ingest, ingest_db, [topic])
    wait_for(lambda: ingest.status()["private"]["state"] == "failed", 10, message="auth failure in status")
    assert ingest.status()["private"]["error"]
    before = sim.state()["auth_failures"]
    t0 = time.monotonic()
    wait_for(lambda: sim.state()["auth_failures"] >= before + 3, 15, message="retries continue")
    elapsed = time.monotonic() - t0
    # backoff: 3 more attempts take at least 0.5 + 1 s (jittered) — never a tight loop
    assert elapsed > 1.0
    assert ingest.publisher.of_kind("system", "auth_failed")
    log = ingest.log()
    assert "auth_failed" in log
    assert API_SECRET not in log and ingest.env["BYBIT_API_KEY"] not in log


@pytest.mark.parametrize("ingest", [{"BYBIT_MAX_ACTIVE_TIME": "30s"}], indirect=True)
@pytest.mark.timeout(90)
def test_private_rotation_loses_no_account_event(ingest, ingest_db, sim):
    topics = [build_topic(c) for c in ("order", "execution", "position", "wallet")]
    subscribe_all(ingest, ingest_db, topics)
    wait_active(ingest, [t.key for t in topics])
    t0_ms = int(time.time() * 1000)
    sim.rate(account_rate=10)
    sim.close_private(after_s=30)
    wait_for(lambda: "rotated" in ingest.log(), 40, message="rotation before max_active_time")
    wait_for(lambda: len(ingest.publisher.frames(endpoint="private")) > 20, 10, message="pushes after rotation")
    sim.rate(account_rate=0)
    truth = sim.account()
    sent_execs = {e["execId"] for e in truth["executions"] if int(e["execTime"]) >= t0_ms}
    sent_orders = {(o["orderId"], o["updatedTime"]) for p in truth["pushes"] if p["topic"] == "order"
                   and p["creationTime"] >= t0_ms for o in p["data"]}

    def seen(kind):
        frames = [e.json() for e in ingest.publisher.frames(kind, "private")]
        # pushes held during a REST reconciliation that REST already covered (same or newer state)
        # are dropped: their state arrives as a `rest` envelope instead
        rest = [x for e in ingest.publisher.of_kind("rest", kind) for x in e.json()["list"]]
        if kind == "execution":
            return {x["execId"] for f in frames for x in f["data"]} | {x["execId"] for x in rest}
        latest = {x["orderId"]: int(x["updatedTime"]) for x in rest}
        return {(x["orderId"], x["updatedTime"]) for f in frames for x in f["data"]} | \
            {(oid, u) for oid, u in sent_orders if int(u) <= latest.get(oid, -1)}

    assert sent_execs and sent_orders
    wait_for(lambda: sent_execs <= seen("execution") and sent_orders <= seen("order"), 10,
             message="every execution and order update the simulator pushed")
    assert not ingest.publisher.of_kind("system", "connection_lost")


def test_sigterm_stops_cleanly(ingest, ingest_db, sim):
    topic = build_topic("trades", "linear", "BTCUSDT")
    subscribe_all(ingest, ingest_db, [topic])
    wait_active(ingest, [topic.key])
    t0 = time.monotonic()
    assert ingest.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 5
    assert '"stopped"' in ingest.log()
