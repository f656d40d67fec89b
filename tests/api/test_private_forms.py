"""An all-in-one private topic (order) and its category-scoped form (order.linear) are never
held together: Bybit refuses the two in one subscribe request and would push each event under
both. The API refuses the second with 409 naming the first (real PostgreSQL, fake ingest)."""
from __future__ import annotations

import threading

import pytest

from api.db import close_pools


def post(client, body):
    return client.post("/api/v1/subscriptions", json=body)


@pytest.mark.parametrize("channel", ["order", "execution", "position"])
@pytest.mark.parametrize("first_scoped", [False, True])
def test_the_other_form_of_a_live_private_channel_is_a_409_naming_it(client, clean_db, fake_ingest, channel,
                                                                      first_scoped):
    scoped = {"channel": channel, "category": "linear"}
    whole = {"channel": channel}
    first_body, second_body = (scoped, whole) if first_scoped else (whole, scoped)
    first = post(client, first_body | {"requested_by": "svc-a"})
    assert first.status_code == 201
    sent = len(fake_ingest.requests)
    second = post(client, second_body | {"requested_by": "svc-b"})
    assert second.status_code == 409
    error = second.get_json()["error"]
    assert error["code"] == "conflicting_subscription"
    assert error["details"] == {"conflicts_with": first.get_json()["id"], "topic": first.get_json()["topic"]}
    assert first.get_json()["topic"] in error["message"] and first.get_json()["id"] in error["message"]
    assert len(fake_ingest.requests) == sent                     # ingest never heard of it
    with clean_db.cursor() as cur:
        cur.execute("SELECT topic, status FROM subscriptions")
        assert cur.fetchall() == [(first.get_json()["topic"], "pending")]


def test_other_categories_and_channels_do_not_conflict(client, clean_db):
    for body in ({"channel": "order", "category": "linear"}, {"channel": "order", "category": "spot"},
                 {"channel": "execution"}, {"channel": "position", "category": "inverse"}, {"channel": "wallet"}):
        assert post(client, body).status_code == 201, body


def test_a_removed_or_failed_form_does_not_block_the_other(client, clean_db):
    whole = post(client, {"channel": "order"}).get_json()
    assert client.delete(f"/api/v1/subscriptions/{whole['id']}").status_code == 200
    scoped = post(client, {"channel": "order", "category": "linear"})
    assert scoped.status_code == 201
    with clean_db.cursor() as cur:          # ingest refused it (as it would have), the row is failed
        cur.execute("UPDATE subscriptions SET status = 'failed' WHERE id = %s", (scoped.get_json()["id"],))
    assert post(client, {"channel": "order"}).status_code == 201
    # ... and asking for the failed one again now conflicts with the live all-in-one
    again = post(client, {"channel": "order", "category": "linear"})
    assert again.status_code == 409 and again.get_json()["error"]["details"]["topic"] == "order"


def test_concurrent_requests_for_both_forms_leave_one(app, clean_db, fake_ingest):
    """Many rounds of both forms asked at the same instant from two threads: each round exactly
    one is created and the other is refused; never both live."""
    results: list[tuple[int, int]] = []
    try:
        for i in range(15):
            barrier = threading.Barrier(2)
            codes = {}

            def ask(body, slot):
                with app.test_client() as c:
                    barrier.wait()
                    codes[slot] = post(c, body).status_code

            threads = [threading.Thread(target=ask, args=({"channel": "execution"}, 0)),
                       threading.Thread(target=ask, args=({"channel": "execution", "category": "option"}, 1))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            results.append((codes[0], codes[1]))
            with clean_db.cursor() as cur:
                cur.execute("SELECT count(*) FROM subscriptions WHERE status <> 'removed'")
                assert cur.fetchone()[0] == 1, f"round {i}: {codes}"
                cur.execute("UPDATE subscriptions SET status = 'removed' WHERE status <> 'removed'")
    finally:
        close_pools()
    assert all(sorted(r) == [201, 409] for r in results), results
