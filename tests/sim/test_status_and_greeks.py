"""The simulator's system-status socket (/v5/public/misc/status) and its greeks pushes."""
from __future__ import annotations

import pytest

from bybitsim.control import SimControl, SimControlError
from tests.sim.conftest import Client, frame


def status_url(sim) -> str:
    return sim.ws_public_base + "/misc/status"


def test_status_socket_serves_system_status_only(sim):
    s = Client(status_url(sim))
    try:
        assert s.subscribe("system.status", req_id="st-1")["success"] is True
        bad = s.subscribe("tickers.BTCUSDT", req_id="st-2")
        assert bad["success"] is False and "handler not found" in bad["ret_msg"]
        assert s.request({"op": "ping", "req_id": "p1"})["ret_msg"] == "pong"
        assert "system.status" in sim.state()["subscribed"]["misc"]
    finally:
        s.close()


def test_posted_notice_reaches_subscribers_in_the_recorded_shape(sim):
    s = Client(status_url(sim))
    try:
        s.subscribe("system.status")
        out = sim.status_notice("Market data incident", state="ongoing", id="inc-1", serviceTypes=[5], product=[1])
        assert out["pushed_to"]
        pushed = s.data("system.status")
        recorded = frame("system_status")
        assert set(pushed) == set(recorded)
        [notice] = pushed["data"]
        assert set(notice) == set(recorded["data"][0])
        assert (notice["id"], notice["state"], notice["maintainType"]) == ("inc-1", "ongoing", 3)
        assert isinstance(notice["begin"], str) and notice["begin"].isdigit()
        # an update by id, then a new subscriber gets every notice known
        sim.status_notice("Market data incident", state="completed", id="inc-1")
        assert s.data("system.status")["data"][0]["state"] == "completed"
        late = Client(status_url(sim))
        try:
            late.subscribe("system.status")
            assert [n["id"] for n in late.data("system.status")["data"]] == ["inc-1"]
        finally:
            late.close()
    finally:
        s.close()


def test_bad_notice_is_refused_over_http(sim):
    with SimControl(sim.rest_url) as ctl:
        with pytest.raises(SimControlError) as err:
            ctl.status_notice("x", state="later")
        assert err.value.status == 400 and "state" in err.value.body["error"]
        with pytest.raises(SimControlError):
            ctl.status_notice("", state="ongoing")


def test_greeks_are_pushed_to_a_greeks_subscriber(client, sim):
    c = client("private")
    c.auth()
    assert c.subscribe("greeks")["success"] is True
    sim.account_step(1)
    push = c.data("greeks")
    recorded = frame("greeks")
    assert set(push) == set(recorded)
    assert set(push["data"][0]) == set(recorded["data"][0]) and push["data"][0]["baseCoin"] == "BTC"
