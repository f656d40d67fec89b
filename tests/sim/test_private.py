"""Private stream: auth, topics, account pushes against the ground truth, close hooks."""
from __future__ import annotations

import time
from decimal import Decimal

import pytest

import bybitsim
from tests.sim.conftest import frame
from tests.support import wait_for

RANK = {"New": 0, "PartiallyFilled": 1, "Filled": 2, "Cancelled": 2}


def test_signature_matches_the_protocol_test_vector():
    req = frame("req_auth")
    assert bybitsim.sign("EXAMPLEsecretDoNotUse0123456789abcdef", req["args"][1]) == req["args"][2]


@pytest.mark.timeout(20)
def test_auth_success_echoes_req_id_and_conn_id(client, sim):
    c = client("private")
    ok = c.auth(req_id="auth-1")
    assert set(ok) == set(frame("auth_ok")) and ok["success"] is True and ok["req_id"] == "auth-1"
    assert ok["conn_id"] and ok["ret_msg"] == ""
    state = sim.state()
    assert [x["authenticated"] for x in state["connections"] if x["endpoint"] == "private"] == [True]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ["wrong_key", "wrong_signature", "expired", "hook"])
def test_auth_failures_reply_params_error_and_leave_the_socket_open(client, sim, how):
    c = client("private")
    before = sim.state()["auth_failures"]
    if how == "hook":
        sim.auth(fail=True)
    reply = {
        "wrong_key": lambda: c.auth(key="nope", req_id=None),
        "wrong_signature": lambda: c.auth(secret="nope", req_id=None),
        "expired": lambda: c.auth(expires_in_ms=-1000, req_id=None),
        "hook": lambda: c.auth(req_id=None),
    }[how]()
    assert reply == {**frame("auth_fail"), "conn_id": reply["conn_id"]}
    assert sim.state()["auth_failures"] == before + 1
    assert c.request({"op": "ping"})["op"] == "pong"          # still open
    sim.auth(fail=False)
    assert c.auth()["success"] is True


@pytest.mark.timeout(20)
def test_private_topics_need_auth_first(client):
    c = client("private")
    ack = c.subscribe("order", req_id="sub-p0")
    assert ack["success"] is False and ack["ret_msg"] == "error:topic:order needs auth first"
    c.auth()
    ack = c.subscribe("order", "execution", "execution.fast", "position", "wallet", "greeks", req_id="sub-p1")
    assert set(ack) == set(frame("subscribe_ok_private")) and ack["success"] is True
    ack = c.subscribe("order.linear", "position.linear", "execution.fast.linear")
    assert ack["success"] is True
    assert c.subscribe("position.spot")["ret_msg"] == "error:handler not found,topic:position.spot"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("args,pair", [
    (["order", "order.linear"], "order and order.linear"),
    (["wallet", "execution.spot", "execution"], "execution and execution.spot"),
    (["position.option", "execution.fast", "position"], "position and position.option"),
    (["execution.fast", "execution.fast.inverse"], "execution.fast and execution.fast.inverse"),
])
def test_all_in_one_and_categorised_topic_in_one_request_subscribes_nothing(client, sim, args, pair):
    c = client("private")
    c.auth()
    ack = c.subscribe(*args, req_id="sub-mix")
    assert ack["success"] is False and ack["req_id"] == "sub-mix"
    assert ack["ret_msg"].endswith(pair)
    assert sim.state()["subscribed"]["private"] == []
    for topic in args:                           # each alone is fine, in either order
        assert c.subscribe(topic)["success"] is True


@pytest.mark.timeout(20)
def test_other_families_mix_in_one_request(client):
    c = client("private")
    c.auth()
    ack = c.subscribe("order", "execution.linear", "execution.fast", "position.inverse", "wallet", "greeks",
                      "dcp.future", "strategy", "spread.order", "spread.execution")
    assert ack["success"] is True


