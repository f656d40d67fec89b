"""The eventlistener without supervisord: payload parsing, what each state does, and the
protocol loop over pipes (READY / RESULT 2 OK) as supervisord speaks it."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import orjson
import pytest
import zmq

from common.addresses import publisher_priority
from common.envelope import Envelope
from ops import events
from ops.listener import Listener
from ops.publish import SystemEventSink
from tests.support.gateway import ROOT

EXITED = "processname:ingest groupname:ingest from_state:RUNNING expected:0 pid:4242"


def test_parse_every_watched_state():
    ev = events.parse_event("PROCESS_STATE_EXITED", EXITED)
    assert ev == events.ProcessEvent(state="EXITED", program="ingest", group="ingest", from_state="RUNNING",
                                     pid=4242, expected=False)
    assert events.system_kind(ev) == "process_crashed"
    clean = events.parse_event("PROCESS_STATE_EXITED", EXITED.replace("expected:0", "expected:1"))
    assert events.system_kind(clean) is None
    fatal = events.parse_event("PROCESS_STATE_FATAL", "processname:api groupname:api from_state:BACKOFF")
    assert fatal.pid is None and events.system_kind(fatal) == "process_fatal"
    backoff = events.parse_event("PROCESS_STATE_BACKOFF", "processname:api groupname:api from_state:STARTING tries:2")
    assert backoff.tries == 2 and events.system_kind(backoff) is None
    stopped = events.parse_event("PROCESS_STATE_STOPPED", "processname:api groupname:api from_state:STOPPING pid:7")
    assert stopped.pid == 7 and events.system_kind(stopped) is None


@pytest.mark.parametrize("name, payload", [
    ("TICK_5", "when:1"),
    ("PROCESS_STATE_WEIRD", "processname:a groupname:a from_state:RUNNING"),
    ("PROCESS_STATE_EXITED", "groupname:a from_state:RUNNING"),
    ("PROCESS_STATE_EXITED", "processname:a groupname:a from_state:RUNNING pid:x"),
    ("PROCESS_STATE_EXITED", "processname:a groupname:a from_state:RUNNING expected:maybe"),
    ("PROCESS_STATE_EXITED", "processname:a garbage"),
])
def test_bad_payload_raises(name, payload):
    with pytest.raises(events.EventError):
        events.parse_event(name, payload)


@pytest.fixture
def publisher_pull(short_tmp):
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(publisher_priority(short_tmp))
    yield pull
    pull.close()
    ctx.term()


def test_crash_becomes_system_envelope_metric_and_cleanup(short_tmp, publisher_pull, tmp_path, monkeypatch):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # a dead process's live gauge file, which the EXITED event must remove
    (metrics_dir / "gauge_livesum_4242.db").write_bytes(b"")
    (metrics_dir / "counter_4242.db").write_bytes(b"")
    sink = SystemEventSink(short_tmp, metrics_dir=str(metrics_dir))
    try:
        listener = Listener(sink, host="h1")
        ev = listener.handle("PROCESS_STATE_EXITED", EXITED)
        assert ev.program == "ingest"
        assert publisher_pull.poll(5000)
        env = Envelope.decode(publisher_pull.recv_multipart())
        assert (env.kind, env.topic, env.epoch) == ("system", "process_crashed", "")
        details = orjson.loads(env.payload)
        assert details["program"] == "ingest" and details["pid"] == 4242 and details["host"] == "h1"
        assert details["expected"] is False and details["restarting"] is True
        assert not (metrics_dir / "gauge_livesum_4242.db").exists()
        assert (metrics_dir / "counter_4242.db").exists()   # counters stay: totals survive restarts
        # an expected stop: metrics and cleanup, no system event
        listener.handle("PROCESS_STATE_STOPPED", "processname:api groupname:api from_state:STOPPING pid:99")
        assert not publisher_pull.poll(200)
        # bad input is counted, not fatal
        assert listener.handle("PROCESS_STATE_EXITED", "nonsense") is None
    finally:
        sink.close()


def test_system_event_waits_for_an_absent_publisher(short_tmp):
    """The publisher may be the process that died: the envelope is delivered once it binds again."""
    sink = SystemEventSink(short_tmp, metrics_dir="")
    ctx = zmq.Context()
    try:
        assert sink.system_event("process_crashed", {"program": "publisher"})
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.bind(publisher_priority(short_tmp))
        try:
            assert pull.poll(5000), "queued system event not delivered after the publisher bound"
            env = Envelope.decode(pull.recv_multipart())
            assert orjson.loads(env.payload) == {"program": "publisher"}
        finally:
            pull.close()
    finally:
        sink.close()
        ctx.term()


def _frame(eventname: str, payload: str) -> str:
    header = f"ver:3.0 server:supervisor serial:1 pool:ops poolserial:1 eventname:{eventname} len:{len(payload)}\n"
    return header + payload


def test_protocol_loop_answers_every_event(short_tmp):
    stdin = io.StringIO(_frame("PROCESS_STATE_RUNNING", "processname:a groupname:a from_state:STARTING pid:5")
                        + _frame("PROCESS_STATE_EXITED", "bad payload")
                        + _frame("PROCESS_STATE_BACKOFF", "processname:a groupname:a from_state:STARTING tries:1"))
    stdout = io.StringIO()
    sink = SystemEventSink(short_tmp, metrics_dir="")
    try:
        assert Listener(sink).run(stdin, stdout) == 3    # stops at EOF
    finally:
        sink.close()
    assert stdout.getvalue() == "READY\nRESULT 2\nOK" * 3 + "READY\n"


@pytest.mark.timeout(30)
def test_process_logs_to_stderr_and_exits_on_sigterm(short_tmp):
    env = {"GW_ENV_FILE": "", "PATH": os.environ["PATH"], "GW_RUN_DIR": str(short_tmp),
           "PROMETHEUS_MULTIPROC_DIR": str(short_tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "ops"], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.read(6) == b"READY\n"     # stdout carries nothing but the protocol
        proc.terminate()
        assert proc.wait(10) == 0
        lines = proc.stderr.read().decode().splitlines()
        assert lines and all(orjson.loads(line)["process"] == "ops" for line in lines)
        assert orjson.loads(lines[-1])["event"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_publisher_crash_resends_recent_events_identically(short_tmp, publisher_pull):
    """The dead publisher may have held them unpublished; the copy has the same envelope, so
    the same event id at the publisher (consumers drop duplicates on message_id)."""
    sink = SystemEventSink(short_tmp, metrics_dir="")
    try:
        listener = Listener(sink, host="h1")
        listener.handle("PROCESS_STATE_EXITED", EXITED)
        listener.handle("PROCESS_STATE_EXITED", EXITED.replace("ingest", "publisher").replace("4242", "4343"))
        got = []
        while publisher_pull.poll(2000) and len(got) < 3:
            got.append(publisher_pull.recv_multipart())
        assert len(got) == 3
        assert got[0] == got[1]                                  # ingest's crash, then its re-send
        assert orjson.loads(Envelope.decode(got[2]).payload)["program"] == "publisher"
    finally:
        sink.close()
