"""Subscribe/unsubscribe acks, failures and pongs in each endpoint's shape (docs/bybit.md#subscribe-unsubscribe-and-acks)."""
from __future__ import annotations

import pytest

import bybitsim
from tests.sim.conftest import Client, frame
from tests.support import wait_for


def keys(d: dict) -> set:
    return set(d)


@pytest.mark.timeout(20)
def test_subscribe_acks_have_each_endpoints_shape(client):
    linear = client("linear").subscribe("publicTrade.BTCUSDT", req_id="sub-1")
    assert keys(linear) == keys(frame("subscribe_ok")) and linear["req_id"] == "sub-1"
    assert linear["success"] is True and linear["ret_msg"] == "" and linear["op"] == "subscribe"
    inverse = client("inverse").subscribe("tickers.BTCUSD")          # no req_id: "" on linear/inverse
    assert keys(inverse) == keys(frame("subscribe_ok")) and inverse["req_id"] == ""
    spot = client("spot")
    ack = spot.subscribe("publicTrade.BTCUSDT", req_id="sub-2")
    assert keys(ack) == keys(frame("subscribe_ok_spot")) and ack["ret_msg"] == "subscribe"
    assert "req_id" not in spot.subscribe("tickers.BTCUSDT")         # spot omits it when not sent
    option = client("option").subscribe("orderbook.25.BTC-31JUL26-120000-C")
    assert keys(option) == keys(frame("subscribe_ok_option")) and "op" not in option
    assert option["data"] == {"failTopics": [], "successTopics": ["orderbook.25.BTC-31JUL26-120000-C"]}
    assert option["type"] == "COMMAND_RESP" and option["success"] is True


