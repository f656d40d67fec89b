"""supervisord keeps every program alive and says so: kill -9 each one, see it come back,
the eventlistener's system event on RabbitMQ and the restart in /metrics; every log line is
JSON and none holds a key or secret (Bybit's, the simulator's or the REST API's)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid

import pytest
import yaml
import zmq
from prometheus_client.parser import text_string_to_metric_families

from common.addresses import persister_frames, publisher_frames
from common.envelope import Envelope
from tests.e2e.conftest import start_gateway, stop_gateway
from tests.ops.conftest import log_lines, not_json_lines
from tests.support import wait_for
from tests.support.gateway import PROGRAMS, ROOT

pytestmark = pytest.mark.timeout(240)

SECRETS = {
    "BYBIT_API_KEY": "opsKey" + uuid.uuid4().hex[:12],
    "BYBIT_API_SECRET": "opsSecret" + uuid.uuid4().hex,
    "API_KEY": "opsRest" + uuid.uuid4().hex[:16],
}
ENV = {**SECRETS, "SIM_API_KEY": SECRETS["BYBIT_API_KEY"], "SIM_API_SECRET": SECRETS["BYBIT_API_SECRET"],
       "SIM_ACCOUNT_RATE": "20", "SIM_RATE": "500"}
KILLED = ("simulator", "publisher", "persister", "ingest", "api")


@pytest.fixture(scope="module")
def gw(xprocess, gateway_stores):
    pg_url, amqp_url = gateway_stores
    gw, run_dir = start_gateway(xprocess, f"ops-{uuid.uuid4().hex[:8]}", pg_url, amqp_url, **ENV)
    gw.http.headers["X-API-Key"] = SECRETS["API_KEY"]
    try:
        gw.wait_ready([*PROGRAMS, "ops"])
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
    pids = {program: gw.pid(program) for program in KILLED}
    for pid in pids.values():          # all at once: the publisher too, which must relay the others
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all(gw.states().get(p) == "RUNNING" and gw.pid(p) not in (0, pids[p]) for p in KILLED), 60,
             interval=0.2, message=f"every program restarted (states {gw.states()})")
    gw.wait_running([*PROGRAMS, "ops"])
    wait_for(lambda: gw.api("GET", "/health").status_code == 200, 30, message="API back")

    def all_announced():
        crashed.extend(system_events(gw, "process_crashed"))
        return set(KILLED) <= {e["data"]["program"] for e in crashed}

    try:
        wait_for(all_announced, 30, interval=0.5, message="system.process_crashed for every program")
    except AssertionError:
        raise AssertionError(f"process_crashed seen for {sorted({e['data']['program'] for e in crashed})}; "
                             f"ops log: {(gw.log_dir / 'ops.log').read_text()[-3000:]}") from None
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


def test_bad_input_to_each_binder_is_counted_never_fatal(gw):
    pids = {p: gw.pid(p) for p in ("publisher", "persister")}
    ctx = zmq.Context()
    try:
        for address in (publisher_frames(gw.run_dir), persister_frames(gw.run_dir)):
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 2000)
            sock.connect(address)
            sock.send_multipart([b"gw1", b"{not json", b"x"])
            sock.send_multipart([b"junk"])
            sock.send_multipart(Envelope(kind="frame", endpoint="private", topic="order", payload=b"\xff\x00",
                                         epoch="bad-input-test", stream_seq=1).encode())
            sock.close()
    finally:
        ctx.term()

    def counted(name):
        return sum(v for (n, _), v in metric_samples(gw).items() if n == name)

    wait_for(lambda: counted("wsgw_publisher_bad_input_total") >= 2, 15, message="publisher bad input counted")
    wait_for(lambda: counted("wsgw_persister_bad_input_total") >= 2, 15, message="persister bad input counted")
    assert {p: gw.pid(p) for p in pids} == pids


def test_refused_topic_is_failed_and_counted(gw):
    gw.sim("POST", "/__sim/reject", json={"topic": "publicTrade.XRPUSDT", "endpoint": "linear"})
    resp = gw.api("POST", "/api/v1/subscriptions", json={"channel": "trades", "category": "linear",
                                                        "symbol": "XRPUSDT", "requested_by": "ops"})
    assert resp.status_code in (200, 201), resp.text
    sid = resp.json()["id"]
    wait_for(lambda: gw.subscription(sid)["status"] == "failed", 20, message="subscription failed")
    assert "handler not found" in gw.subscription(sid)["last_error"]


def _expressions() -> list[str]:
    dash = json.loads((ROOT / "deploy/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dash["panels"] for t in panel.get("targets", [])]
    rules = yaml.safe_load((ROOT / "deploy/alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return exprs


def test_dashboard_and_alert_metrics_exist_in_live_metrics(gw):
    exprs = _expressions()
    assert len(exprs) > 20
    wanted = {name for e in exprs for name in re.findall(r"\bwsgw_[a-z0-9_]+", e)}
    # a private connection to drop (earlier tests may have made one; this test must not depend on them)
    resp = gw.api("POST", "/api/v1/subscriptions", json={"channel": "wallet", "requested_by": "ops-metrics"})
    assert resp.status_code in (200, 201), resp.text
    sid = resp.json()["id"]
    wait_for(lambda: gw.subscription(sid)["status"] == "active", 20, message="wallet subscription active")
    gw.sim("POST", "/__sim/drop", json={"endpoint": "private"})     # a reconnect, as in real life
    wait_for(lambda: any(n == "wsgw_ingest_reconnects_total" for n, _ in metric_samples(gw)), 20,
             message="reconnect counted")
    live = {name for name, _ in metric_samples(gw)}
    missing = sorted(wanted - live)
    assert missing == [], missing
    # every role is represented on the dashboard
    assert {n.split("_")[1] for n in wanted} >= {"ingest", "publisher", "persister", "api", "process", "ops"}


def readme_curls() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("## Examples", 1)[1].split("\n## ", 1)[0]
    return [line.split("  #")[0].strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)
            for line in block.splitlines() if line.startswith("curl ")]


def test_readme_curl_examples_work(gw):
    curls = readme_curls()
    assert len(curls) >= 10
    env = {"PATH": os.environ["PATH"], "API_KEY": SECRETS["API_KEY"]}
    sid = None
    for line in curls:
        if "<id>" in line:
            assert sid, "a POST must come before the examples that use its id"
            line = line.replace("<id>", sid)
        cmd = line.replace("localhost:4400", gw.env["API_BIND"]).replace("curl -s ", "curl -sS --fail-with-body ", 1)
        out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"{line}\n{out.stdout}{out.stderr}"
        if "/metrics" not in line:
            body = json.loads(out.stdout)
            if sid is None and "-XPOST" in line:
                sid = body["id"]


def test_readme_consumer_example_runs(gw):
    out = subprocess.run([sys.executable, str(ROOT / "examples/consume_own_queue.py"), "--url", gw.amqp_url,
                          "--pattern", "order_status.#", "--max-messages", "3", "--idle-timeout", "20"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(events) == 3 and all(e["routing_key"].startswith("order_status.") for e in events)


def test_supervisorctl_tail_shows_json_lines(gw):
    out = gw.ctl("tail", "ingest")
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and json.loads(lines[-1])["process"] == "ingest"
    out = gw.ctl("tail", "ops", "stderr")
    assert json.loads([line for line in out.splitlines() if line.strip()][-1])["process"] == "ops"


def test_every_log_line_is_json_and_no_secret_is_logged(gw):
    # a busy stream first: connection events are logged, frames are not
    resp = gw.api("POST", "/api/v1/subscriptions", json={"channel": "trades", "category": "linear",
                                                        "symbol": "BTCUSDT", "requested_by": "ops"})
    assert resp.status_code in (200, 201), resp.text

    def frames():
        return sum(v for (n, _), v in metric_samples(gw).items() if n == "wsgw_ingest_frames_total")

    def role_lines() -> int:
        return sum(len(v) for k, v in log_lines(gw.log_dir).items()
                   if k.startswith(("ingest", "publisher", "persister")))

    # what start-up logs is fixed; what matters is that lines do not grow with the frames
    wait_for(lambda: frames() > 100, 30, interval=0.5, message="frames flowing")
    f0, l0 = frames(), role_lines()
    wait_for(lambda: frames() > f0 + 3000, 30, interval=0.5, message="3,000 more frames")
    received, logged = frames() - f0, role_lines() - l0
    assert logged < received / 10, (received, logged)
    files = log_lines(gw.log_dir)
    assert {f"{p}.log" for p in (*PROGRAMS, "ops")} <= set(files)
    assert not_json_lines(gw.log_dir) == []
    for name, lines in files.items():
        text = "\n".join(lines)
        for setting, value in SECRETS.items():
            assert value not in text, f"{setting} appears in {name}"
