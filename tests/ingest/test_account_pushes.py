"""Account pushes through a real ingest process: none is lost because its data repeats an
earlier state, a rotation forwards what both sockets deliver once, and a rotation that
fails leaves exactly one socket delivering."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from common.topics import build_topic
from tests.ingest.conftest import API_KEY, API_SECRET, clear_subscriptions
from tests.ingest.harness import IngestProcess
from tests.ingest.scripted import SILENT, ScriptedPrivate
from tests.ingest.test_ingest import subscribe_all, wait_active
from tests.support import wait_for

pytestmark = pytest.mark.timeout(120)
FRAMES = Path(__file__).resolve().parents[1] / "frames"
# With this seed and one socket subscribed to wallet alone, the simulated account's first
# three events are: order 1 placed, order 2 placed, order 2 cancelled, so its wallet goes
# A -> B -> A (checked below, not assumed).
A_B_A_SEED = 3


def pushed(capture, topic: str) -> list[dict]:
    return [e.json() for e in capture.frames(topic, "private")]


def wait_reconciled(proc) -> None:
    """The REST reconciliation after the private socket subscribed is over: pushes pass straight on."""
    wait_for(lambda: any("private_connected" in e.json()["reasons"]
                         for e in proc.publisher.of_kind("system", "reconciliation_done")), 20,
             message="reconciliation after the private subscribe")


def wallet(msg_id: str, created_ms: int, available: str) -> dict:
    frame = json.loads((FRAMES / "wallet.json").read_text())
    frame.update(id=msg_id, creationTime=created_ms)
    frame["data"][0]["totalAvailableBalance"] = available
    return frame


def order(msg_id: str, created_ms: int) -> dict:
    frame = json.loads((FRAMES / "order.json").read_text())
    frame.update(id=msg_id, creationTime=created_ms)
    frame["data"][0]["updatedTime"] = str(created_ms)
    return frame


@pytest.fixture(scope="module")
def quiet_sim():
    """A simulator whose account moves only when the test steps it."""
    import bybitsim

    with bybitsim.run_in_thread(port=0, rate=0, api_key=API_KEY, api_secret=API_SECRET, account_rate=0,
                                seed=A_B_A_SEED) as s:
        yield s


@pytest.fixture
def scripted():
    server = ScriptedPrivate()
    try:
        yield server
    finally:
        server.close()


def start_ingest(short_tmp, sim, db_url, **overrides) -> IngestProcess:
    return IngestProcess(short_tmp, sim, db_url, BYBIT_API_KEY=API_KEY, BYBIT_API_SECRET=API_SECRET, **overrides)


def test_a_wallet_back_in_an_earlier_state_is_handed_off(quiet_sim, ingest_db, short_tmp):
    proc = start_ingest(short_tmp, quiet_sim, ingest_db)
    try:
        subscribe_all(proc, ingest_db, [build_topic("wallet")])
        wait_active(proc, ["private:wallet"])
        wait_reconciled(proc)
        for n in (1, 2, 3):
            quiet_sim.account_step(1)
            wait_for(lambda: len(pushed(proc.publisher, "wallet")) >= n and len(pushed(proc.persister, "wallet")) >= n,
                     10, message=f"wallet push {n} at the publisher's and the persister's side")
        sent = [p for p in quiet_sim.account()["pushes"] if p["topic"] == "wallet"]
        states = [p["data"] for p in sent]
        assert len(states) == 3 and states[0] == states[2] != states[1], "the simulator's wallet went A -> B -> A"
        for capture in (proc.publisher, proc.persister):
            got = pushed(capture, "wallet")
            assert [f["data"] for f in got] == states
            assert [f["creationTime"] for f in got] == [p["creationTime"] for p in sent]
        assert proc.status()["rotation_duplicates"] == 0
    finally:
        proc.close()
        clear_subscriptions(ingest_db)


def test_a_rotation_forwards_what_both_sockets_deliver_once(scripted, sim, ingest_db, short_tmp):
    proc = start_ingest(short_tmp, sim, ingest_db, BYBIT_MAX_ACTIVE_TIME="30s", BYBIT_WS_PRIVATE_URL=scripted.url)
    try:
        subscribe_all(proc, ingest_db, [build_topic("wallet"), build_topic("order")])
        wait_active(proc, ["private:wallet", "private:order"])
        wait_reconciled(proc)
        assert scripted.open_connections() == [1]
        t0 = int(time.time() * 1000)
        a, b = "20705.1329", "20000.5"
        scripted.push(wallet("w-1", t0 + 1, a))
        scripted.push(wallet("w-2", t0 + 2, b))
        wait_for(lambda: len(pushed(proc.publisher, "wallet")) == 2, 10, message="two wallet pushes before the rotation")

        async def overlap():
            # while connection 2 waits for its subscribe ack, both sockets deliver the same two
            # pushes (each socket with its own message id): the wallet back at A, and an order
            for frame in (wallet("w-3", t0 + 3, a), order("o-3", t0 + 3)):
                for conn in (1, 2):
                    await scripted.send_all({**frame, "id": f"{frame['id']}-on-{conn}"}, [conn])
            await asyncio.sleep(0.5)        # both readers have them before the rotation completes

        scripted.before_ack[2] = overlap
        wait_for(lambda: '"rotated"' in proc.log(), 40, message="rotation before max_active_time")
        wait_for(lambda: scripted.open_connections() == [2], 10, message="the old socket closed")
        scripted.push(wallet("w-5", t0 + 5, b))          # B again after A: a new push, not a copy
        wait_for(lambda: len(pushed(proc.publisher, "wallet")) >= 4, 10, message="the push after the rotation")

        got = [(f["creationTime"], f["data"][0]["totalAvailableBalance"]) for f in pushed(proc.publisher, "wallet")]
        assert got == [(t0 + 1, a), (t0 + 2, b), (t0 + 3, a), (t0 + 5, b)]
        assert [f["creationTime"] for f in pushed(proc.publisher, "order")] == [t0 + 3]
        # the persister's copy arrives on its own socket, read by its own capture thread: waited for
        wait_for(lambda: len(pushed(proc.persister, "wallet")) >= 4 and len(pushed(proc.persister, "order")) >= 1,
                 10, message="the persister's copies")
        assert len(pushed(proc.persister, "wallet")) == 4 and len(pushed(proc.persister, "order")) == 1
        assert proc.status()["rotation_duplicates"] == 2
    finally:
        proc.close()
        clear_subscriptions(ingest_db)


def test_a_rotation_whose_subscribe_goes_unanswered_closes_its_new_socket(scripted, sim, ingest_db, short_tmp):
    for n in range(2, 20):
        scripted.subscribe_mode[n] = SILENT       # every later socket authenticates, then hears nothing
    proc = start_ingest(short_tmp, sim, ingest_db, BYBIT_MAX_ACTIVE_TIME="30s", BYBIT_WS_PRIVATE_URL=scripted.url)
    try:
        subscribe_all(proc, ingest_db, [build_topic("wallet")])
        wait_active(proc, ["private:wallet"])
        wait_reconciled(proc)
        wait_for(lambda: scripted.opened >= 2, 30, message="a rotation's new socket")
        wait_for(lambda: '"rotation_failed"' in proc.log(), 20, message="the rotation given up (no subscribe ack)")
        # the new socket is closed: only the old one is open (until the next try, 5 s later)
        wait_for(lambda: scripted.open_connections() == [1], 3, message="only the old socket open")
        t0 = int(time.time() * 1000)
        assert scripted.push(wallet("w-after", t0, "1.5")) == [1]
        wait_for(lambda: any(f["id"] == "w-after" for f in pushed(proc.publisher, "wallet")), 10,
                 message="the old socket still delivering")
        assert [f["id"] for f in pushed(proc.publisher, "wallet")].count("w-after") == 1
        assert proc.statuses()["private:wallet"] == "active"
        assert not proc.publisher.of_kind("system", "connection_lost")
    finally:
        proc.close()
        clear_subscriptions(ingest_db)


@pytest.mark.parametrize("ingest", [{"BYBIT_MAX_ACTIVE_TIME": "30s"}], indirect=True)
def test_a_topic_refused_on_the_new_socket_fails_the_rotation_not_the_topic(ingest, ingest_db, sim):
    subscribe_all(ingest, ingest_db, [build_topic("order"), build_topic("wallet")])
    wait_active(ingest, ["private:order", "private:wallet"])
    [old] = [c for c in sim.state()["connections"] if c["endpoint"] == "private"]
    sim.reject("wallet", endpoint="private")          # from now on a new socket cannot subscribe wallet
    wait_for(lambda: '"rotation_failed"' in ingest.log(), 30, message="rotation refused wallet")
    wait_for(lambda: [c["id"] for c in sim.state()["connections"] if c["endpoint"] == "private"] == [old["id"]],
             5, message="only the old private socket open")
    assert ingest.statuses()["private:wallet"] == "active"
    before = len(pushed(ingest.publisher, "wallet"))
    sim.account_step(2)
    wait_for(lambda: len(pushed(ingest.publisher, "wallet")) >= before + 2, 10, message="wallet pushes on the old socket")
    assert '"rotated"' not in ingest.log()
