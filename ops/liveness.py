"""Is each program alive, and what to do about one whose loop stalled. Pure: no I/O, the
clock is an argument.

ingest, publisher and persister rewrite their status file (common.addresses.status_file)
about once a second from their main loop, with their pid in it. A RUNNING program whose
file has not moved for ``stall_after_s`` is stalled: a dead loop the process table cannot
show (a deadlock, a blocking call that never returns, a SIGSTOP). A process that has not
written its first file yet gets START_GRACE_S more, counted from its spawn: starting is
not stalling.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from common.runtime import backoff_s

STATUS_PROGRAMS = ("ingest", "publisher", "persister")   # the programs that write a status file
START_GRACE_S = 30.0        # extra time before a fresh process's first status file
BACKOFF_FIRST_S = 60.0      # a second stall restart waits this long after the first, then doubling
BACKOFF_MAX_S = 900.0
BACKOFF_RESET_S = 600.0     # this long without a stall since the last restart: the next one is immediate
ACTED_PIDS_KEPT = 100


class LivenessError(ValueError):
    """supervisord answered something that is not a process list as it documents it."""


@dataclass(frozen=True, slots=True)
class Program:
    """One process as supervisord sees it (getAllProcessInfo + getAllConfigInfo)."""
    name: str
    state: str                  # statename: RUNNING, STOPPED, BACKOFF, ...
    pid: int = 0                # 0 when not running
    started: float = 0.0        # epoch s of the last spawn (0: never started)
    group: str = ""
    autostart: bool = True      # supervisord keeps it running unless an operator says otherwise
    stopwait_s: float = 10.0    # after SIGTERM, how long before SIGKILL (its drain bound)

    @property
    def rpc_name(self) -> str:
        return f"{self.group or self.name}:{self.name}"


@dataclass(frozen=True, slots=True)
class Beat:
    """The last status file of a program: who wrote it, and when (its mtime)."""
    pid: int | None
    at: float


def programs_from_rpc(infos: list, configs: list) -> dict[str, Program]:
    """supervisord's answers -> {name: Program}; raises LivenessError on a malformed answer."""
    conf = {}
    for c in configs if isinstance(configs, list) else ():
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            conf[c["name"]] = c
    if not isinstance(infos, list):
        raise LivenessError(f"process list: expected a list, got {type(infos).__name__}")
    out = {}
    for info in infos:
        try:
            name, state = info["name"], info["statename"]
            pid, started = int(info.get("pid") or 0), float(info.get("start") or 0)
            group = str(info.get("group") or name)
        except (TypeError, KeyError, ValueError) as exc:
            raise LivenessError(f"process entry {str(info)[:120]!r}: {exc!r}") from None
        c = conf.get(name, {})
        stopwait = c.get("stopwaitsecs")
        out[name] = Program(name=name, state=str(state), pid=pid, started=started, group=group,
                            autostart=bool(c.get("autostart", True)),
                            stopwait_s=float(stopwait) if isinstance(stopwait, (int, float)) else 10.0)
    return out


