"""Bad input by hand, auth, request ids and every error shape. Nothing is written
by a refused request."""
from __future__ import annotations

import json

import pytest

BOOK = {"channel": "orderbook", "category": "linear", "symbol": "BTCUSDT", "depth": 50}


def count(db) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM subscriptions")
        return cur.fetchone()[0]


def error_of(resp, status: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"])
    assert resp.headers["X-Request-ID"]
    return body["error"]


def fields(err) -> list[str]:
    return [d["field"] for d in err["details"]]


@pytest.mark.parametrize("body, field", [
    ({**BOOK, "depth": 0}, "depth"),
    ({**BOOK, "depth": -50}, "depth"),
    ({**BOOK, "depth": 51}, "depth"),
    ({**BOOK, "depth": "50"}, "depth"),
    ({**BOOK, "depth": True}, "depth"),
    ({**BOOK, "depth": 50.0}, "depth"),
    ({**BOOK, "symbol": "btcusdt"}, "symbol"),
    ({**BOOK, "symbol": "BTC'; DROP TABLE subscriptions;--"}, "symbol"),
    ({**BOOK, "symbol": "BTC USDT"}, "symbol"),
    ({**BOOK, "symbol": "ΒΤСUSDT"}, "symbol"),            # Greek/Cyrillic look-alikes
    ({**BOOK, "symbol": "🚀🚀"}, "symbol"),
    ({**BOOK, "symbol": ""}, "symbol"),
    ({**BOOK, "symbol": "A" * 41}, "symbol"),
    ({**BOOK, "category": "futures"}, "category"),
    ({**BOOK, "channel": "books"}, "channel"),
    ({"channel": "orderbook", "category": "linear", "symbol": "BTCUSDT"}, "depth"),
    ({"channel": "trades", "symbol": "BTCUSDT"}, "category"),
    ({"channel": "trades", "category": "linear"}, "symbol"),
    ({"channel": "kline", "category": "option", "symbol": "BTCUSDT", "interval": "1"}, "category"),
    ({"channel": "kline", "category": "linear", "symbol": "BTCUSDT", "interval": "2"}, "interval"),
    ({"channel": "trades", "category": "linear", "symbol": "BTCUSDT", "depth": 1}, "depth"),
    ({"channel": "wallet", "category": "linear"}, "category"),
    ({"channel": "order", "symbol": "BTCUSDT"}, "symbol"),
    ({**BOOK, "requested_by": ""}, "requested_by"),
    ({**BOOK, "requested_by": "svc a"}, "requested_by"),
    ({**BOOK, "requested_by": "x" * 65}, "requested_by"),
    ({**BOOK, "requested_by": "'; DELETE FROM subscriptions"}, "requested_by"),
    ({**BOOK, "extra": 1}, "extra"),
    ({}, "channel"),
])
def test_invalid_subscription_is_422_naming_the_field(client, clean_db, fake_ingest, body, field):
    err = error_of(client.post("/api/v1/subscriptions", json=body), 422)
    assert err["code"] == "validation_error"
    assert field in fields(err), err
    assert count(clean_db) == 0 and fake_ingest.requests == []


@pytest.mark.parametrize("data, content_type, code", [
    ("{not json", "application/json", "invalid_json"),
    ("", "application/json", "invalid_json"),
    ("[1, 2]", "application/json", "invalid_json"),
    ('"orderbook"', "application/json", "invalid_json"),
    ("null", "application/json", "invalid_json"),
    (json.dumps(BOOK), "text/plain", "bad_content_type"),
    ("channel=orderbook", "application/x-www-form-urlencoded", "bad_content_type"),
    (json.dumps(BOOK), None, "bad_content_type"),
    (b"\xff\xfe\x00garbage", "application/json", "invalid_json"),
])
def test_bad_body_is_400(client, clean_db, data, content_type, code):
    headers = {"Content-Type": content_type} if content_type else {}
    err = error_of(client.post("/api/v1/subscriptions", data=data, headers=headers), 400)
    assert err["code"] == code
    assert count(clean_db) == 0


@pytest.mark.parametrize("raw, key", [
    ('{"channel":"trades","category":"linear","symbol":"BTCUSDT","channel":"tickers"}', "channel"),
    ('{"channel":"trades","category":"linear","symbol":"BTCUSDT","requested_by":"a","requested_by":"b"}',
     "requested_by"),
    ('{"channel":"trades","category":"linear","symbol":"BTCUSDT","extra":{"k":1,"k":2}}', "k"),
])
def test_duplicate_keys_are_400_naming_the_key(client, clean_db, fake_ingest, raw, key):
    """Which of two equal keys counts depends on the parser (orjson and pydantic: the last;
    others: the first), so a body with one is ambiguous and refused before anything is written."""
    err = error_of(client.post("/api/v1/subscriptions", data=raw, content_type="application/json"), 400)
    assert err["code"] == "invalid_json" and err["details"] == {"key": key} and key in err["message"]
    assert count(clean_db) == 0 and fake_ingest.requests == []


def test_huge_body_is_413(client, clean_db):
    body = json.dumps({**BOOK, "requested_by": "a" * 20_000})
    err = error_of(client.post("/api/v1/subscriptions", data=body, content_type="application/json"), 413)
    assert err["code"] == "body_too_large"
    assert count(clean_db) == 0


def test_unicode_symbols_are_422_and_lone_surrogates_400(client, clean_db):
    raw = '{"channel":"trades","category":"linear","symbol":"\\u0000BTC\\u00fc"}'
    err = error_of(client.post("/api/v1/subscriptions", data=raw, content_type="application/json"), 422)
    assert fields(err) == ["symbol"]
    lone = '{"channel":"trades","category":"linear","symbol":"\\ud83d"}'
    assert error_of(client.post("/api/v1/subscriptions", data=lone, content_type="application/json"),
                    400)["code"] == "invalid_json"
    assert count(clean_db) == 0


@pytest.mark.parametrize("path", ["/api/v1/subscriptions?symbol=%00", "/api/v1/balances?coin=a%00b",
                                  "/api/v1/orders?status=%00", "/api/v1/orders?symbol=%0A"])
def test_control_characters_in_filters_are_422(client, path):
    assert error_of(client.get(path), 422)["code"] == "validation_error"


def test_unknown_path_and_method(client):
    assert error_of(client.get("/api/v1/nothing"), 404)["code"] == "not_found"
    err = error_of(client.put("/api/v1/subscriptions", json=BOOK), 405)
    assert err["code"] == "method_not_allowed"
    resp = client.patch("/health")
    assert resp.status_code == 405 and "GET" in resp.headers["Allow"]


def test_request_id_taken_when_sane_else_generated(client):
    given = client.get("/health", headers={"X-Request-ID": "abc-123.x:y"})
    assert given.headers["X-Request-ID"] == "abc-123.x:y"
    for bad in ("has space", "x" * 200, "<script>", ""):
        resp = client.get("/health", headers={"X-Request-ID": bad})
        assert resp.headers["X-Request-ID"] != bad and len(resp.headers["X-Request-ID"]) == 32
    a, b = client.get("/health"), client.get("/health")
    assert a.headers["X-Request-ID"] != b.headers["X-Request-ID"]
    assert client.get("/api/v1/nothing").headers["X-Request-ID"]


def test_request_id_is_the_trace_id_in_logs(client, capsys):
    import structlog.testing

    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        client.post("/api/v1/subscriptions", json=BOOK, headers={"X-Request-ID": "trace-me"})
    mine = [line for line in logs if line.get("trace_id") == "trace-me"]
    assert {"subscription_requested", "request"} <= {line["event"] for line in mine}


def test_access_log_keeps_changes_errors_and_slow_reads_at_info(client, monkeypatch):
    import structlog.testing

    import api

    def levels():
        return {(line["method"], line["status"]): line["log_level"] for line in logs if line["event"] == "request"}

    with structlog.testing.capture_logs() as logs:
        sid = client.post("/api/v1/subscriptions", json=BOOK).get_json()["id"]
        client.get(f"/api/v1/subscriptions/{sid}")
        client.get("/api/v1/nothing")
        client.delete(f"/api/v1/subscriptions/{sid}")
    assert levels() == {("POST", 201): "info", ("GET", 200): "debug", ("GET", 404): "info", ("DELETE", 200): "info"}
    monkeypatch.setattr(api, "SLOW_REQUEST_S", 0.0)
    with structlog.testing.capture_logs() as logs:
        client.get("/api/v1/subscriptions")
    assert levels() == {("GET", 200): "info"}


@pytest.fixture
def keyed_client(app_factory, fake_ingest):
    return app_factory(API_KEY="s3cret-key").test_client()


def test_api_key_required_on_v1_only(keyed_client, clean_db):
    for path in ("/api/v1/subscriptions", "/api/v1/balances", "/api/v1/orders", "/api/v1/status",
                 "/api/v1/subscriptions/00000000-0000-0000-0000-000000000000"):
        assert error_of(keyed_client.get(path), 401)["code"] == "unauthorized"
        assert error_of(keyed_client.get(path, headers={"X-API-Key": "wrong"}), 401)["code"] == "unauthorized"
    err = error_of(keyed_client.post("/api/v1/subscriptions", json=BOOK, headers={"X-API-Key": "s3cret-keyX"}), 401)
    assert "s3cret" not in json.dumps(err)
    assert count(clean_db) == 0
    # Checked before the body: an unauthenticated client learns nothing about validation.
    assert keyed_client.post("/api/v1/subscriptions", data="{bad").status_code == 401
    ok = keyed_client.post("/api/v1/subscriptions", json=BOOK, headers={"X-API-Key": "s3cret-key"})
    assert ok.status_code == 201
    assert keyed_client.get("/health").status_code == 200
    assert keyed_client.get("/metrics").status_code == 200
    assert keyed_client.get("/openapi.json").status_code == 200
    assert keyed_client.get("/api/v1/subscriptions", headers={"X-API-Key": "s3cret-key"}).status_code == 200


def test_database_down_is_503_without_internals(app_factory, fake_ingest):
    client = app_factory(DATABASE_URL="postgresql://wsgw:wsgw@127.0.0.1:1/nothing").test_client()
    err = error_of(client.get("/api/v1/subscriptions"), 503)
    assert err["code"] == "database_unavailable" and "127.0.0.1" not in err["message"]
    assert error_of(client.post("/api/v1/subscriptions", json=BOOK), 503)["code"] == "database_unavailable"


def test_unexpected_error_is_500_without_internals(app, monkeypatch):
    from api import store

    def boom(*_a, **_k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(store, "list_page", boom)
    err = error_of(app.test_client().get("/api/v1/subscriptions"), 500)
    assert err["code"] == "internal_error" and "secret" not in err["message"]


def test_doubled_slashes_are_a_json_404_not_an_html_redirect(client):
    """werkzeug answered /api//v1/... with a 308 and an HTML page (Flask passes routing
    redirects by the error handlers); a client of this API gets its one error shape."""
    for path in ("/api//v1/subscriptions", "/api/v1//subscriptions", "/api/v1/subscriptions//x"):
        resp = client.get(path)
        assert resp.status_code == 404 and resp.is_json, (path, resp.status_code, resp.data[:80])
        assert resp.get_json()["error"]["code"] == "not_found"
