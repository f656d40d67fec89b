"""Subscriptions through the Flask test client, real PostgreSQL, fake ingest."""
from __future__ import annotations

import uuid

import pytest

BTC_BOOK = {"channel": "orderbook", "category": "linear", "symbol": "BTCUSDT", "depth": 50}


def rows(db, where="true"):
    with db.cursor() as cur:
        cur.execute(f"SELECT topic, status, requesters, last_error FROM subscriptions WHERE {where} ORDER BY created_at")
        return cur.fetchall()


def post(client, body, **headers):
    return client.post("/api/v1/subscriptions", json=body, headers=headers)


def test_create_writes_pending_row_then_tells_ingest(client, clean_db, fake_ingest):
    resp = post(client, BTC_BOOK, **{"X-Request-ID": "req-1"})
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["topic"] == "orderbook.50.BTCUSDT" and body["endpoint"] == "linear"
    assert body["status"] == "pending" and body["ingest"] == "accepted"
    assert body["requesters"] == ["anonymous"] and body["depth"] == 50
    for key in ("id", "channel", "category", "symbol", "interval", "last_error", "created_at",
                "updated_at", "last_event_at"):
        assert key in body
    assert rows(clean_db) == [("orderbook.50.BTCUSDT", "pending", ["anonymous"], None)]
    [req] = fake_ingest.requests
    assert req["op"] == "add" and req["trace_id"] == "req-1"
    assert req["subscription"]["id"] == body["id"]
    assert req["subscription"]["topic"] == "orderbook.50.BTCUSDT" and req["subscription"]["endpoint"] == "linear"


def test_same_topic_is_idempotent_and_counts_requesters_as_a_set(client, clean_db):
    first = post(client, BTC_BOOK | {"requested_by": "svc-a"})
    again = post(client, BTC_BOOK | {"requested_by": "svc-a"})
    other = post(client, BTC_BOOK | {"requested_by": "svc-b"})
    assert first.status_code == 201 and again.status_code == 200 and other.status_code == 200
    assert first.get_json()["id"] == again.get_json()["id"] == other.get_json()["id"]
    assert other.get_json()["requesters"] == ["svc-a", "svc-b"]
    assert rows(clean_db) == [("orderbook.50.BTCUSDT", "pending", ["svc-a", "svc-b"], None)]


def test_every_channel_maps_to_its_topic(client, clean_db):
    cases = [
        ({"channel": "trades", "category": "spot", "symbol": "ETHUSDT"}, "spot", "publicTrade.ETHUSDT"),
        ({"channel": "tickers", "category": "inverse", "symbol": "BTCUSD"}, "inverse", "tickers.BTCUSD"),
        ({"channel": "kline", "category": "linear", "symbol": "BTCUSDT", "interval": "5"}, "linear", "kline.5.BTCUSDT"),
        ({"channel": "liquidation", "category": "linear", "symbol": "BTCUSDT"}, "linear", "allLiquidation.BTCUSDT"),
        ({"channel": "orderbook", "category": "option", "symbol": "BTC-31JUL26-120000-C", "depth": 25},
         "option", "orderbook.25.BTC-31JUL26-120000-C"),
        ({"channel": "order"}, "private", "order"),
        ({"channel": "execution", "category": "linear"}, "private", "execution.linear"),
        ({"channel": "wallet"}, "private", "wallet"),
    ]
    for body, endpoint, topic in cases:
        resp = post(client, body)
        assert resp.status_code == 201, resp.get_json()
        assert (resp.get_json()["endpoint"], resp.get_json()["topic"]) == (endpoint, topic)


def test_ingest_refusal_marks_row_failed_with_reason(client, clean_db, fake_ingest):
    fake_ingest.mode = "refuse"
    resp = post(client, BTC_BOOK)
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["ingest"] == "refused" and body["status"] == "failed"
    assert body["last_error"] == fake_ingest.error
    assert rows(clean_db) == [("orderbook.50.BTCUSDT", "failed", ["anonymous"], fake_ingest.error)]
    # Requested again: back to pending and retried.
    fake_ingest.mode = "ack"
    again = post(client, BTC_BOOK | {"requested_by": "svc-b"})
    assert again.status_code == 200
    assert again.get_json()["status"] == "pending" and again.get_json()["last_error"] is None
    assert [op for op, _ in fake_ingest.ops()] == ["add", "add"]