def parse_beat(raw: bytes, mtime: float) -> Beat:
    """A status file's bytes and mtime; unreadable JSON still counts as a write, by no known pid."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Beat(None, mtime)
    pid = data.get("pid") if isinstance(data, dict) else None
    return Beat(pid if isinstance(pid, int) and not isinstance(pid, bool) else None, mtime)


def silence(prog: Program, beat: Beat | None, now: float, stall_after_s: float) -> tuple[float, float] | None:
    """(seconds without a sign of life, the limit) for a RUNNING program that writes a status
    file; None for any other (not ours to judge, or not running)."""
    if prog.name not in STATUS_PROGRAMS or prog.state != "RUNNING" or prog.pid <= 0:
        return None
    if beat is not None and beat.pid == prog.pid:
        return now - max(beat.at, prog.started), stall_after_s
    # nothing from this process yet (the file is its predecessor's, or missing): still starting
    return now - prog.started, stall_after_s + START_GRACE_S


def problems(programs: dict[str, Program], beats: dict[str, Beat], now: float, stall_after_s: float) -> list[dict]:
    """What makes the gateway unhealthy: a program supervisord should keep running that is not
    RUNNING (an operator's stop included), or a stalled one."""
    out = []
    for name in sorted(programs):
        prog = programs[name]
        if prog.autostart and prog.state != "RUNNING":
            out.append({"program": name, "problem": "down", "state": prog.state})
            continue
        s = silence(prog, beats.get(name), now, stall_after_s)
        if s is not None and s[0] > s[1]:
            out.append({"program": name, "problem": "stalled", "pid": prog.pid, "silent_s": round(s[0], 1),
                        "limit_s": s[1]})
    return out


@dataclass(frozen=True, slots=True)
class Action:
    """What the listener should do: ``report`` (log + system.process_stalled), ``term`` / ``kill``
    (signal the stalled pid through supervisord, which restarts it on exit), ``recovered`` (log)."""
    kind: str
    program: str
    pid: int
    silent_s: float = 0.0
    limit_s: float = 0.0
    restarting: bool = False
    retry_in_s: float | None = None
    restarts_in_a_row: int = 0


@dataclass(slots=True)
class _Episode:
    pid: int
    reported: bool = False
    term_at: float | None = None
    killed: bool = False


@dataclass
class StallGuard:
    """Decides, check after check, when a stalled program is reported, signalled and killed.

    Only a RUNNING program is acted on: one an operator stopped (STOPPED, STOPPING) is left
    alone. The restart is SIGTERM (a loop that is merely slow drains as on any stop), then
    SIGKILL once the program's stopwaitsecs have passed; supervisord's autorestart brings it
    back. A program that stalls again soon after a restart waits BACKOFF_FIRST_S, doubling to
    BACKOFF_MAX_S, before the next restart (a restart that does not cure the stall must not
    become a loop); BACKOFF_RESET_S without a stall forgets the count.
    """
    stall_after_s: float
    backoff_first_s: float = BACKOFF_FIRST_S
    backoff_max_s: float = BACKOFF_MAX_S
    reset_after_s: float = BACKOFF_RESET_S
    _episodes: dict = field(default_factory=dict)     # program -> _Episode
    _restarts: dict = field(default_factory=dict)     # program -> (restarts in a row, last at)
    _acted: dict = field(default_factory=dict)        # pid -> program, pids we signalled

    def retry_at(self, program: str) -> float:
        count, last = self._restarts.get(program, (0, 0.0))
        if count == 0:
            return float("-inf")
        return last + backoff_s(count, self.backoff_max_s, self.backoff_first_s)

    def owns_exit(self, pid: int | None) -> bool:
        """The exit of ``pid`` is a stall restart of ours, not a crash."""
        return pid is not None and pid in self._acted

    def check(self, programs: dict[str, Program], beats: dict[str, Beat], now: float) -> list[Action]:
        actions: list[Action] = []
        for name in sorted(programs):
            prog = programs[name]
            ep = self._episodes.get(name)
            if ep is not None and (prog.state != "RUNNING" or prog.pid != ep.pid):
                del self._episodes[name]        # it exited (restarted), or an operator took over
                ep = None
            s = silence(prog, beats.get(name), now, self.stall_after_s)
            if s is None:
                continue
            silent, limit = s
            if silent <= limit:
                if ep is not None:               # moved again before we restarted it
                    del self._episodes[name]
                    actions.append(Action("recovered", name, prog.pid, silent, limit))
                count, last = self._restarts.get(name, (0, 0.0))
                if count and now - last >= self.reset_after_s:
                    del self._restarts[name]
                continue
            if ep is None:
                ep = self._episodes[name] = _Episode(prog.pid)
            if ep.term_at is None:
                wait = self.retry_at(name) - now
                if wait <= 0:
                    count = self._restarts.get(name, (0, 0.0))[0] + 1
                    self._restarts[name] = (count, now)
                    ep.term_at = now
                    self._remember(prog.pid, name)
                    if not ep.reported:
                        actions.append(Action("report", name, prog.pid, silent, limit, restarting=True,
                                              restarts_in_a_row=count))
                        ep.reported = True
                    actions.append(Action("term", name, prog.pid, silent, limit, restarting=True,
                                          restarts_in_a_row=count))
                elif not ep.reported:
                    ep.reported = True
                    actions.append(Action("report", name, prog.pid, silent, limit, restarting=False,
                                          retry_in_s=round(wait, 1),
                                          restarts_in_a_row=self._restarts[name][0]))
            elif not ep.killed and now - ep.term_at >= prog.stopwait_s:
                ep.killed = True
                actions.append(Action("kill", name, prog.pid, silent, limit, restarting=True,
                                      restarts_in_a_row=self._restarts[name][0]))
        return actions

    def _remember(self, pid: int, program: str) -> None:
        self._acted[pid] = program
        while len(self._acted) > ACTED_PIDS_KEPT:
            del self._acted[next(iter(self._acted))]


def stall_details(action: Action, *, host: str, at_ms: int) -> dict:
    """The body's ``data`` for system.process_stalled: the keys of the other process events
    (program, state, from_state, pid, restarting, host, at_ms) and how long it was silent."""
    details = {"program": action.program, "state": "RUNNING", "from_state": "RUNNING", "host": host,
               "at_ms": at_ms, "pid": action.pid, "restarting": action.restarting,
               "silent_s": round(action.silent_s, 1), "limit_s": action.limit_s,
               "restarts_in_a_row": action.restarts_in_a_row}
    if action.retry_in_s is not None:
        details["retry_in_s"] = action.retry_in_s
    return details