@pytest.mark.timeout(30)
def test_account_pushes_match_the_ground_truth(client, sim):
    c = client("private")
    c.auth()
    assert c.subscribe("order", "execution", "execution.fast", "position", "wallet")["success"] is True
    assert c.subscribe("order.linear")["success"] is True      # not with "order": separate requests
    sim.rate(account_rate=200)
    wait_for(lambda: sim.account()["events"] >= 150, 10, message="account events")
    sim.rate(account_rate=0)
    conn_id = next(x["id"] for x in sim.state()["connections"] if x["endpoint"] == "private")
    truth = wait_for(lambda: _settled(sim, conn_id), 5, message="pushes settled")
    expected = truth["pushes_by_conn"][conn_id]
    assert expected == truth["pushes"][-len(expected):]
    got = [c.recv(3) for _ in expected]
    assert got == expected

    shapes = {"order": "order", "order.linear": "order", "execution": "execution",
              "execution.fast": "execution_fast", "position": "position", "wallet": "wallet"}
    latest_order, latest_pos, seen_exec = {}, {}, set()
    wallet = None
    for f in got:
        want = frame(shapes[f["topic"]])
        assert set(f) == set(want) and set(f["data"][0]) == set(want["data"][0]), f["topic"]
        for item in f["data"]:
            if f["topic"] == "order":
                prev = latest_order.get(item["orderId"])
                if prev:
                    assert RANK[item["orderStatus"]] >= RANK[prev["orderStatus"]]
                    assert prev["orderStatus"] not in ("Filled", "Cancelled")
                    assert Decimal(item["cumExecQty"]) >= Decimal(prev["cumExecQty"])
                assert Decimal(item["cumExecQty"]) + Decimal(item["leavesQty"]) <= Decimal(item["qty"])
                latest_order[item["orderId"]] = item
            elif f["topic"] == "execution":
                assert item["execId"] not in seen_exec
                seen_exec.add(item["execId"])
            elif f["topic"] == "position":
                latest_pos[item["symbol"]] = item
            elif f["topic"] == "wallet":
                wallet = item
    orders = {o["orderId"]: o for o in truth["orders"]}
    assert latest_order and all(orders[oid] == o for oid, o in latest_order.items())
    assert {e["execId"] for e in truth["executions"]} == seen_exec
    assert {p["symbol"]: p for p in truth["positions"]} == latest_pos
    assert truth["balances"] == wallet
    statuses = {o["orderStatus"] for o in truth["orders"]}
    assert "Filled" in statuses and statuses <= set(RANK)
    assert len(got) > 300, len(got)


def _settled(sim, conn_id):
    a = sim.account()
    b = sim.account()
    mine = a["pushes_by_conn"].get(conn_id)
    return a if mine and len(mine) == len(b["pushes_by_conn"][conn_id]) else None


@pytest.mark.timeout(20)
def test_the_account_moves_with_nobody_connected(sim):
    before = sim.account()["events"]
    sim.rate(account_rate=100)
    wait_for(lambda: sim.account()["events"] >= before + 20, 5)


@pytest.mark.timeout(20)
def test_close_private_hook_closes_with_a_close_frame(client, sim):
    from websockets.exceptions import ConnectionClosedOK
    c = client("private")
    c.auth()
    sim.close_private(0.3)
    with pytest.raises(ConnectionClosedOK):
        c.recv_until(lambda m: False, 5)
    assert c.ws.close_code == 1000 and c.ws.close_reason == "close_private"


@pytest.mark.timeout(20)
def test_max_active_time_closes_an_idle_private_connection(client, sim):
    from websockets.exceptions import ConnectionClosedOK
    c = client("private", "?max_active_time=30s")
    c.auth()
    conn = next(x for x in sim.state()["connections"] if x["endpoint"] == "private")
    assert conn["max_active_time_s"] == 30.0
    # Shorten the real timer rather than wait 30 s: the same watchdog loop enforces it.
    sim.run(lambda: setattr(sim.sim.conns[conn["id"]], "max_active_s", 0.5))
    started = time.monotonic()
    with pytest.raises(ConnectionClosedOK):
        c.recv_until(lambda m: False, 5)
    assert c.ws.close_reason == "max_active_time" and time.monotonic() - started >= 0.4


@pytest.mark.timeout(20)
def test_bad_max_active_time_is_refused(sim):
    import httpx
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect
    with pytest.raises(InvalidStatus):
        connect(sim.ws_private_url + "?max_active_time=5s", open_timeout=3).__enter__()
    assert httpx.get(sim.rest_url + "/v5/market/time").status_code == 200


@pytest.mark.timeout(20)
def test_a_transfer_in_and_out_pushes_the_wallet_a_b_a(client, sim):
    c = client("private")
    c.auth()
    assert c.subscribe("wallet")["success"] is True
    marks = int(time.time() * 1000)
    states = [sim.transfer(a, marks_at_ms=marks)["wallet"] for a in ("10", "10", "-10")]
    pushed = [c.data("wallet") for _ in range(3)]
    assert [p["data"][0] for p in pushed] == states
    a, b, a2 = (Decimal(s["coin"][0]["walletBalance"]) for s in states)
    assert b == a + 10 and a2 == a and states[0] == states[2]
    assert len({p["creationTime"] for p in pushed}) >= 1 and len({p["id"] for p in pushed}) == 3
    assert Decimal(sim.account()["balances"]["coin"][0]["walletBalance"]) == a
    with pytest.raises(Exception):
        sim.transfer("not a number")
