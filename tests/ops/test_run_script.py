"""What README's quick start and operations section run: `make demo` (scripts/run.sh with
BYBIT_ENV=sim) brings every program up with the simulator's keys, so account events flow;
scripts/ctl.sh status / stop all (ordered) work; SIGTERM stops supervisord cleanly."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, wait_for
from tests.support.gateway import ROOT

pytestmark = pytest.mark.timeout(150)
PROGRAMS = ("ops", "simulator", "publisher", "persister", "ingest", "api")


def status(env) -> dict[str, str]:
    out = subprocess.run([str(ROOT / "scripts/ctl.sh"), "status"], env=env, capture_output=True, text=True,
                         timeout=30).stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if len(line.split()) > 1}


def test_demo_runs_with_account_events_and_stops_in_order(gateway_stores):
    pg_url, amqp_url = gateway_stores
    run_dir = Path(tempfile.mkdtemp(prefix="gwr-", dir="/tmp"))
    env = {"PATH": f"{ROOT / '.venv/bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
           "GW_ENV_FILE": "", "BYBIT_ENV": "sim", "SIM_PORT": str(free_port()), "SIM_ACCOUNT_RATE": "20",
           "GW_RUN_DIR": str(run_dir), "GW_LOG_DIR": str(run_dir / "logs"), "DATABASE_URL": pg_url,
           "RABBITMQ_URL": amqp_url, "API_BIND": f"127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([str(ROOT / "scripts/run.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    api = httpx.Client(base_url=f"http://{env['API_BIND']}", timeout=5)
    try:
        first = proc.stdout.readline()
        assert first.startswith("demo: subscribed") and "order" in first and "wallet" in first, first
        assert proc.stdout.readline().startswith(f"ws-gateway: BYBIT_ENV=sim, logs in {run_dir / 'logs'}")
        wait_for(lambda: api.get("/health").status_code == 200, 60, interval=0.2, message="API /health")
        wait_for(lambda: all(status(env).get(p) == "RUNNING" for p in PROGRAMS), 30, message="every program")
        # the private stream runs on the simulator's keys: account events reach PostgreSQL and the API
        wait_for(lambda: api.get("/api/v1/orders").json()["items"], 30, message="orders from the demo account")
        assert stat.S_IMODE((run_dir / "supervisor.sock").stat().st_mode) == 0o700
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700

        out = subprocess.run([str(ROOT / "scripts/ctl.sh"), "stop", "all"], env=env, capture_output=True,
                             text=True, timeout=120).stdout
        stopped = [line.split(":")[0] for line in out.splitlines() if line.endswith("stopped")]
        assert stopped == ["api", "ingest", "publisher", "persister", "simulator"] or \
            stopped == ["api", "ingest", "persister", "publisher", "simulator"], out
        assert all(status(env).get(p) == "STOPPED" for p in PROGRAMS if p != "ops")
        os.kill(proc.pid, signal.SIGTERM)      # run.sh exec'd supervisord: this is it
        assert proc.wait(60) == 0
    finally:
        api.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["rm", "-rf", str(run_dir)])
