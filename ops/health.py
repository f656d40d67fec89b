"""``python -m ops health``: the container's health check.

Healthy when supervisord answers, every program it should keep running is RUNNING (one an
operator stopped counts as down), none of ingest, publisher, persister is stalled (the same
rule the eventlistener acts on: ops.liveness) and the API answers /health. Prints one JSON
line (what Docker keeps as the check's output) and exits 0 if healthy, 1 if not (2: a bad
setting). Kept light: no ZeroMQ, no metrics, nothing the eventlistener needs.
"""
from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request

import orjson

from common.config import settings_or_exit
from ops import liveness
from ops.rpc import RPC_ERRORS, Supervisor, read_beats, server_url

TIMEOUT_S = 1.5          # each of the two questions; the HEALTHCHECK's own timeout is 5 s


def api_health_url(api_bind: str) -> str:
    """API_BIND -> the /health URL to ask from inside the container (a wildcard bind is asked on loopback)."""
    host, _, port = api_bind.rpartition(":")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"http://{host}:{port}/health"


def api_problem(url: str, timeout_s: float = TIMEOUT_S) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status == 200:
                return None
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return {"program": "api", "problem": "health_unanswered", "error": str(exc)[:200]}
    return {"program": "api", "problem": "health_status", "status": status}


def check(supervisor: Supervisor, run_dir, api_bind: str, stall_after_s: float, now: float | None = None) -> dict:
    try:
        programs = supervisor.programs()
    except RPC_ERRORS as exc:
        return {"healthy": False, "problems": [{"problem": "supervisord_unreachable", "error": str(exc)[:200]}]}
    found = liveness.problems(programs, read_beats(run_dir), time.time() if now is None else now, stall_after_s)
    if "api" in programs and programs["api"].state == "RUNNING":
        if (api := api_problem(api_health_url(api_bind))) is not None:
            found.append(api)
    return {"healthy": not found, "problems": found}


def main(argv: list[str] | None = None) -> int:
    settings = settings_or_exit("ops")
    supervisor = Supervisor(server_url(settings.run_dir), timeout_s=TIMEOUT_S)
    try:
        report = check(supervisor, settings.run_dir, settings.api_bind, settings.stall_after_s)
    finally:
        supervisor.close()
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0 if report["healthy"] else 1
