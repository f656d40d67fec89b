"""A subscription's path end to end: REST → PostgreSQL → ZeroMQ → ingest → simulator → publisher →
RabbitMQ, status written back through the persister, under supervisord."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import wait_for
from tests.support.gateway import PROGRAMS, ROOT, get_messages

pytestmark = pytest.mark.timeout(180)
CONTRACT_KEYS = {"event_id", "event_class", "source", "category", "topic", "symbol", "type", "exchange_ts",
                 "received_at", "stream_seq", "trace_id", "data"}


def test_every_program_running_with_its_own_log(gateway):
    states = gateway.states()
    assert {p: states.get(p) for p in PROGRAMS} == {p: "RUNNING" for p in PROGRAMS}
    for program in PROGRAMS:
        wait_for(lambda: gateway.log_text(program).strip(), 15, message=f"{program}.log written")
        first = gateway.log_text(program).splitlines()[0]
        assert json.loads(first)["process"] == program


def test_ingest_reads_first_the_others_run_at_a_lower_cpu_priority(gateway):
    """GW_NICE_BEHIND_INGEST (5 unless set): the publisher, persister and API (master and workers)
    run that much nicer than ingest, which keeps supervisord's priority."""
    import psutil

    base = psutil.Process(gateway.pid("ingest")).nice()
    assert base == psutil.Process().nice()      # supervisord and its programs start from ours
    for program in ("publisher", "persister", "api"):
        proc = psutil.Process(gateway.pid(program))
        assert {p.nice() for p in [proc, *proc.children()]} == {base + 5}, program
    assert psutil.Process(gateway.pid("api")).children(), "gunicorn's workers"


def test_trades_flow_from_post_to_queue_and_stop_after_delete(gateway):
    body = {"channel": "trades", "category": "linear", "symbol": "BTCUSDT", "requested_by": "e2e"}
    resp = gateway.api("POST", "/api/v1/subscriptions", json=body, headers={"X-Request-ID": "e2e-trace-1"})
    assert resp.status_code in (200, 201), resp.text
    sub = resp.json()
    sid = sub["id"]
    assert sub["topic"] == "publicTrade.BTCUSDT" and sub["status"] in ("pending", "active")
    assert gateway.subscription(sid)["status"] in ("pending", "active")

    wait_for(lambda: "publicTrade.BTCUSDT" in gateway.sim_subscribed("linear"), 15, message="simulator subscribed")
    wait_for(lambda: gateway.subscription(sid)["status"] == "active", 15, message="status active in PostgreSQL")
    assert "e2e-trace-1" in gateway.log_text("ingest")

    conn = gateway.amqp()
    try:
        ch = conn.channel()
        msgs = get_messages(ch, "ws-gateway.trades", 5)
        assert len(msgs) == 5
        for method, props, raw in msgs:
            assert method.exchange == "ws-gateway.events"
            assert method.routing_key == "trades.linear.BTCUSDT"
            assert props.content_type == "application/json"
            event = json.loads(raw)
            assert CONTRACT_KEYS <= set(event)
            assert props.message_id == event["event_id"]
            assert (event["event_class"], event["category"], event["symbol"], event["topic"]) == \
                ("trades", "linear", "BTCUSDT", "publicTrade.BTCUSDT")
            assert isinstance(event["data"], list) and event["data"][0]["s"] == "BTCUSDT"
            # the request that created the subscription traces its events
            assert event["trace_id"] == "e2e-trace-1" == props.headers["trace_id"]
        seqs = [json.loads(raw)["stream_seq"] for _, _, raw in msgs]
        assert seqs == sorted(seqs)

        # Restarting ingest restores every subscription from PostgreSQL.
        gateway.ctl("restart", "ingest", check=True)
        gateway.wait_running(["ingest"])
        wait_for(lambda: "publicTrade.BTCUSDT" in gateway.sim_subscribed("linear"), 15,
                 message="subscription restored after restart")
        ch.queue_purge("ws-gateway.trades")
        assert len(get_messages(ch, "ws-gateway.trades", 3)) == 3

        resp = gateway.api("DELETE", f"/api/v1/subscriptions/{sid}", params={"requested_by": "e2e"})
        assert resp.status_code in (200, 204), resp.text
        wait_for(lambda: "publicTrade.BTCUSDT" not in gateway.sim_subscribed("linear"), 15,
                 message="unsubscribed at the simulator")
        assert gateway.subscription(sid)["status"] == "removed"
    finally:
        conn.close()


@pytest.mark.parametrize("body, status", [
    ("{not json", 400),
    (json.dumps({"channel": "candles", "category": "linear", "symbol": "BTCUSDT"}), 422),
    (json.dumps({"channel": "trades", "category": "linear"}), 422),
])
def test_bad_post_is_refused_and_writes_nothing(gateway, body, status):
    before = gateway.query("SELECT count(*) AS n FROM subscriptions")[0]["n"]
    resp = gateway.api("POST", "/api/v1/subscriptions", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == status
    assert set(resp.json()["error"]) >= {"code", "message"}
    assert gateway.query("SELECT count(*) AS n FROM subscriptions")[0]["n"] == before


@pytest.mark.parametrize("role", ["ingest", "publisher", "persister", "api", "bybitsim"])
def test_bad_setting_stops_the_process_naming_it(role):
    env = {"GW_ENV_FILE": "", "PATH": "/usr/bin:/bin", "BYBIT_ENV": "sim", "SIM_PORT": "not-a-port"}
    out = subprocess.run([sys.executable, "-m", role], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "SIM_PORT" in out.stdout + out.stderr
