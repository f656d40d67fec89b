"""ingest/rest.py without a network: signing vectors (docs/bybit.md#signing), paging, and every error
class backing off (delays injected, never slept) and raising instead of reading as empty."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from ingest.rest import RestClient, RestError, query_string, signature

FRAMES = Path(__file__).resolve().parent.parent / "frames"
KEY, SECRET = "EXAMPLEkey012345", "EXAMPLEsecretDoNotUse0123456789abcdef"


def frame(name: str) -> dict:
    return json.loads((FRAMES / f"{name}.json").read_text())


def test_signature_matches_protocol_test_vectors():
    qs = query_string({"coin": "USDT", "accountType": "UNIFIED"})
    assert qs == "accountType=UNIFIED&coin=USDT"
    assert signature(SECRET, 1785000000000, KEY, 5000, qs) == \
        "719b4f396129eee0fda21cf9b3cbebd065361c8cc0f3ec298fa5f0b1ccb88e5f"
    body = '{"category":"linear","symbol":"BTCUSDT","side":"Buy","orderType":"Limit","qty":"0.001","price":"30000"}'
    assert signature(SECRET, 1785000000000, KEY, 5000, body) == \
        "8d56dda1d96ec09dea7e4d5c325a016fe8d52f948d874852c85e1e3213447372"


def test_query_string_skips_none_and_refuses_values_needing_escapes():
    assert query_string({"b": "2", "a": None, "cursor": "4123%3A0%2C4123%3A0"}) == "b=2&cursor=4123%3A0%2C4123%3A0"
    with pytest.raises(ValueError):
        query_string({"symbol": "BTC USDT"})
    with pytest.raises(ValueError):
        query_string({"x": "a&b=c"})


class Fake:
    """A scripted Bybit: each call pops the next answer (status, body, headers) for its path."""

    def __init__(self, script: dict[str, list]):
        self.script = {k: list(v) for k, v in script.items()}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v5/market/time" and not self.script.get(path):
            return httpx.Response(200, json=frame("rest_server_time"))
        status, body, headers = self.script[path].pop(0)
        if isinstance(body, (dict, list)):
            return httpx.Response(status, json=body, headers=headers)
        return httpx.Response(status, content=body, headers=headers)

    def calls(self, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == path]


def ok(result: dict, time_ms: int = 1785000010000):
    return 200, {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": time_ms}, {}


def err(code: int, msg: str = "x", headers=None):
    return 200, {"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": 1785000010000}, headers or {}


def run_client(fake: Fake, coro_fn, **kw):
    delays: list[float] = []

    async def sleep(s):
        delays.append(s)

    async def main():
        client = RestClient("https://bybit.invalid", KEY, SECRET, transport=httpx.MockTransport(fake), sleep=sleep,
                            **kw)
        try:
            return await coro_fn(client)
        finally:
            await client.close()

    return asyncio.run(main()), delays


WALLET = ("/v5/account/wallet-balance", {"accountType": "UNIFIED"})


def test_signed_request_sends_exactly_the_signed_query():
    fake = Fake({WALLET[0]: [ok(frame("rest_wallet_balance")["result"])]})
    reply, _ = run_client(fake, lambda c: c.get(*WALLET))
    req = fake.calls(WALLET[0])[0]
    qs = urlsplit(str(req.url)).query
    assert qs == "accountType=UNIFIED"
    h = req.headers
    assert h["X-BAPI-API-KEY"] == KEY and h["X-BAPI-RECV-WINDOW"] == "5000"
    assert h["X-BAPI-SIGN"] == signature(SECRET, int(h["X-BAPI-TIMESTAMP"]), KEY, 5000, qs)
    assert reply.result["list"][0]["accountType"] == "UNIFIED" and reply.time_ms == 1785000010000


def test_pages_follow_the_cursor_until_empty():
    page1 = {"category": "linear", "list": [{"execId": "a"}, {"execId": "b"}], "nextPageCursor": "b%3A2"}
    page2 = {"category": "linear", "list": [{"execId": "c"}], "nextPageCursor": ""}
    fake = Fake({"/v5/execution/list": [ok(page1, 1), ok(page2, 2)]})
    (records, at), delays = run_client(fake, lambda c: c.pages("/v5/execution/list", {"category": "linear"}, 2))
    assert [r["execId"] for r in records] == ["a", "b", "c"] and at == 1 and delays == []
    queries = [dict(parse_qsl(urlsplit(str(r.url)).query)) for r in fake.calls("/v5/execution/list")]
    assert "cursor" not in queries[0] and queries[1]["cursor"] == "b:2" and queries[1]["limit"] == "2"
    assert urlsplit(str(fake.calls("/v5/execution/list")[1].url)).query.endswith("cursor=b%3A2&limit=2")


def test_a_failing_later_page_raises_instead_of_returning_part():
    page1 = {"list": [{"execId": "a"}], "nextPageCursor": "next"}
    fake = Fake({"/v5/execution/list": [ok(page1), err(10005, "permission denied")]})
    with pytest.raises(RestError) as info:
        run_client(fake, lambda c: c.pages("/v5/execution/list", {"category": "linear"}, 1))
    assert info.value.ret_code == 10005


def test_endless_paging_raises():
    fake = Fake({"/v5/order/realtime": [ok({"list": [{"orderId": str(i)}], "nextPageCursor": f"c{i}"})
                                        for i in range(3)]})
    with pytest.raises(RestError, match="more than 3 pages"):
        run_client(fake, lambda c: c.pages("/v5/order/realtime", {"category": "linear"}, 1), max_pages=3)


def test_rate_limit_with_reset_header_waits_until_the_reset():
    async def go(c):
        c.offset_ms = 0
        reset = c.now_ms() + 800
        fake.script[WALLET[0]] = [err(10006, "Too many visits!", {"X-Bapi-Limit-Reset-Timestamp": str(reset)}),
                                  ok({"list": []})]
        return await c.get(*WALLET)

    fake = Fake({})
    reply, delays = run_client(fake, go)
    assert reply.result == {"list": []}
    assert len(delays) == 1 and 0.6 < delays[0] <= 0.8


def test_rate_limit_without_header_backs_off_exponentially():
    fake = Fake({WALLET[0]: [err(10006, "Too many visits!")] * 3 + [ok({"list": []})]})
    _, delays = run_client(fake, lambda c: c.get(*WALLET), backoff_base_s=0.1)
    assert delays == [0.1, 0.2, 0.4]


def test_timestamp_error_remeasures_the_clock_and_retries():
    fake = Fake({WALLET[0]: [err(10002, frame("rest_error_timestamp")["retMsg"]), ok({"list": []})]})
    reply, delays = run_client(fake, lambda c: c.get(*WALLET))
    assert reply.result == {"list": []} and len(delays) == 1
    assert len(fake.calls("/v5/market/time")) == 1


@pytest.mark.parametrize("answer", [(502, b"<html>bad gateway</html>", {}), (503, b"", {}), (429, b"", {}),
                                    err(10016, "server error"), (200, b"<html>not json</html>", {})])
def test_server_errors_back_off_then_succeed(answer):
    fake = Fake({WALLET[0]: [answer, answer, ok({"list": [{"accountType": "UNIFIED", "coin": []}]})]})
    reply, delays = run_client(fake, lambda c: c.get(*WALLET), backoff_base_s=0.5)
    assert reply.result["list"] and delays == [0.5, 1.0]


@pytest.mark.parametrize("answer", [(502, b"", {}), err(10006, "Too many visits!"), err(10002, "ts")])
def test_retries_are_bounded_and_end_in_an_error_never_an_empty_answer(answer):
    fake = Fake({WALLET[0]: [answer] * 4})
    with pytest.raises(RestError):
        run_client(fake, lambda c: c.get(*WALLET), max_attempts=4)
    assert len(fake.calls(WALLET[0])) == 4


@pytest.mark.parametrize("answer", [err(10003, "API key is invalid."), (200, frame("rest_error_sign"), {}),
                                    err(10005, "permission denied"), err(10001, "params error"),
                                    (401, b"unauthorized", {}), (200, {"list": []}, {}),
                                    (200, {"retCode": 0, "retMsg": "OK", "result": None, "time": 1}, {})])
def test_other_errors_raise_at_once(answer):
    fake = Fake({WALLET[0]: [answer]})
    with pytest.raises(RestError):
        run_client(fake, lambda c: c.get(*WALLET))
    assert len(fake.calls(WALLET[0])) == 1


def test_nothing_secret_in_repr_or_errors():
    fake = Fake({WALLET[0]: [err(10004, f"error sign! origin_string[1785000010000{KEY}5000accountType=UNIFIED]")]})
    with pytest.raises(RestError) as info:
        run_client(fake, lambda c: c.get(*WALLET))
    assert SECRET not in str(info.value) and KEY not in str(info.value) and "10004" in str(info.value)
    client = RestClient("https://bybit.invalid", KEY, SECRET)
    assert SECRET not in repr(client) and KEY not in repr(client)
    asyncio.run(client.close())


class BanningServer:
    """A real HTTP server on a free port that answers every request HTTP 403, as Bybit does
    when it bans an IP, and counts what reaches it."""

    def __init__(self):
        import http.server
        import threading

        outer = self
        self.paths: list[str] = []
        self.agents: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path.split("?")[0])
                outer.agents.append(self.headers.get("User-Agent", ""))
                body = b"403 Forbidden: access too frequent"
                self.send_response(403)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def banning_server():
    server = BanningServer()
    yield server
    server.close()


def test_403_pauses_every_call_for_the_ban_then_calls_resume(banning_server):
    """A 403 is not retried: no request reaches Bybit for ``ban_s`` (each call fails at once
    saying until when), it is counted, logged and announced; after it calls go out again."""
    import time as _time

    from prometheus_client import REGISTRY

    from ingest.rest import RestBanned

    now = [1000.0]
    announced: list = []
    bans_before = REGISTRY.get_sample_value("wsgw_ingest_rest_bans_total") or 0.0

    async def main():
        client = RestClient(banning_server.url, KEY, SECRET, sleep=lambda s: asyncio.sleep(0), ban_s=600.0,
                            clock=lambda: now[0])
        client.pause_on_403(600.0, lambda kind, body: announced.append((kind, body)))
        try:
            started = _time.time()
            with pytest.raises(RestBanned) as first:
                await client.get(*WALLET)
            assert banning_server.paths == ["/v5/account/wallet-balance"]      # one request, no retry
            assert started + 599 < first.value.until < _time.time() + 601
            assert first.value.status == 403 and "paused until" in str(first.value)
            now[0] += 599.0                                                     # 1 s before the end
            for call in (lambda: client.get(*WALLET), client.sync_clock,
                         lambda: client.pages("/v5/order/realtime", {"category": "linear"}, 50)):
                with pytest.raises(RestBanned) as later:
                    await call()
                assert _time.strftime("%Y-%m-%dT%H:%M", _time.gmtime(first.value.until)) in str(later.value)
            assert len(banning_server.paths) == 1                               # nothing reached the server
            assert client.counts["bans"] == 1 and client.counts["refused_banned"] == 3
            assert client.counts["banned_until"] == pytest.approx(first.value.until, abs=1)
            assert client.banned_until() is not None
            now[0] += 1.5                                                       # the ban is over
            assert client.banned_until() is None
            with pytest.raises(RestBanned):                                    # still banned: a new pause
                await client.get(*WALLET)
            assert len(banning_server.paths) == 2 and client.counts["bans"] == 2
        finally:
            await client.close()

    asyncio.run(main())
    assert [kind for kind, _ in announced] == ["rest_banned", "rest_banned"]
    body = announced[0][1]
    assert body["status"] == 403 and body["paused_s"] == 600.0 and body["path"] == "/v5/account/wallet-balance"
    assert "access too frequent" in body["body"] and KEY not in str(body)
    assert REGISTRY.get_sample_value("wsgw_ingest_rest_bans_total") == bans_before + 2


def test_the_ban_setting_is_at_least_ten_minutes():
    from common.config import ConfigError, load_settings

    assert load_settings({}).rest_ban_s == 600.0
    assert load_settings({"GW_REST_BAN_S": "900"}).rest_ban_s == 900.0
    with pytest.raises(ConfigError, match="GW_REST_BAN_S"):
        load_settings({"GW_REST_BAN_S": "60"})