@pytest.mark.timeout(20)
def test_unsubscribe_acks_and_data_stops(client, sim):
    c = client("linear")
    c.subscribe("publicTrade.BTCUSDT")
    c.data("publicTrade.BTCUSDT")
    ack = c.request({"req_id": "unsub-1", "op": "unsubscribe", "args": ["publicTrade.BTCUSDT"]})
    assert ack == {**ack, "success": True, "op": "unsubscribe", "req_id": "unsub-1", "ret_msg": ""}
    wait_for(lambda: sim.state()["subscribed"]["linear"] == [], 3)
    spot = client("spot")
    spot.subscribe("tickers.BTCUSDT")
    ack = spot.request({"op": "unsubscribe", "args": ["tickers.BTCUSDT"]})
    assert ack["op"] == "unsubscribe" and ack["success"] is True
    option = client("option")
    option.subscribe("publicTrade.BTC")
    ack = option.request({"op": "unsubscribe", "args": ["publicTrade.BTC"]})
    assert ack["type"] == "COMMAND_RESP" and ack["data"]["successTopics"] == ["publicTrade.BTC"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("endpoint,topic", [
    ("linear", "orderbook.500.BTCUSDT"),       # depth withdrawn
    ("linear", "kline.7.BTCUSDT"),             # no such interval
    ("linear", "orderbook.50.btcusdt"),        # lower case
    ("linear", "order"),                       # private topic on a public socket
    ("spot", "allLiquidation.BTCUSDT"),        # channel not on spot
    ("option", "kline.1.BTC-31JUL26-120000-C"),
    ("linear", "nonsense"),
    ("private", "publicTrade.BTCUSDT"),        # public topic on the private socket
    ("private", "position.spot"),              # position has no spot variant
    ("inverse", "insurance.USDT"),             # the USDT pool is on linear
    ("spot", "orderbook.100.BTCUSDT"),         # an option depth
    ("option", "orderbook.50.XRP-30OCT26-0.4-P-USDT"),
    ("linear", "tickers.BTC-31JUL26-120000-C"),  # an option symbol on linear
])
def test_handler_not_found(client, endpoint, topic):
    c = client(endpoint)
    if endpoint == "private":
        c.auth()
    ack = c.subscribe(topic, req_id="sub-3")
    if endpoint == "option":
        assert ack["success"] is False and ack["data"]["failTopics"] == [topic]
    else:
        assert ack["success"] is False and ack["ret_msg"] == f"error:handler not found,topic:{topic}"
        assert ack["req_id"] == "sub-3"


@pytest.mark.timeout(20)
def test_unknown_symbol_fails_only_when_a_symbol_list_is_configured(client):
    with bybitsim.run_in_thread(symbols="BTCUSDT,option:BTC-31JUL26-120000-C", account_rate=0) as listed:
        c = Client(listed.ws_public_url("linear"))
        try:
            assert c.subscribe("tickers.BTCUSDT")["success"] is True
            ack = c.subscribe("tickers.NOPEUSDT")
            assert ack["ret_msg"] == "error:handler not found,topic:tickers.NOPEUSDT"
        finally:
            c.close()
        o = Client(listed.ws_public_url("option"))
        try:
            assert o.subscribe("publicTrade.BTC")["success"] is True
            assert o.subscribe("publicTrade.ETH")["data"]["failTopics"] == ["publicTrade.ETH"]
        finally:
            o.close()
    assert client("linear").subscribe("tickers.NOPEUSDT")["success"] is True   # no list: any symbol


@pytest.mark.timeout(20)
def test_already_subscribed_keeps_the_existing_subscription(client):
    c = client("linear")
    c.subscribe("orderbook.50.BTCUSDT")
    ack = c.subscribe("orderbook.50.BTCUSDT", req_id="sub-4")
    assert ack["success"] is False
    assert ack["ret_msg"] == frame("subscribe_fail_duplicate")["ret_msg"]
    assert c.data("orderbook.50.BTCUSDT")["type"] in ("snapshot", "delta")


@pytest.mark.timeout(20)
def test_spot_more_than_ten_args_subscribes_nothing(client, sim):
    c = client("spot")
    ack = c.subscribe(*[f"publicTrade.C{i}USDT" for i in range(11)], req_id="sub-5")
    assert ack == {**frame("subscribe_fail_spot_args"), "conn_id": ack["conn_id"]}
    assert sim.state()["subscribed"]["spot"] == []
    assert c.subscribe(*[f"publicTrade.C{i}USDT" for i in range(10)])["success"] is True


@pytest.mark.timeout(20)
def test_reject_modes_whole_and_partial(client, sim):
    sim.reject("orderbook.50.BADUSDT", "linear")
    c = client("linear")
    ack = c.subscribe("publicTrade.BTCUSDT", "orderbook.50.BADUSDT")          # default: whole
    assert ack["success"] is False and ack["ret_msg"] == "error:handler not found,topic:orderbook.50.BADUSDT"
    assert sim.state()["subscribed"]["linear"] == []
    sim.reject_mode("partial")
    ack = c.subscribe("publicTrade.BTCUSDT", "orderbook.50.BADUSDT", "tickers.BTCUSDT")
    assert ack["success"] is False and ack["ret_msg"].endswith("topic:orderbook.50.BADUSDT")
    assert sim.state()["subscribed"]["linear"] == ["publicTrade.BTCUSDT", "tickers.BTCUSDT"]
    c.data("tickers.BTCUSDT")
    sim.reject("publicTrade.BTC")                                             # any endpoint
    o = client("option")
    ack = o.subscribe("publicTrade.BTC", "orderbook.25.BTC-31JUL26-120000-C")
    assert ack["data"] == {"failTopics": ["publicTrade.BTC"], "successTopics": ["orderbook.25.BTC-31JUL26-120000-C"]}
    sim.reject_mode("whole")
    o.request({"op": "unsubscribe", "args": ["orderbook.25.BTC-31JUL26-120000-C"]})
    ack = o.subscribe("publicTrade.BTC", "orderbook.25.BTC-31JUL26-120000-C")
    assert ack["success"] is False and ack["data"]["successTopics"] == []
    with pytest.raises(bybitsim.control.SimControlError):
        sim.reject_mode("sometimes")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("endpoint,recorded", [
    ("spot", "pong_public_spot"), ("linear", "pong_public"), ("inverse", "pong_public"),
    ("option", "pong_public_option"), ("private", "pong_private"),
])
def test_pong_shapes(client, endpoint, recorded):
    c = client(endpoint)
    req = frame("req_ping")
    if endpoint in ("spot", "option"):
        req = {"op": "ping"}      # the recorded spot/option pongs answer a ping without req_id
    pong = c.request(req)
    assert keys(pong) == keys(frame(recorded))
    if endpoint in ("option", "private"):
        assert pong["op"] == "pong" and pong["args"][0].isdigit()
    else:
        assert pong["op"] == "ping" and pong["ret_msg"] == "pong" and pong["success"] is True


@pytest.mark.timeout(20)
def test_invalid_json_and_unknown_op_keep_the_socket_open(client):
    c = client("linear")
    bad = c.request("{not json")
    assert bad["success"] is False and bad["ret_msg"].startswith("Failed to decode incoming data:")
    assert c.request({"op": "hello"})["ret_msg"] == "error:invalid op"
    assert c.request({"op": "ping"})["ret_msg"] == "pong"


@pytest.mark.timeout(20)
def test_pong_hook_stops_and_restarts_answers(client, sim):
    c = client("linear")
    sim.pong("linear", enabled=False)
    c.send({"op": "ping", "req_id": "silent"})
    with pytest.raises(TimeoutError):
        c.recv(0.3)
    assert sim.state()["pings"]["linear"] >= 1
    sim.pong("linear", enabled=True)
    assert c.request({"op": "ping", "req_id": "back"})["req_id"] == "back"


@pytest.mark.timeout(30)
def test_a_public_connection_holds_at_most_21000_characters_of_topics(client, sim):
    sim.rate(rate=0)                                  # 1,050 silent topics: only acks matter here
    c = client("linear")
    topics = [f"tickers.S{i:07d}USDT" for i in range(1050)]   # 20 characters each: 21,000 in all
    for start in range(0, 1050, 350):
        ack = c.subscribe(*topics[start:start + 350])
        assert ack["success"] is True, ack
    ack = c.subscribe("tickers.BTCUSDT", req_id="sub-over")
    assert ack["success"] is False and ack["req_id"] == "sub-over" and "21000" in ack["ret_msg"]
    assert c.request({"op": "unsubscribe", "args": [topics[0]]})["success"] is True
    assert c.subscribe("tickers.BTCUSDT")["success"] is True         # 15 characters fit again
    state = sim.state()["subscribed"]["linear"]
    assert len(state) == 1050 and "tickers.BTCUSDT" in state and topics[0] not in state
    other = client("linear")                          # the limit is per connection
    assert other.subscribe("tickers.ETHUSDT")["success"] is True
