"""``python -m ops``: the supervisord eventlistener (``[eventlistener:ops]``).

One loop: READY, read one event, handle it, answer OK. A process state event takes well
under a millisecond (no network wait: the system event is a NOBLOCK ZeroMQ send). A TICK
event (every 5 s) is the liveness check: one local XML-RPC round trip to supervisord and
three status files read (ops.liveness decides; a stalled program is signalled through
supervisord and reported as system.process_stalled). Stdout is supervisord's protocol
channel, so logs go to stderr (supervisord's ``stderr_logfile``). SIGTERM while waiting for
an event exits at once; during an event, after it is answered.
"""
from __future__ import annotations

import socket
import sys
import time
from collections import deque

from supervisor import childutils

from common.config import settings_or_exit
from common.logs import RateLimited, get_logger, setup_logging
from common.runtime import StopSignals
from ops import events as ev_mod
from ops import liveness, metrics
from ops.publish import SystemEventSink
from ops.rpc import RPC_ERRORS, Supervisor, read_beats, server_url

log = get_logger("ops")


PUBLISHER = "publisher"       # the program that relays our system events to RabbitMQ
RESEND_WINDOW_S = 5.0         # events sent this long before the publisher crashed are sent again
RPC_TIMEOUT_S = 5.0           # supervisord answers locally at once; a hung one must not hang us


class _Stop(Exception):
    pass


