"""The liveness rules without supervisord: when a program is stalled, what the guard does
about it check after check (report, TERM, KILL after stopwaitsecs, back off, leave an
operator's stop alone), and the health command's verdict and output."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from ops import liveness
from ops.health import api_health_url
from ops.liveness import Beat, Program, StallGuard
from tests.support.gateway import ROOT

T0 = 1_700_000_000.0
LIMIT = 20.0


def running(name="ingest", pid=100, started=T0, **kw) -> Program:
    return Program(name=name, state="RUNNING", pid=pid, started=started, group=name, **kw)


def test_silence_counts_from_the_last_write_of_this_pid():
    prog = running()
    assert liveness.silence(prog, Beat(100, T0 + 50), T0 + 60, LIMIT) == (10.0, LIMIT)
    # a predecessor's file, or none: the process is still starting and gets the start grace
    assert liveness.silence(prog, Beat(99, T0 - 5), T0 + 10, LIMIT) == (10.0, LIMIT + liveness.START_GRACE_S)
    assert liveness.silence(prog, None, T0 + 10, LIMIT) == (10.0, LIMIT + liveness.START_GRACE_S)
    # not ours to judge: not running, or no status file by design
    assert liveness.silence(Program("ingest", "STOPPED"), Beat(100, T0), T0 + 999, LIMIT) is None
    assert liveness.silence(running("api"), None, T0 + 999, LIMIT) is None


def test_parse_beat_reads_the_pid_and_survives_garbage():
    assert liveness.parse_beat(b'{"process":"ingest","pid":42}', 5.0) == Beat(42, 5.0)
    assert liveness.parse_beat(b'{"pid":"42"}', 5.0) == Beat(None, 5.0)
    assert liveness.parse_beat(b'{"pid":true}', 5.0) == Beat(None, 5.0)
    assert liveness.parse_beat(b"{half", 5.0) == Beat(None, 5.0)
    assert liveness.parse_beat(b"[1]", 5.0) == Beat(None, 5.0)


def test_programs_from_rpc():
    infos = [{"name": "ingest", "group": "ingest", "statename": "RUNNING", "pid": 7, "start": 1000},
             {"name": "simulator", "group": "simulator", "statename": "STOPPED", "pid": 0, "start": 0}]
    configs = [{"name": "ingest", "autostart": True, "stopwaitsecs": 15},
               {"name": "simulator", "autostart": False, "stopwaitsecs": 5}]
    got = liveness.programs_from_rpc(infos, configs)
    assert got["ingest"] == Program("ingest", "RUNNING", 7, 1000.0, "ingest", True, 15.0)
    assert got["simulator"].autostart is False and got["ingest"].rpc_name == "ingest:ingest"
    with pytest.raises(liveness.LivenessError):
        liveness.programs_from_rpc([{"statename": "RUNNING"}], configs)
    with pytest.raises(liveness.LivenessError):
        liveness.programs_from_rpc("nope", configs)


def test_problems_name_down_and_stalled_programs():
    programs = {"ingest": running(), "publisher": running("publisher", 200), "api": running("api", 300),
                "persister": Program("persister", "STOPPED", group="persister"),          # an operator's stop
                "simulator": Program("simulator", "STOPPED", autostart=False)}            # not asked for
    beats = {"ingest": Beat(100, T0 + 1), "publisher": Beat(200, T0 + 30)}
    got = liveness.problems(programs, beats, T0 + 31, LIMIT)
    assert got == [{"program": "ingest", "problem": "stalled", "pid": 100, "silent_s": 30.0, "limit_s": LIMIT},
                   {"program": "persister", "problem": "down", "state": "STOPPED"}]
    programs["persister"] = running("persister", 400)
    beats.update(ingest=Beat(100, T0 + 30), persister=Beat(400, T0 + 30))
    assert liveness.problems(programs, beats, T0 + 31, LIMIT) == []


def kinds(actions):
    return [(a.kind, a.program, a.pid) for a in actions]


def test_guard_reports_terms_then_kills_after_stopwait():
    guard = StallGuard(LIMIT)
    prog = {"ingest": running(stopwait_s=15)}
    beats = {"ingest": Beat(100, T0 + 5)}
    assert guard.check(prog, beats, T0 + 25) == []                       # 20 s silent: at the bound
    acts = guard.check(prog, beats, T0 + 26)
    assert kinds(acts) == [("report", "ingest", 100), ("term", "ingest", 100)]
    assert acts[0].restarting and acts[0].silent_s == 21 and acts[0].limit_s == LIMIT
    assert guard.owns_exit(100) and not guard.owns_exit(101)
    assert guard.check(prog, beats, T0 + 40) == []                       # TERM given its stopwaitsecs
    assert kinds(guard.check(prog, beats, T0 + 41)) == [("kill", "ingest", 100)]
    assert guard.check(prog, beats, T0 + 60) == []                       # once
    # supervisord restarted it: a new pid, quiet while it starts, fine once it writes
    fresh = {"ingest": running(pid=101, started=T0 + 62)}
    assert guard.check(fresh, beats, T0 + 70) == []
    assert guard.check(fresh, {"ingest": Beat(101, T0 + 70)}, T0 + 71) == []


def test_guard_leaves_a_stopped_program_alone():
    guard = StallGuard(LIMIT)
    stale = {"persister": Beat(100, T0)}
    for state in ("STOPPED", "STOPPING", "EXITED", "BACKOFF", "FATAL", "STARTING"):
        prog = Program("persister", state, pid=100 if state == "STOPPING" else 0, started=T0)
        assert guard.check({"persister": prog}, stale, T0 + 1000) == []
    # a TERM sent, then an operator's stop: no KILL from us (supervisord's own stop escalates)
    guard.check({"persister": running("persister")}, stale, T0 + 100)
    assert guard.check({"persister": Program("persister", "STOPPING", 100, T0)}, stale, T0 + 1000) == []


def test_guard_backs_off_a_program_that_keeps_stalling():
    guard = StallGuard(LIMIT, backoff_first_s=60, backoff_max_s=200, reset_after_s=600)
    t = T0
    pid = 100
    restarted_at = []
    for _ in range(6):
        prog = {"publisher": running("publisher", pid, started=t)}
        beats = {"publisher": Beat(pid, t + 1)}
        for step in range(0, 400):                                        # a check every second
            acts = guard.check(prog, beats, t + step)
            if any(a.kind == "term" for a in acts):
                restarted_at.append(t + step)
                break
        else:
            raise AssertionError("never restarted")
        t, pid = t + step + 1, pid + 1
    gaps = [b - a for a, b in zip(restarted_at, restarted_at[1:])]
    # first stall at once (21 s after its last write), then 60, 120, 200 (the cap), 200 s apart
    assert gaps == [60, 120, 200, 200, 200]


def test_guard_reports_a_deferred_restart_once_then_restarts_when_due():
    guard = StallGuard(LIMIT, backoff_first_s=60)
    guard.check({"ingest": running()}, {"ingest": Beat(100, T0)}, T0 + 30)          # restart 1 at T0+30
    prog = {"ingest": running(pid=101, started=T0 + 31)}
    beats = {"ingest": Beat(101, T0 + 33)}
    acts = guard.check(prog, beats, T0 + 55)
    assert kinds(acts) == [("report", "ingest", 101)]
    assert acts[0].restarting is False and acts[0].retry_in_s == 35.0
    assert guard.check(prog, beats, T0 + 70) == []
    assert kinds(guard.check(prog, beats, T0 + 90)) == [("term", "ingest", 101)]     # no second report


def test_guard_forgets_the_count_after_a_healthy_spell_and_sees_recovery():
    guard = StallGuard(LIMIT, backoff_first_s=60, reset_after_s=600)
    guard.check({"ingest": running()}, {"ingest": Beat(100, T0)}, T0 + 30)
    prog = {"ingest": running(pid=101, started=T0 + 31)}
    assert guard.check(prog, {"ingest": Beat(101, T0 + 640)}, T0 + 641) == []       # healthy 10 min on
    acts = guard.check(prog, {"ingest": Beat(101, T0 + 640)}, T0 + 661)
    assert kinds(acts) == [("report", "ingest", 101), ("term", "ingest", 101)]     # no wait
    # a deferred stall that clears by itself is logged as recovered, and not restarted
    guard2 = StallGuard(LIMIT, backoff_first_s=60)
    guard2.check({"ingest": running()}, {"ingest": Beat(100, T0)}, T0 + 30)
    prog = {"ingest": running(pid=101, started=T0 + 31)}
    assert [a.kind for a in guard2.check(prog, {"ingest": Beat(101, T0 + 33)}, T0 + 55)] == ["report"]
    assert [a.kind for a in guard2.check(prog, {"ingest": Beat(101, T0 + 60)}, T0 + 61)] == ["recovered"]
    assert guard2.check(prog, {"ingest": Beat(101, T0 + 100)}, T0 + 101) == []


def test_stall_details_have_the_shape_of_the_other_process_events():
    action = liveness.Action("report", "ingest", 100, 21.04, 20.0, restarting=True, restarts_in_a_row=1)
    d = liveness.stall_details(action, host="h1", at_ms=5)
    assert {"program", "state", "from_state", "pid", "restarting", "host", "at_ms"} <= set(d)
    assert d["silent_s"] == 21.0 and d["limit_s"] == 20.0 and "retry_in_s" not in d


@pytest.mark.parametrize("bind, url", [("0.0.0.0:4400", "http://127.0.0.1:4400/health"),
                                       ("127.0.0.1:80", "http://127.0.0.1:80/health"),
                                       ("[::]:4400", "http://[::1]:4400/health"),
                                       ("api.local:4400", "http://api.local:4400/health")])
def test_api_health_url(bind, url):
    assert api_health_url(bind) == url


def test_health_command_without_supervisord_is_unhealthy_and_says_why(short_tmp):
    env = {"PATH": os.environ["PATH"], "GW_ENV_FILE": "", "GW_RUN_DIR": str(short_tmp)}
    out = subprocess.run([sys.executable, "-m", "ops", "health"], cwd=ROOT, env=env, capture_output=True,
                         timeout=30)
    assert out.returncode == 1, out
    report = orjson.loads(out.stdout)
    assert report["healthy"] is False and report["problems"][0]["problem"] == "supervisord_unreachable"
    bad = subprocess.run([sys.executable, "-m", "ops", "health"], cwd=ROOT, capture_output=True, timeout=30,
                         env={**env, "GW_STALL_AFTER_S": "1"})
    assert bad.returncode == 2 and b"GW_STALL_AFTER_S" in bad.stderr
    assert subprocess.run([sys.executable, "-m", "ops", "nonsense"], cwd=ROOT, env=env, capture_output=True,
                          timeout=30).returncode == 2
