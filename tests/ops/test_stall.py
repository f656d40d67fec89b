"""Liveness that acts, on the real stack (supervisord, every program, the eventlistener):
a program whose loop stalls for real (SIGSTOP: its status file stops moving) is restarted
through supervisord and announced as system.process_stalled; the container's health
command fails while a program is stalled or stopped and passes when all are fine; a
program an operator stopped stays stopped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.addresses import status_file
from tests.e2e.conftest import start_gateway, stop_gateway
from tests.support import wait_for
from tests.support.gateway import PROGRAMS, ROOT

pytestmark = pytest.mark.timeout(300)

STALL_AFTER_S = 4


@pytest.fixture(scope="module")
def gw(xprocess, gateway_stores):
    pg_url, amqp_url = gateway_stores
    gw, run_dir = start_gateway(xprocess, f"stall-{uuid.uuid4().hex[:8]}", pg_url, amqp_url,
                                GW_STALL_AFTER_S=STALL_AFTER_S)
    try:
        gw.wait_ready([*PROGRAMS, "ops"])
        # the system events below are read from a queue of our own, bound before anything stalls
        conn = gw.amqp()
        ch = conn.channel()
        gw.events_queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(gw.events_queue, "ws-gateway.events", routing_key="system.#")
        gw.events_conn = conn
        try:
            yield gw
        finally:
            conn.close()
    finally:
        stop_gateway(xprocess, gw, run_dir)


def health(gw) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-m", "ops", "health"], cwd=ROOT, env=gw.env, capture_output=True,
                         text=True, timeout=30)
    return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else {"stderr": out.stderr})


def problems_of(gw, program: str) -> list[dict]:
    code, report = health(gw)
    return [p for p in report.get("problems", []) if p.get("program") == program] if code == 1 else []


def system_events(gw, kind: str) -> list[dict]:
    ch = gw.events_conn.channel()
    try:
        out = []
        while True:
            method, _props, body = ch.basic_get(gw.events_queue, auto_ack=True)
            if method is None:
                return out
            if method.routing_key == f"system.{kind}":
                out.append(json.loads(body))
    finally:
        ch.close()


def liveness_checks(gw) -> float:
    text = gw.api("GET", "/metrics").text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "wsgw_ops_liveness_checks_total" and s.labels.get("result") == "done")


def ops_log(gw) -> list[dict]:
    return [json.loads(line) for line in gw.log_text("ops").splitlines() if line.startswith("{")]


def test_health_passes_while_everything_runs(gw):
    wait_for(lambda: health(gw)[0] == 0, 60, interval=1, message="healthy")
    code, report = health(gw)
    assert code == 0 and report == {"healthy": True, "problems": []}


@pytest.mark.parametrize("program", ["ingest", "publisher"])
def test_stalled_program_is_restarted_and_reported(gw, program):
    wait_for(lambda: health(gw)[0] == 0, 60, interval=1, message="healthy before the stall")
    system_events(gw, "process_stalled")          # nothing left over
    pid = gw.pid(program)
    os.kill(pid, signal.SIGSTOP)
    try:
        # the health command names it while it is stalled
        stalled = wait_for(lambda: [p for p in problems_of(gw, program) if p["problem"] == "stalled"], 30,
                           interval=0.5, message=f"health reports {program} stalled")
        assert stalled[0]["pid"] == pid and stalled[0]["silent_s"] >= STALL_AFTER_S   # rounded to 0.1 s
        # restarted through supervisord: TERM, then KILL after its stopwaitsecs
        wait_for(lambda: gw.states().get(program) == "RUNNING" and gw.pid(program) not in (0, pid), 90,
                 interval=0.5, message=f"{program} restarted (states {gw.states()})")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    events: list[dict] = []

    def announced():
        events.extend(system_events(gw, "process_stalled"))
        return [e for e in events if e["data"]["program"] == program]

    try:
        mine = wait_for(announced, 30, interval=0.5, message=f"system.process_stalled for {program}")
    except AssertionError:
        raise AssertionError(f"ops log: {gw.log_text('ops')[-3000:]}") from None
    event = mine[0]
    assert event["event_class"] == "system" and event["source"] == "gateway"
    data = event["data"]
    assert data["pid"] == pid and data["restarting"] is True and data["state"] == "RUNNING"
    assert data["silent_s"] >= STALL_AFTER_S and data["limit_s"] == STALL_AFTER_S
    # the ops log says it, and the killed pid's exit is the restart, not a crash
    lines = ops_log(gw)
    assert any(line["event"] == "process_stalled" and line["pid"] == pid for line in lines)
    assert [line["signal"] for line in lines if line["event"] == "stall_restart" and line["pid"] == pid] == \
        ["TERM", "KILL"]
    exits = [line for line in lines if line["event"] == "process_exited" and line.get("pid") == pid]
    assert exits and exits[0].get("stall_restart") is True and "system_event" not in exits[0]
    wait_for(lambda: health(gw)[0] == 0, 60, interval=1, message="healthy after the restart")


def test_operator_stop_is_left_alone_and_fails_health(gw):
    wait_for(lambda: health(gw)[0] == 0, 60, interval=1, message="healthy before the stop")
    gw.ctl("stop", "persister", check=True)
    try:
        assert problems_of(gw, "persister") == [{"program": "persister", "problem": "down", "state": "STOPPED"}]
        # its status file goes stale, and the listener keeps checking: it must not restart it
        path = status_file(gw.run_dir, "persister")
        wait_for(lambda: time.time() - path.stat().st_mtime > STALL_AFTER_S + 1, 30, interval=0.5,
                 message="persister status file older than the bound")
        checks = liveness_checks(gw)
        wait_for(lambda: liveness_checks(gw) >= checks + 2, 30, interval=0.5, message="two more liveness checks")
        assert gw.states()["persister"] == "STOPPED"
        assert not [line for line in ops_log(gw) if line["event"] in ("process_stalled", "stall_restart")
                    and line["program"] == "persister"]
    finally:
        gw.ctl("start", "persister", check=True)
    wait_for(lambda: health(gw)[0] == 0, 60, interval=1, message="healthy after the start")
