"""The eventlistener's metrics (multiprocess mode: the API's /metrics aggregates them).

Counter files of a dead listener stay and are summed, so the totals survive its restarts.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge

RESTARTS = Counter("wsgw_process_restarts_total",
                   "supervisord process state changes that stop or restart a program "
                   "(EXITED, BACKOFF, FATAL, STOPPED), by program and state", ["program", "state"])
CRASHES = Counter("wsgw_process_crashes_total",
                  "Unexpected exits (not a stop, exit code not in exitcodes), by program", ["program"])
# mostrecent: the last value any listener wrote wins, so a restarted listener carries on.
UP = Gauge("wsgw_process_up", "1 while supervisord reports the program RUNNING, else 0", ["program"],
           multiprocess_mode="mostrecent")
# Zero series for the gateway's programs, so "increase(...) >= 3" alerts and the restart
# panels read 0, not "no data", before the first incident.
for _program in ("ingest", "publisher", "persister", "api"):
    CRASHES.labels(_program)
    RESTARTS.labels(_program, "EXITED")

EVENTS = Counter("wsgw_ops_events_total", "supervisord events received by the eventlistener", ["event"])
BAD_EVENTS = Counter("wsgw_ops_bad_events_total", "Events the eventlistener could not parse")
SYSTEM_EVENTS = Counter("wsgw_ops_system_events_total",
                        "system events handed to the publisher's socket, by kind and result",
                        ["kind", "result"])
LIVENESS_CHECKS = Counter("wsgw_ops_liveness_checks_total",
                          "Liveness checks (one per supervisord TICK), by result (done, supervisor_unreachable)",
                          ["result"])
STALLS = Counter("wsgw_process_stalls_total",
                 "Stalls: a RUNNING program's status file stopped moving for GW_STALL_AFTER_S, by program",
                 ["program"])
STALL_RESTARTS = Counter("wsgw_process_stall_restarts_total",
                         "Signals sent through supervisord to restart a stalled program (TERM, then KILL "
                         "after its stopwaitsecs), by program and signal", ["program", "signal"])
