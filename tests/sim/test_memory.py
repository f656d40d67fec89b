"""What the simulator keeps stays bounded however many frames, reconnects and faults go by.

The private push log used to keep every frame as a dict, once overall and once per
connection id, closed connections included: ~2.6 KB per frame, 65 MB over a 15-minute
soak. It is now a window (age and count) of the bytes sent, shared by all connections.
"""
from __future__ import annotations

import asyncio
import tracemalloc

import httpx
import orjson
import pytest

import bybitsim
from bybitsim.account import PushLog
from tests.sim.conftest import KEY, SECRET, Client
from tests.support import wait_for

PRIVATE_TOPICS = ("order", "execution", "position", "wallet")


def test_push_log_keeps_a_window_by_age_and_count():
    log = PushLog(max_frames=50, window_s=1.0)
    for i in range(1000):                       # one frame every 10 ms: 10 s of pushes
        log.record(f"conn-{i // 100}", b'{"i":%d}' % i, at_ms=i * 10)
        assert len(log) <= 50
    assert (log.recorded, log.evicted, len(log)) == (1000, 950, 50)
    frames, by_conn = log.frames()
    assert [f["i"] for f in frames] == list(range(950, 1000))
    assert set(by_conn) == {"conn-9"}           # closed connections leave with their frames

    log = PushLog(max_frames=10_000, window_s=1.0)
    for i in range(1000):
        log.record("c", b"{}", at_ms=i * 10)
    assert len(log) == 101                      # at_ms 8990..9990: the last second only
    log.prune(now_ms=20_000)                    # nothing sent for a while: all of it ages out
    assert len(log) == 0 and log.evicted == 1000


def test_push_log_keeps_each_frame_at_its_size():
    """orjson.dumps returns its ~16 KB output buffer unshrunk: the log must keep a copy."""
    record = {f"field{i}": f"{i * 1234.5678:.4f}" for i in range(40)}
    log = PushLog(max_frames=1000, window_s=60.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            payload = orjson.dumps({"topic": "position", "creationTime": i, "data": [record]})
            log.record("c", payload, at_ms=i)
        del payload
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    size = sum(len(p) for _, _, p in log._log)
    assert size > 1000 * 900 and grown < 1.5 * size, (grown, size)


@pytest.fixture
def small_sim():
    with bybitsim.run_in_thread(rate=0, api_key=KEY, api_secret=SECRET, account_rate=0, seed=3,
                                max_pushes=300, push_window_s=60.0) as handle:
        yield handle


def _private(sim) -> Client:
    c = Client(sim.ws_private_url)
    assert c.auth()["success"] is True
    assert c.subscribe(*PRIVATE_TOPICS)["success"] is True
    return c


def _tasks(sim) -> int:
    return sim.run(lambda: len(asyncio.all_tasks()))


@pytest.mark.timeout(60)
def test_push_log_and_connections_stay_bounded_over_reconnects(small_sim):
    sim = small_sim
    idle_tasks = _tasks(sim)
    received, conn_ids = 0, []
    for round_ in range(8):                     # a private client reconnecting, 8 times
        c = _private(sim)
        try:
            events = sim.account_step(100)["events"]
            seen = []
            # Every event ends with a wallet push: wait for this round's last one.
            c.recv_until(lambda m: seen.append(m) or (m.get("topic") == "wallet"
                                                      and m["id"].endswith(f"-{events}")), timeout=10)
            received += len(seen)
            conn_ids.append(sim.state()["connections"][0]["id"])
        finally:
            c.close()
        wait_for(lambda: not sim.state()["connections"], 5, message=f"connection {round_} closed")

    truth = sim.account()
    assert received > 8 * 300                   # far more frames went out than the log keeps
    assert truth["pushes_recorded"] == received
    assert len(truth["pushes"]) == 300 and truth["pushes_evicted"] == received - 300
    assert sum(len(frames) for frames in truth["pushes_by_conn"].values()) <= 300
    assert set(truth["pushes_by_conn"]) <= set(conn_ids[-2:])    # the old connections are gone
    assert truth["pushes_by_conn"][conn_ids[-1]] == truth["pushes"][-len(truth["pushes_by_conn"][conn_ids[-1]]):]
    assert sim.run(lambda: len(sim.sim.account.push_log)) == 300
    over_http = httpx.get(f"{sim.rest_url}/__sim/account", timeout=10).json()   # fragments of the bytes sent
    assert over_http["pushes"] == truth["pushes"] and over_http["pushes_by_conn"] == truth["pushes_by_conn"]
    # no connection state or task left behind by the closed connections
    assert sim.run(lambda: len(sim.sim.conns)) == 0
    wait_for(lambda: _tasks(sim) == idle_tasks, 5, message="connection tasks collected")


@pytest.mark.timeout(60)
def test_push_log_forgets_frames_older_than_the_window():
    with bybitsim.run_in_thread(rate=0, api_key=KEY, api_secret=SECRET, account_rate=0, seed=3,
                                push_window_s=0.5) as sim:
        c = _private(sim)
        try:
            first = sim.account_step(20)["events"]
            c.recv_until(lambda m: m.get("topic") == "wallet" and m["id"].endswith(f"-{first}"), timeout=10)
            assert sim.account()["pushes_recorded"] > 0

            def aged_out():
                sim.account_step(1)                   # the account keeps moving ...
                truth = sim.account()
                return truth if truth["pushes_evicted"] > 0 and all(
                    int(p["id"].rsplit("-", 1)[1]) > first for p in truth["pushes"]) else None

            truth = wait_for(aged_out, 10, interval=0.1, message="the first events' pushes aged out")
            assert len(truth["pushes"]) < truth["pushes_recorded"]
        finally:
            c.close()


@pytest.mark.timeout(60)
def test_a_stalled_private_connection_queues_a_bounded_backlog():
    """While a private connection is stalled its pushes wait for it; past
    ``max_stalled_pushes`` the simulator drops the link (as an exchange drops a reader that
    stopped reading) instead of keeping every push for good. Below the limit, releasing
    the stall delivers everything queued, in order."""
    from websockets.exceptions import ConnectionClosed

    with bybitsim.run_in_thread(rate=0, api_key=KEY, api_secret=SECRET, account_rate=0, seed=5,
                                max_stalled_pushes=200) as sim:
        below = _private(sim)
        try:
            sim.stall("private", enabled=True)
            events = sim.account_step(5)["events"]           # a few pushes: kept for the link
            queued = sim.run(lambda: sum(len(c.pushes) for c in sim.sim.conns.values()))
            assert 0 < queued <= 200
            sim.stall("private", enabled=False)
            got = []
            below.recv_until(lambda m: got.append(m) or (m.get("topic") == "wallet"
                                                         and m["id"].endswith(f"-{events}")), timeout=10)
            assert len(got) == queued
        finally:
            below.close()
        wait_for(lambda: not sim.state()["connections"], 5, message="first connection closed")

        over = _private(sim)
        try:
            sim.stall("private", enabled=True)
            sim.account_step(200)                            # far more pushes than the limit
            wait_for(lambda: not sim.state()["connections"], 5, message="the stalled link dropped")
            counters = sim.state()["counters"]
            assert counters["stalled_connections_dropped"] == 1
            assert counters["stalled_pushes_dropped"] > 200
            assert sim.run(lambda: len(sim.sim.conns)) == 0
            with pytest.raises((ConnectionClosed, OSError)):
                while True:                                  # nothing of the backlog ever comes
                    msg = over.recv(5)
                    assert "topic" not in msg, msg
        finally:
            over.close()
            sim.stall("private", enabled=False)
