"""``python -m ops``: the supervisord eventlistener (``[eventlistener:ops]``).

One loop: READY, read one event, handle it in well under a millisecond (no network
wait: the system event is a NOBLOCK ZeroMQ send), answer OK. Stdout is supervisord's
protocol channel, so logs go to stderr (supervisord's ``stderr_logfile``). SIGTERM while
waiting for an event exits at once; during an event, after it is answered.
"""
from __future__ import annotations

import signal
import socket
import sys
import time
from collections import deque

from supervisor import childutils

from common.config import settings_or_exit
from common.logs import RateLimited, get_logger, setup_logging
from ops import events as ev_mod
from ops import metrics
from ops.sink import Sink

log = get_logger("ops")


PUBLISHER = "publisher"       # the program that relays our system events to RabbitMQ
RESEND_WINDOW_S = 5.0         # events sent this long before the publisher crashed are sent again


class _Stop(Exception):
    pass


class Listener:
    def __init__(self, sink: Sink, host: str | None = None):
        self.sink = sink
        self.host = host or socket.gethostname()
        self.stop_requested = False
        self._waiting = False
        self._bad = RateLimited(log, 10.0)
        self._recent: deque = deque(maxlen=100)    # (monotonic time sent, envelope)

    def request_stop(self, signum=None, frame=None) -> None:
        self.stop_requested = True
        if self._waiting:
            raise _Stop()

    def handle(self, eventname: str, payload: str) -> ev_mod.ProcessEvent | None:
        """One event: log line, metrics, metrics-file cleanup, system event. Never raises on bad input."""
        metrics.EVENTS.labels(eventname).inc()
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
        if kind == "process_crashed":
            metrics.CRASHES.labels(ev.program).inc()
        queued = None
        if kind == "process_crashed" and ev.program == PUBLISHER:
            self._resend_recent()
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
            getattr(log, ev_mod.log_level(ev))("process_" + ev.state.lower(), **fields)
        return ev

    def _resend_recent(self) -> None:
        """What the dead publisher may have held unpublished goes to the next one."""
        since = time.monotonic() - RESEND_WINDOW_S
        again = [env for sent, env in self._recent if sent >= since]
        for env in again:
            self.sink.send(env, result="resent")
        if again:
            log.info("system_events_resent", count=len(again), reason="publisher crashed")

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
    sink = Sink(settings.run_dir)
    listener = Listener(sink)
    signal.signal(signal.SIGTERM, listener.request_stop)
    signal.signal(signal.SIGINT, listener.request_stop)
    log.info("started", publisher=sink.address, metrics_dir=sink.metrics_dir)
    try:
        handled = listener.run()
    finally:
        sink.close()
    log.info("stopped", events=handled)
    return 0
