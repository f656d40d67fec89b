"""supervisord keeps every program alive and says so: kill -9 each one, see it come back,
the eventlistener's system event on RabbitMQ and the restart in /metrics; every log line is
JSON and none holds a key or secret (Bybit's, the simulator's or the REST API's)."""
from __future__ import annotations

import json
import os
import signal
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import start_gateway, stop_gateway
from tests.e2e.gateway import PROGRAMS
from tests.helpers import wait_for
from tests.ops.conftest import log_lines, not_json_lines

pytestmark = pytest.mark.timeout(240)

SECRETS = {
    "BYBIT_API_KEY": "opsKey" + uuid.uuid4().hex[:12],
    "BYBIT_API_SECRET": "opsSecret" + uuid.uuid4().hex,
    "API_KEY": "opsRest" + uuid.uuid4().hex[:16],
}
ENV = {**SECRETS, "SIM_API_KEY": SECRETS["BYBIT_API_KEY"], "SIM_API_SECRET": SECRETS["BYBIT_API_SECRET"],
       "SIM_ACCOUNT_RATE": "20"}
KILLED = ("simulator", "publisher", "persister", "ingest", "api")


@pytest.fixture(scope="module")
def gw(xprocess, gateway_stores):
    pg_url, amqp_url = gateway_stores
    gw, run_dir = start_gateway(xprocess, f"ops-{uuid.uuid4().hex[:8]}", pg_url, amqp_url, **ENV)
    gw.http.headers["X-API-Key"] = SECRETS["API_KEY"]
    try:
        gw.wait_running([*PROGRAMS, "ops"])
        wait_for(lambda: gw.api("GET", "/health").status_code == 200, 30, message="API /health")
        yield gw
    finally:
        stop_gateway(xprocess, gw, run_dir)


def metric_samples(gw) -> dict[tuple, float]:
    text = gw.api("GET", "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def restarts(gw, program: str, state: str = "EXITED") -> float:
    return metric_samples(gw).get(("wsgw_process_restarts_total", (("program", program), ("state", state))), 0.0)


def system_events(gw, kind: str) -> list[dict]:
    """Take every message in ws-gateway.system; the bodies of ``system.{kind}``."""
    conn = gw.amqp()
    try:
        ch = conn.channel()
        out = []
        while True:
            method, _props, body = ch.basic_get("ws-gateway.system", auto_ack=True)
            if method is None:
                break
            if method.routing_key == f"system.{kind}":
                out.append(json.loads(body))
        return out
    finally:
        conn.close()


def test_private_stream_and_rest_key_in_use(gw):
    """The run below uses both key pairs for real, so the log check at the end means something."""
    for channel in ("order", "execution", "position", "wallet"):
        resp = gw.api("POST", "/api/v1/subscriptions", json={"channel": channel, "requested_by": "ops"})
        assert resp.status_code in (200, 201), resp.text
    assert gw.http.get(gw.api_url + "/api/v1/subscriptions", headers={"X-API-Key": "wrong"}).status_code == 401
    wait_for(lambda: gw.sim_state()["auth_attempts"] > gw.sim_state()["auth_failures"], 20,
             message="private stream authenticated")
    wait_for(lambda: gw.query("SELECT count(*) AS n FROM orders")[0]["n"] > 0, 30, message="orders persisted")


def test_kill_9_each_program_is_restarted_announced_and_counted(gw):
    crashed: list[dict] = []
    for program in KILLED:
        pid = gw.pid(program)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: gw.states().get(program) == "RUNNING" and gw.pid(program) not in (0, pid), 60,
                 interval=0.2, message=f"{program} restarted (states {gw.states()})")
    gw.wait_running([*PROGRAMS, "ops"])
    wait_for(lambda: gw.api("GET", "/health").status_code == 200, 30, message="API back")

    def all_announced():
        crashed.extend(system_events(gw, "process_crashed"))
        return set(KILLED) <= {e["data"]["program"] for e in crashed}

    wait_for(all_announced, 30, interval=0.5, message="system.process_crashed for every program")
    for event in crashed:
        assert event["event_class"] == "system" and event["source"] == "gateway"
        assert event["data"]["state"] == "EXITED" and event["data"]["expected"] is False
    for program in KILLED:
        wait_for(lambda: restarts(gw, program) >= 1, 15, message=f"restart of {program} in /metrics")
    samples = metric_samples(gw)
    assert all(samples.get(("wsgw_process_crashes_total", (("program", p),)), 0) >= 1 for p in KILLED)
    assert all(samples.get(("wsgw_process_up", (("program", p),))) == 1 for p in KILLED)
    # the eventlistener said it in its own log too, one line per exit
    ops_log = gw.log_dir / "ops.log"
    exits = [json.loads(line) for line in ops_log.read_text().splitlines() if '"process_exited"' in line]
    assert {e["program"] for e in exits} >= set(KILLED)


def test_supervisorctl_tail_shows_json_lines(gw):
    out = gw.ctl("tail", "ingest")
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and json.loads(lines[-1])["process"] == "ingest"
    out = gw.ctl("tail", "ops", "stderr")
    assert json.loads([line for line in out.splitlines() if line.strip()][-1])["process"] == "ops"


def test_every_log_line_is_json_and_no_secret_is_logged(gw):
    files = log_lines(gw.log_dir)
    assert {f"{p}.log" for p in (*PROGRAMS, "ops")} <= set(files)
    assert not_json_lines(gw.log_dir) == []
    for name, lines in files.items():
        text = "\n".join(lines)
        for setting, value in SECRETS.items():
            assert value not in text, f"{setting} appears in {name}"
