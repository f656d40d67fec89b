"""PostgreSQL goes away and comes back while events keep arriving.

A throwaway PostgreSQL cluster on its own port (initdb + pg_ctl as the postgres
user), stopped and started by the test, so the shared server is never touched.
"""
from __future__ import annotations

import threading

import psycopg2
import pytest
import zmq

from tests.persister.conftest import frame
from tests.support import wait_for
from tests.support.stores import CAN_RUN_CLUSTER, Cluster, apply_migrations

pytestmark = pytest.mark.skipif(not CAN_RUN_CLUSTER,
                                reason="needs root and a PostgreSQL server installation for a private cluster")


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        c.start()
        apply_migrations(c.url)
        yield c
    finally:
        c.destroy()


class Sender(threading.Thread):
    """A steady stream of account events (order versions, fills, balances), NOBLOCK like ingest."""

    def __init__(self, pusher, per_second: int = 200):
        super().__init__(daemon=True)
        self.pusher, self.period = pusher, 1.0 / per_second
        self.halt = threading.Event()
        self.eagain = 0
        self.ticks = 0
        self.orders: dict[str, tuple[str, int]] = {}     # order id -> (status, updatedTime) last sent
        self.balances: dict[str, str] = {}                # coin -> walletBalance last sent
        self.executions: set[str] = set()

    def run(self) -> None:
        o, e, w = frame("order"), frame("execution"), frame("wallet")
        while not self.halt.is_set():
            i = self.ticks
            oid = f"o-{i % 25}"
            closed = self.orders.get(oid, ("",))[0] == "Filled"
            # Once Filled, an open status with a newer clock must change nothing.
            status = "New" if closed else "Filled" if i % 25 == 24 else "PartiallyFilled"
            o["data"][0].update(orderId=oid, orderStatus=status, updatedTime=str(1_000_000 + i),
                                cumExecQty=f"{i}.{i % 7}")
            e["data"][0].update(execId=f"x-{i}", execQty=f"0.{i:05d}")
            coin = f"C{i % 5}"
            w["creationTime"] = 2_000_000 + i
            w["data"][0]["coin"][0].update(coin=coin, walletBalance=f"{i}.000{i % 3}")
            try:
                for f in (o, e, w):
                    self.pusher.frame(f)
            except zmq.Again:
                self.eagain += 1
            else:
                if not closed:
                    self.orders[oid] = (status, 1_000_000 + i)
                self.executions.add(f"x-{i}")
                self.balances[coin] = f"{i}.000{i % 3}"
            self.ticks += 1
            self.halt.wait(self.period)   # pacing the producer, not waiting for a condition


def q(url, sql):
    conn = psycopg2.connect(url, connect_timeout=2)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.mark.timeout(120)
def test_database_outage_loses_nothing(cluster, start_persister, pusher):
    proc = start_persister(cluster.url)
    sender = Sender(pusher)
    sender.start()
    try:
        wait_for(lambda: q(cluster.url, "SELECT count(*) FROM executions")[0][0] >= 100, 20, message="writing")
        cluster.stop()
        wait_for(lambda: proc.status()["database"]["up"] is False, 15, message="outage noticed")
        received_at_outage = proc.status()["received"]
        # The persister keeps draining ZeroMQ while the database is away.
        wait_for(lambda: proc.status()["received"] >= received_at_outage + 600, 20, message="draining")
        assert sum(proc.status()["pending"].values()) > 0
        cluster.start()
        wait_for(lambda: proc.status()["database"]["up"] is True, 20, message="reconnected")
        received_after = proc.status()["received"]
        wait_for(lambda: proc.status()["received"] >= received_after + 300, 20, message="more after recovery")
    finally:
        sender.halt.set()
        sender.join(5)
    assert sender.eagain == 0
    sent = sender.ticks * 3
    wait_for(lambda: proc.status()["received"] == sent, 10, message="everything received")
    wait_for(lambda: q(cluster.url, "SELECT count(*) FROM executions")[0][0] == len(sender.executions), 20,
             message="every execution written")

    assert {r[0] for r in q(cluster.url, "SELECT exec_id FROM executions")} == sender.executions
    orders = {r[0]: (r[1], r[2]) for r in q(cluster.url, "SELECT order_id, order_status, updated_time FROM orders")}
    assert orders == sender.orders
    balances = dict(q(cluster.url, "SELECT coin, wallet_balance::text FROM balances"))
    assert balances == sender.balances
    status = proc.status()
    assert status["dead_letters"] == 0 and status["database"]["outages"] == 1
    assert len(proc.events("database_unavailable")) == 1
    back = wait_for(lambda: proc.events("database_back"), 10, message="recovery logged")
    assert len(back) == 1 and back[0]["wrote_rows"] > 0
    assert proc.stop() == 0
