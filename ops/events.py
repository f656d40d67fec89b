"""supervisord event payloads -> typed records and what to do about them. Pure: no I/O.

Payload headers (supervisor 4.3's event documentation): every PROCESS_STATE event has
``processname``, ``groupname``, ``from_state``; EXITED adds ``expected`` and ``pid``,
STOPPED and RUNNING add ``pid``, BACKOFF and STARTING add ``tries``; FATAL has no pid.
"""
from __future__ import annotations

from dataclasses import dataclass

PREFIX = "PROCESS_STATE_"
STATES = ("STARTING", "RUNNING", "BACKOFF", "STOPPING", "STOPPED", "EXITED", "FATAL", "UNKNOWN")
# The states an operator cares about: each is a log line and a metric.
WATCHED = ("EXITED", "FATAL", "BACKOFF", "STOPPED")


class EventError(ValueError):
    """A payload that is not a process state event as supervisord writes it."""


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    state: str                  # RUNNING, EXITED, ... (without the PROCESS_STATE_ prefix)
    program: str
    group: str
    from_state: str
    pid: int | None = None
    expected: bool | None = None  # EXITED only: the exit code was in exitcodes
    tries: int | None = None      # BACKOFF/STARTING only


def parse_headers(line: str) -> dict[str, str]:
    """``key:value key:value`` -> dict (supervisor.childutils.get_headers, but strict)."""
    out = {}
    for item in line.split():
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise EventError(f"bad header item {item[:60]!r}")
        out[key] = value
    return out


def _int(headers: dict[str, str], key: str) -> int | None:
    raw = headers.get(key)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise EventError(f"{key}: expected an integer, got {raw[:30]!r}") from None


def parse_event(eventname: str, payload: str) -> ProcessEvent:
    """One event (``eventname`` from the envelope headers, ``payload`` its body)."""
    if not eventname.startswith(PREFIX):
        raise EventError(f"not a process state event: {eventname[:60]!r}")
    state = eventname[len(PREFIX):]
    if state not in STATES:
        raise EventError(f"unknown process state {state!r}")
    headers = parse_headers(payload.split("\n", 1)[0])
    try:
        program, group, from_state = headers["processname"], headers["groupname"], headers["from_state"]
    except KeyError as exc:
        raise EventError(f"payload has no {exc.args[0]}") from None
    expected = headers.get("expected")
    if expected not in (None, "0", "1"):
        raise EventError(f"expected: 0 or 1, got {expected[:10]!r}")
    return ProcessEvent(state=state, program=program, group=group, from_state=from_state,
                        pid=_int(headers, "pid"), tries=_int(headers, "tries"),
                        expected=None if expected is None else expected == "1")


def system_kind(ev: ProcessEvent) -> str | None:
    """The ``system`` event to publish, if any.

    ``process_crashed``: the process died while supervisord expected it to run (an exit
    code not in exitcodes, a signal, kill -9) — supervisord restarts it. ``process_fatal``:
    it could not be kept running (start retries used up) and stays down until an operator
    acts. A stop (STOPPED) or a clean exit is not news for consumers.
    """
    if ev.state == "EXITED" and ev.expected is False:
        return "process_crashed"
    if ev.state == "FATAL":
        return "process_fatal"
    return None


def system_details(ev: ProcessEvent, *, host: str, at_ms: int) -> dict:
    """The body's ``data`` for a system event about ``ev``."""
    details = {"program": ev.program, "state": ev.state, "from_state": ev.from_state, "host": host,
               "at_ms": at_ms}
    if ev.pid is not None:
        details["pid"] = ev.pid
    if ev.expected is not None:
        details["expected"] = ev.expected
    details["restarting"] = ev.state == "EXITED"
    return details


def log_level(ev: ProcessEvent) -> str:
    if ev.state == "FATAL":
        return "critical"
    if ev.state == "BACKOFF" or (ev.state == "EXITED" and not ev.expected):
        return "error"
    if ev.state in WATCHED:
        return "warning" if ev.state == "EXITED" else "info"
    return "info"
