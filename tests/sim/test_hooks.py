"""Fault hooks and the control API over HTTP (SimControl), and the process itself."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from bybitsim.control import SimControl, SimControlError
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(20)
def test_state_has_the_documented_shape(client, sim):
    c = client("linear")
    c.subscribe("publicTrade.BTCUSDT")
    c.data("publicTrade.BTCUSDT")
    c.request({"op": "ping"})
    state = SimControl(sim.rest_url).state()
    assert {"connections", "subscribed", "connections_opened", "auth_attempts", "auth_failures",
            "pings", "frames_sent", "faults"} <= set(state)
    conn = next(x for x in state["connections"] if x["endpoint"] == "linear")
    assert {"id", "endpoint", "authenticated", "topics", "opened_at_ms"} <= set(conn)
    assert conn["topics"] == ["publicTrade.BTCUSDT"] and conn["authenticated"] is False
    assert state["subscribed"]["linear"] == ["publicTrade.BTCUSDT"]
    assert set(state["subscribed"]) == set(state["connections_opened"]) == {
        "spot", "linear", "inverse", "option", "private", "misc"}
    assert state["pings"]["linear"] >= 1 and state["frames_sent"]["linear:publicTrade.BTCUSDT"] >= 1


@pytest.mark.timeout(20)
def test_drop_aborts_matching_connections_only(client, sim):
    linear, spot = client("linear"), client("spot")
    opened = sim.state()["connections_opened"]["linear"]
    dropped = SimControl(sim.rest_url).drop("linear")["dropped"]
    assert len(dropped) == 1
    with pytest.raises(ConnectionClosedError) as info:    # no close frame: an abnormal closure
        linear.recv_until(lambda m: False, 3)
    assert info.value.rcvd is None
    assert spot.request({"op": "ping"})["ret_msg"] == "pong"
    client("linear")
    assert sim.state()["connections_opened"]["linear"] == opened + 1


@pytest.mark.timeout(20)
def test_stall_sends_nothing_not_even_protocol_pongs(client, sim):
    c = client("linear")
    c.subscribe("publicTrade.BTCUSDT")
    c.data("publicTrade.BTCUSDT")
    sim.stall("linear", enabled=True)
    wait_for(lambda: _quiet(c), 3, message="stalled connection goes quiet")
    c.send({"op": "ping"})
    pong_waiter = c.ws.ping()
    assert not pong_waiter.wait(0.3)          # the transport is not even read
    with pytest.raises(TimeoutError):
        c.recv(0.3)
    fresh = client("linear")                  # new connections stall too ...
    fresh.send({"op": "ping"})
    with pytest.raises(TimeoutError):
        fresh.recv(0.2)
    sim.stall("linear", enabled=False)        # ... until released: the queued ping is answered
    assert c.reply()["ret_msg"] == "pong"
    assert pong_waiter.wait(2)
    c.data("publicTrade.BTCUSDT")
    assert fresh.reply()["ret_msg"] == "pong"


def _quiet(c) -> bool:
    try:
        c.recv(0.25)
    except TimeoutError:
        return True
    return False


@pytest.mark.timeout(20)
def test_stall_current_only_leaves_new_connections_alone(client, sim):
    old = client("inverse")
    sim.stall("inverse", current_only=True)
    assert client("inverse").request({"op": "ping"})["ret_msg"] == "pong"
    old.send({"op": "ping"})
    with pytest.raises(TimeoutError):
        old.recv(0.3)
    sim.reset()
    assert old.reply()["ret_msg"] == "pong"


@pytest.mark.timeout(20)
def test_control_api_errors_are_json(sim):
    ctl = SimControl(sim.rest_url)
    with pytest.raises(SimControlError) as info:
        ctl.drop("moon")
    assert info.value.status == 400 and "endpoint" in info.value.body["error"]
    r = httpx.post(sim.rest_url + "/__sim/nope", json={})
    assert r.status_code == 404 and r.json()["error"]
    r = httpx.post(sim.rest_url + "/__sim/rate", content=b"{bad", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert httpx.get(sim.rest_url + "/__sim/drop").status_code == 405
    assert httpx.get(sim.rest_url + "/nothing/here").status_code == 404
    assert ctl.rate(rate=12.5)["rate"] == 12.5
    assert ctl.reset()["faults"]["reject_mode"] == "whole"


@pytest.mark.timeout(20)
def test_rest_server_time_has_the_recorded_shape(sim):
    from tests.sim.conftest import frame
    body = SimControl(sim.rest_url).server_time()
    want = frame("rest_server_time")
    assert set(body) == set(want) and set(body["result"]) == set(want["result"])
    assert body["retCode"] == 0 and int(body["result"]["timeNano"]) // 10**6 >= body["time"] - 5


@pytest.mark.timeout(30)
def test_python_m_bybitsim_serves_and_stops_on_sigterm(short_tmp):
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "GW_ENV_FILE": "",
           "SIM_PORT": str(port), "SIM_RATE": "5", "SIM_API_KEY": "k", "SIM_API_SECRET": "s",
           "GW_RUN_DIR": str(short_tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "bybitsim"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        body = wait_for(lambda: httpx.get(url + "/v5/market/time", timeout=1).json(), 10,
                        message="simulator answering")
        assert body["retCode"] == 0
        from tests.sim.conftest import Client
        c = Client(f"ws://127.0.0.1:{port}/v5/public/linear")
        c.subscribe("publicTrade.BTCUSDT")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        with pytest.raises(ConnectionClosed):
            c.recv_until(lambda m: False, 3)
        out = proc.stdout.read()
        assert '"process":"simulator"' in out and '"event":"listening"' in out
        assert "api_key='k'" not in out and "api_secret='s'" not in out     # no secret in the logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(20)
def test_bad_setting_stops_the_process_with_a_message():
    env = {"PATH": os.environ.get("PATH", ""), "GW_ENV_FILE": "", "SIM_ACCOUNT_RATE": "fast"}
    done = subprocess.run([sys.executable, "-m", "bybitsim"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=15)
    assert done.returncode == 2 and "SIM_ACCOUNT_RATE" in done.stderr
