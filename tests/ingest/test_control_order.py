"""A control message that arrives out of order does not undo a newer change: ingest applies
what the subscriptions table says when the message arrives. ingest runs as its own process
against the simulator; the test writes the table as the API does and sends the messages."""
from __future__ import annotations

import psycopg2
import pytest

from common.topics import build_topic
from ingest.control import ReadOrder, should_hold
from tests.ingest.test_ingest import wait_active
from tests.support import wait_for

pytestmark = pytest.mark.timeout(120)

TOPIC = build_topic("trades", "linear", "BTCUSDT")


def write(url: str, sql: str, *args):
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def new_row(url: str, topic=TOPIC) -> str:
    return write(url, "INSERT INTO subscriptions (channel, endpoint, category, symbol, depth, interval, topic, "
                      "requesters, trace_id) VALUES (%s,%s,%s,%s,%s,%s,%s, ARRAY['svc'], 'trace-' || now()::text) "
                      "RETURNING id::text",
                 topic.channel, topic.endpoint, topic.category, topic.symbol, topic.depth, topic.interval,
                 topic.name)[0]


def remove_row(url: str, sid: str) -> None:
    write(url, "UPDATE subscriptions SET status = 'removed', requesters = '{}' WHERE id = %s", sid)


def message(sid: str, topic=TOPIC) -> dict:
    return {"id": sid, "channel": topic.channel, "endpoint": topic.endpoint, "category": topic.category,
            "symbol": topic.symbol, "depth": topic.depth, "interval": topic.interval, "topic": topic.name}


def held(ingest) -> set[str]:
    return set(ingest.control("status")["status"]["topics"])


def test_remove_delivered_after_the_add_that_followed_it_is_ignored(ingest, ingest_db, sim):
    # DELETE of the first row committed, then a POST made a new row; their messages arrive add first.
    first = new_row(ingest_db)
    remove_row(ingest_db, first)
    second = new_row(ingest_db)
    add = wait_for(lambda: ingest.control("add", message(second), "post-2"), 15, message="control socket")
    assert add["ok"] and add["held"] and not add["stale"]
    late = ingest.control("remove", message(first), "delete-1")
    assert late["ok"] and late["held"] and late["stale"]
    assert held(ingest) == {TOPIC.key}
    wait_active(ingest, [TOPIC.key])
    assert TOPIC.name in sim.state()["subscribed"]["linear"]
    assert "control_remove_ignored" in ingest.log()


def test_add_delivered_after_the_remove_that_followed_it_is_ignored(ingest, ingest_db, sim):
    first = new_row(ingest_db)
    assert wait_for(lambda: ingest.control("add", message(first), "post-1"), 15, message="control socket")["held"]
    wait_active(ingest, [TOPIC.key])
    # the first row was removed (its remove is lost here), a POST made a new row and a DELETE
    # removed it; the DELETE's remove arrives before the POST's add
    remove_row(ingest_db, first)
    second = new_row(ingest_db)
    remove_row(ingest_db, second)
    assert ingest.control("remove", message(second), "delete-2")["held"] is False
    late = ingest.control("add", message(second), "post-2")
    assert late["ok"] and late["held"] is False and late["stale"]
    assert held(ingest) == set()
    wait_for(lambda: TOPIC.name not in sim.state()["subscribed"].get("linear", []), 10, message="unsubscribed")


def test_the_table_unreadable_applies_messages_as_sent(ingest, ingest_db, sim):
    """Without the table (here: renamed away; the lease tables stay readable, and without its
    leases ingest would hold nothing) messages are applied as sent."""
    wait_for(lambda: ingest.status().get("instance", {}).get("owned"), 15, message="ingest owns its units")
    write(ingest_db, "ALTER TABLE subscriptions RENAME TO subscriptions_away")
    try:
        reply = wait_for(lambda: ingest.control("add", message("x"), "t"), 15, message="control socket")
        assert reply["ok"] and reply["held"] and not reply["stale"]
        assert held(ingest) == {TOPIC.key}
        assert ingest.control("remove", message("x"), "t")["removed"] is True
        assert held(ingest) == set()
        assert "control_table_unreadable" in ingest.log()
    finally:
        write(ingest_db, "ALTER TABLE subscriptions_away RENAME TO subscriptions")


def test_read_order_keeps_the_newest_read():
    class St:
        def __init__(self, topic):
            self.topic, self.trace_id, self.status = topic, "t", "active"

    order = ReadOrder()
    converge = order.begin()              # converge starts reading the whole table ...
    control = order.begin()               # ... a control read starts after it and is applied first
    assert order.take("linear:a", control)
    assert order.take("linear:b", control)
    held = {"linear:a": St("A")}          # the control read added a and removed b
    desired = {"linear:b": ("B", "t", "active"), "linear:c": ("C", "t", "pending")}
    view = order.for_converge(desired, converge, held)
    assert view == {"linear:a": ("A", "t", "active"), "linear:c": ("C", "t", "pending")}
    # a control read that started before the converge that was applied is older than it
    older = 0
    assert not order.take("linear:c", older)
    assert order.applied == {"linear:a": control, "linear:b": control}
    # a later converge has seen everything the control read saw: it applies as read, and forgets it
    later = order.begin()
    assert order.for_converge(desired, later, held) == desired
    assert order.applied == {}
    assert should_hold("add", None) and not should_hold("remove", None)
    assert should_hold("remove", True) and not should_hold("add", False)