class Listener:
    def __init__(self, sink: SystemEventSink, host: str | None = None, supervisor: Supervisor | None = None,
                 guard: liveness.StallGuard | None = None, run_dir=None):
        self.sink = sink
        self.host = host or socket.gethostname()
        # liveness checks need all three; without them (unit tests) TICKs are counted only
        self.supervisor, self.guard, self.run_dir = supervisor, guard, run_dir
        self.stop_requested = False
        self._waiting = False
        self._bad = RateLimited(log, 10.0)
        self._rpc_failed = RateLimited(log, 60.0)
        self._recent: deque = deque(maxlen=100)    # (monotonic time sent, envelope)
        self._stalled_since: dict[int, float] = {}  # pid -> monotonic time it last made progress

    def request_stop(self, signame: str | None = None) -> None:
        self.stop_requested = True
        if self._waiting:
            raise _Stop()

    def handle(self, eventname: str, payload: str) -> ev_mod.ProcessEvent | None:
        """One event: log line, metrics, metrics-file cleanup, system event. Never raises on bad input."""
        metrics.EVENTS.labels(eventname).inc()
        if eventname.startswith("TICK_"):
            self.check_liveness()
            return None
        try:
            ev = ev_mod.parse_event(eventname, payload)
        except ev_mod.EventError as exc:
            metrics.BAD_EVENTS.inc()
            self._bad("warning", "bad_event", eventname=eventname[:60], error=str(exc))
            return None
        if ev.state == "RUNNING":
            metrics.UP.labels(ev.program).set(1)
        elif ev.state in ev_mod.WATCHED:
            metrics.UP.labels(ev.program).set(0)
            metrics.RESTARTS.labels(ev.program, ev.state).inc()
        if ev.state in ("EXITED", "STOPPED") and ev.pid:
            self.sink.process_gone(ev.pid)
        kind = ev_mod.system_kind(ev)
        # the exit of a process we signalled for a stall was reported as process_stalled
        stall_restart = ev.state == "EXITED" and self.guard is not None and self.guard.owns_exit(ev.pid)
        if stall_restart:
            kind = None
        if kind == "process_crashed":
            metrics.CRASHES.labels(ev.program).inc()
        queued = None
        if kind == "process_crashed" and ev.program == PUBLISHER:
            self._resend_recent(time.monotonic() - RESEND_WINDOW_S, "publisher crashed")
        elif stall_restart and ev.program == PUBLISHER:
            # what it took in since it stopped moving (this stall's own report too) may be lost with it
            since = self._stalled_since.pop(ev.pid, time.monotonic()) - RESEND_WINDOW_S
            self._resend_recent(since, "publisher restarted for a stall")
        if kind:
            details = ev_mod.system_details(ev, host=self.host, at_ms=time.time_ns() // 1_000_000)
            env = self.sink.system_event(kind, details)
            queued = env is not None
            if env is not None:
                self._recent.append((time.monotonic(), env))
        if ev.state in ev_mod.WATCHED or ev.state == "RUNNING":
            fields = {"program": ev.program, "state": ev.state, "from_state": ev.from_state}
            for name in ("pid", "expected", "tries"):
                if getattr(ev, name) is not None:
                    fields[name] = getattr(ev, name)
            if kind:
                fields["system_event"] = kind
                fields["system_event_queued"] = queued
            if stall_restart:
                fields["stall_restart"] = True
            level = "warning" if stall_restart else ev_mod.log_level(ev)
            getattr(log, level)("process_" + ev.state.lower(), **fields)
        return ev

    def check_liveness(self) -> list[liveness.Action]:
        """One liveness check: ask supervisord, read the status files, act on stalls."""
        if self.supervisor is None or self.guard is None or self.run_dir is None:
            return []
        try:
            programs = self.supervisor.programs()
        except RPC_ERRORS as exc:
            metrics.LIVENESS_CHECKS.labels("supervisor_unreachable").inc()
            self._rpc_failed("warning", "liveness_check_failed", error=str(exc)[:300])
            return []
        actions = self.guard.check(programs, read_beats(self.run_dir), time.time())
        metrics.LIVENESS_CHECKS.labels("done").inc()
        for action in actions:
            self._act(programs[action.program], action)
        return actions

    def _act(self, prog: liveness.Program, action: liveness.Action) -> None:
        fields = {"program": action.program, "pid": action.pid, "silent_s": round(action.silent_s, 1),
                  "limit_s": action.limit_s}
        if action.kind == "report":
            metrics.STALLS.labels(action.program).inc()
            if action.program == PUBLISHER:
                self._stalled_since[action.pid] = time.monotonic() - action.silent_s
                while len(self._stalled_since) > liveness.ACTED_PIDS_KEPT:
                    del self._stalled_since[next(iter(self._stalled_since))]
            details = liveness.stall_details(action, host=self.host, at_ms=time.time_ns() // 1_000_000)
            env = self.sink.system_event("process_stalled", details)
            if env is not None:
                self._recent.append((time.monotonic(), env))
            log.error("process_stalled", **fields, restarting=action.restarting, retry_in_s=action.retry_in_s,
                      restarts_in_a_row=action.restarts_in_a_row, system_event="process_stalled",
                      system_event_queued=env is not None)
        elif action.kind in ("term", "kill"):
            signame = "TERM" if action.kind == "term" else "KILL"
            try:
                self.supervisor.signal(prog, signame)
            except RPC_ERRORS as exc:    # it exited meanwhile, or supervisord did not answer
                log.warning("stall_restart_failed", **fields, signal=signame, error=str(exc)[:300])
                return
            metrics.STALL_RESTARTS.labels(action.program, signame).inc()
            log.warning("stall_restart", **fields, signal=signame, restarts_in_a_row=action.restarts_in_a_row,
                        **({"stopwaitsecs": prog.stopwait_s} if signame == "TERM" else {}))
        elif action.kind == "recovered":
            log.info("process_stall_cleared", **fields)

    def _resend_recent(self, since: float, reason: str) -> None:
        """What the dead publisher may have held unpublished goes to the next one."""
        again = [env for sent, env in self._recent if sent >= since]
        for env in again:
            self.sink.send(env, result="resent")
        if again:
            log.info("system_events_resent", count=len(again), reason=reason)

    def run(self, stdin=None, stdout=None, max_events: int | None = None) -> int:
        """Serve events until SIGTERM (or ``max_events``, for tests). Returns the count handled."""
        stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
        handled = 0
        while not self.stop_requested and (max_events is None or handled < max_events):
            self._waiting = True
            try:
                if self.stop_requested:
                    break
                childutils.listener.ready(stdout)
                line = stdin.readline()
                if not line:     # EOF: supervisord is gone
                    break
                headers = childutils.get_headers(line)
                payload = stdin.read(int(headers["len"]))
            except _Stop:
                break
            finally:
                self._waiting = False
            try:
                self.handle(headers.get("eventname", ""), payload)
            except Exception as exc:  # never leave supervisord without an answer
                self._bad("error", "handler_failed", error=repr(exc))
            childutils.listener.ok(stdout)
            handled += 1
        return handled


def main() -> int:
    settings = settings_or_exit("ops")
    setup_logging("ops", settings.log_level, stream=sys.stderr)
    settings.warn_unknown_env(log)
    sink = SystemEventSink(settings.run_dir)
    supervisor = Supervisor(server_url(settings.run_dir), timeout_s=RPC_TIMEOUT_S)
    listener = Listener(sink, supervisor=supervisor, guard=liveness.StallGuard(settings.stall_after_s),
                        run_dir=settings.run_dir)
    StopSignals(listener.request_stop).install()
    log.info("started", publisher=sink.address, metrics_dir=sink.metrics_dir, supervisor=supervisor.url,
             stall_after_s=settings.stall_after_s)
    try:
        handled = listener.run()
    finally:
        sink.close()
        supervisor.close()
    log.info("stopped", events=handled)
    return 0