def test_ingest_silent_leaves_row_pending_and_says_unreachable(client, clean_db, fake_ingest):
    fake_ingest.mode = "silent"
    resp = post(client, BTC_BOOK)
    assert resp.status_code == 201
    assert resp.get_json()["ingest"] == "unreachable" and resp.get_json()["status"] == "pending"
    assert rows(clean_db) == [("orderbook.50.BTCUSDT", "pending", ["anonymous"], None)]


def test_ingest_not_running_says_unreachable(app, clean_db):
    resp = post(app.test_client(), BTC_BOOK)        # no fake_ingest: nothing bound
    assert resp.status_code == 201 and resp.get_json()["ingest"] == "unreachable"


def test_unmatched_replies_are_ignored(client, fake_ingest):
    fake_ingest.mode = "wrong_id"
    assert post(client, BTC_BOOK).get_json()["ingest"] == "accepted"


def test_get_one_and_unknown(client):
    sid = post(client, BTC_BOOK).get_json()["id"]
    got = client.get(f"/api/v1/subscriptions/{sid}")
    assert got.status_code == 200 and got.get_json()["id"] == sid and "ingest" not in got.get_json()
    missing = client.get(f"/api/v1/subscriptions/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"


def test_delete_releases_holders_then_unsubscribes(client, clean_db, fake_ingest):
    sid = post(client, BTC_BOOK | {"requested_by": "svc-a"}).get_json()["id"]
    post(client, BTC_BOOK | {"requested_by": "svc-b"})
    post(client, BTC_BOOK)                                            # anonymous
    # No requester named: the anonymous hold goes first.
    resp = client.delete(f"/api/v1/subscriptions/{sid}")
    assert resp.status_code == 200 and resp.get_json()["requesters"] == ["svc-a", "svc-b"]
    assert resp.get_json()["ingest"] == "not_needed"
    # Two named holders left and none named: 409 naming them.
    conflict = client.delete(f"/api/v1/subscriptions/{sid}")
    assert conflict.status_code == 409
    assert conflict.get_json()["error"]["details"] == {"requesters": ["svc-a", "svc-b"]}
    # Someone who holds nothing: 409 too.
    assert client.delete(f"/api/v1/subscriptions/{sid}?requested_by=svc-z").status_code == 409
    assert client.delete(f"/api/v1/subscriptions/{sid}?requested_by=svc-a").get_json()["status"] == "pending"
    assert ("remove", "orderbook.50.BTCUSDT") not in fake_ingest.ops()
    # The only holder left: released without naming it, and the topic is removed.
    last = client.delete(f"/api/v1/subscriptions/{sid}")
    assert last.status_code == 200
    assert last.get_json()["status"] == "removed" and last.get_json()["requesters"] == []
    assert last.get_json()["ingest"] == "accepted"
    assert fake_ingest.ops()[-1] == ("remove", "orderbook.50.BTCUSDT")
    assert rows(clean_db) == [("orderbook.50.BTCUSDT", "removed", [], None)]
    # Deleting twice: 404; the removed row is still readable as history.
    again = client.delete(f"/api/v1/subscriptions/{sid}")
    assert again.status_code == 404 and again.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/v1/subscriptions/{sid}").get_json()["status"] == "removed"


def test_removed_topic_can_be_subscribed_again(client, clean_db):
    sid = post(client, BTC_BOOK).get_json()["id"]
    client.delete(f"/api/v1/subscriptions/{sid}")
    again = post(client, BTC_BOOK)
    assert again.status_code == 201 and again.get_json()["id"] != sid
    assert [r[1] for r in rows(clean_db)] == ["removed", "pending"]


def test_delete_with_ingest_down_still_removes(app, clean_db):
    client = app.test_client()
    sid = post(client, BTC_BOOK).get_json()["id"]
    resp = client.delete(f"/api/v1/subscriptions/{sid}")
    assert resp.status_code == 200 and resp.get_json()["ingest"] == "unreachable"
    assert rows(clean_db)[0][1] == "removed"


def test_delete_unknown_and_malformed_ids(client):
    assert client.delete(f"/api/v1/subscriptions/{uuid.uuid4()}").status_code == 404
    bad = client.delete("/api/v1/subscriptions/not-a-uuid")
    assert bad.status_code == 422 and bad.get_json()["error"]["details"][0]["field"] == "id"


def _seed(client):
    post(client, {"channel": "trades", "category": "linear", "symbol": "BTCUSDT"})
    post(client, {"channel": "trades", "category": "spot", "symbol": "BTCUSDT"})
    post(client, {"channel": "tickers", "category": "linear", "symbol": "ETHUSDT"})
    gone = post(client, {"channel": "tickers", "category": "linear", "symbol": "SOLUSDT"}).get_json()["id"]
    client.delete(f"/api/v1/subscriptions/{gone}")


def test_list_filters(client, clean_db):
    _seed(client)

    def topics(qs=""):
        resp = client.get(f"/api/v1/subscriptions{qs}")
        assert resp.status_code == 200, resp.get_json()
        return [(i["endpoint"], i["topic"]) for i in resp.get_json()["items"]]

    assert topics() == [("linear", "publicTrade.BTCUSDT"), ("spot", "publicTrade.BTCUSDT"), ("linear", "tickers.ETHUSDT")]
    assert topics("?channel=trades&category=spot") == [("spot", "publicTrade.BTCUSDT")]
    assert topics("?symbol=BTCUSDT") == [("linear", "publicTrade.BTCUSDT"), ("spot", "publicTrade.BTCUSDT")]
    assert topics("?status=removed") == [("linear", "tickers.SOLUSDT")]
    assert topics("?status=active") == []
    assert topics("?symbol=NOPE") == []


def test_list_pagination(client, clean_db):
    symbols = [f"C{i:02d}USDT" for i in range(7)]
    for s in symbols:
        post(client, {"channel": "tickers", "category": "spot", "symbol": s})
    seen, offset = [], 0
    while offset is not None:
        page = client.get(f"/api/v1/subscriptions?limit=3&offset={offset}").get_json()
        assert page["total"] == 7 and page["limit"] == 3 and len(page["items"]) <= 3
        seen += [i["symbol"] for i in page["items"]]
        offset = page["next_offset"]
    assert seen == symbols
    past = client.get("/api/v1/subscriptions?offset=100").get_json()
    assert past["items"] == [] and past["total"] == 7 and past["next_offset"] is None


@pytest.mark.parametrize("qs", ["?limit=0", "?limit=501", "?offset=-1", "?status=gone", "?channel=bogus",
                                "?unknown=1", "?limit=abc"])
def test_list_rejects_bad_query(client, qs):
    resp = client.get(f"/api/v1/subscriptions{qs}")
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "validation_error"
    assert resp.get_json()["error"]["details"][0]["field"]


def test_concurrent_first_requests_make_one_row(app, clean_db, fake_ingest):
    from concurrent.futures import ThreadPoolExecutor

    def hold(worker: int) -> list[int]:
        client = app.test_client()
        return [post(client, BTC_BOOK | {"requested_by": f"svc-{worker}-{i}"}).status_code for i in range(5)]

    with ThreadPoolExecutor(4) as pool:
        codes = [c for result in pool.map(hold, range(4)) for c in result]
    assert sorted(codes) == [200] * 19 + [201]
    [(topic, status, requesters, _)] = rows(clean_db)
    assert len(requesters) == 20 and requesters == sorted(requesters)


def test_request_already_held_writes_nothing(client, clean_db, fake_ingest):
    """The same requester asking again gets the row back without a new row version (no
    WAL flush on the commonest retry); a new requester or a failed row still writes."""
    def version():
        with clean_db.cursor() as cur:
            cur.execute("SELECT xmin::text, updated_at FROM subscriptions WHERE status <> 'removed'")
            return cur.fetchone()

    first = post(client, BTC_BOOK | {"requested_by": "svc-a"}).get_json()
    before = version()
    again = post(client, BTC_BOOK | {"requested_by": "svc-a"})
    assert again.status_code == 200 and again.get_json() == first | {"ingest": "accepted"}
    assert version() == before
    assert [op for op, _ in fake_ingest.ops()] == ["add", "add"]      # ingest is told every time
    other = post(client, BTC_BOOK | {"requested_by": "svc-b"}).get_json()
    assert version()[0] != before[0] and other["requesters"] == ["svc-a", "svc-b"]
    assert other["updated_at"] > first["updated_at"]


def test_responses_are_the_models_serialization(client, clean_db, fake_ingest):
    """Rows go to the JSON encoder without a pydantic round trip: the bytes must be what
    the response models would write (UUID text, UTC datetimes with Z, nulls kept)."""
    import orjson

    from api.models import Subscription, SubscriptionChange
    from api.store import COLUMNS

    kline = {"channel": "kline", "category": "linear", "symbol": "ETHUSDT", "interval": "5"}
    created = post(client, kline)
    assert orjson.loads(created.data) == SubscriptionChange.model_validate_json(created.data).model_dump(mode="json")
    sid = post(client, BTC_BOOK).get_json()["id"]
    with clean_db.cursor() as cur:   # every optional field set, microseconds 0 and not
        cur.execute("UPDATE subscriptions SET status = 'failed', last_error = 'error:\"quoted\" é', "
                    "last_event_at = '2026-01-02 03:04:05+00', updated_at = '2026-01-02 03:04:05.000123+00' "
                    "WHERE id = %s", (sid,))
        cur.execute(f"SELECT {COLUMNS} FROM subscriptions ORDER BY created_at, id")
        names = [d.name for d in cur.description]
        expected = [Subscription.model_validate(dict(zip(names, r))).model_dump(mode="json") for r in cur.fetchall()]
    one = client.get(f"/api/v1/subscriptions/{sid}")
    assert orjson.loads(one.data) == expected[1]
    assert b'"last_event_at":"2026-01-02T03:04:05Z"' in one.data and b'.000123Z"' in one.data
    assert orjson.loads(client.get("/api/v1/subscriptions").data)["items"] == expected
    assert set(names) == set(Subscription.model_fields)


def test_joining_an_active_subscription_does_not_ask_ingest(client, clean_db, fake_ingest):
    """Active means ingest holds the topic at Bybit: a new requester is recorded and answered
    at once, even with ingest silent (no wait for the control timeout). Pending or failed
    rows still go to ingest."""
    first = post(client, BTC_BOOK | {"requested_by": "svc-a"}).get_json()
    with clean_db.cursor() as cur:
        cur.execute("UPDATE subscriptions SET status = 'active' WHERE id = %s", (first["id"],))
    clean_db.commit()
    fake_ingest.mode = "silent"
    joined = post(client, BTC_BOOK | {"requested_by": "svc-b"})
    assert joined.status_code == 200
    body = joined.get_json()
    assert body["ingest"] == "not_needed" and body["status"] == "active"
    assert body["requesters"] == ["svc-a", "svc-b"] and body["id"] == first["id"]
    assert [op for op, _ in fake_ingest.ops()] == ["add"]              # only the first request
    with clean_db.cursor() as cur:
        cur.execute("UPDATE subscriptions SET status = 'failed', last_error = 'x' WHERE id = %s", (first["id"],))
    clean_db.commit()
    fake_ingest.mode = "ack"
    retried = post(client, BTC_BOOK | {"requested_by": "svc-c"}).get_json()
    assert retried["status"] == "pending" and retried["ingest"] == "accepted"
    assert [op for op, _ in fake_ingest.ops()] == ["add", "add"]
