"""The whole gateway under supervisord: its environment and a client for it (supervisorctl, the
API, the simulator, PostgreSQL, RabbitMQ). Tests start it with pytest-xprocess
(tests/e2e/conftest.py), the bench with subprocess (bench/_gw.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pika
import psycopg2
import psycopg2.extras

from tests.support import ROOT, free_port, wait_for

PROGRAMS = ("simulator", "publisher", "persister", "ingest", "api")
E2E_KEY, E2E_SECRET = "e2e-key-7f3a", "e2e-secret-9c1d5b"


def gateway_env(run_dir: Path, pg_url: str, amqp_url: str, **overrides) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BYBIT_", "GW_", "SIM_", "API_"))}
    env.update({
        "GW_HOME": str(ROOT), "GW_PYTHON": sys.executable, "GW_ENV_FILE": "",
        "GW_RUN_DIR": str(run_dir), "GW_LOG_DIR": str(run_dir / "logs"),
        "GW_LOG_MAXBYTES": "10MB", "GW_LOG_BACKUPS": "2", "GW_SIM_AUTOSTART": "true",
        "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"),
        "BYBIT_ENV": "sim", "SIM_PORT": str(free_port()), "SIM_RATE": "20",
        "DATABASE_URL": pg_url, "RABBITMQ_URL": amqp_url,
        "API_BIND": f"127.0.0.1:{free_port()}",
        "GW_PING_INTERVAL_S": "1", "GW_DEAD_AFTER_S": "3", "GW_BACKOFF_MAX_S": "2", "PUBLISHER_BACKOFF_MAX_S": "2",
        "GW_LOG_LEVEL": "info",
        # the simulator's account and the gateway's private stream share a test key
        "SIM_API_KEY": E2E_KEY, "SIM_API_SECRET": E2E_SECRET,
        "BYBIT_API_KEY": E2E_KEY, "BYBIT_API_SECRET": E2E_SECRET,
    })
    env.update({k: str(v) for k, v in overrides.items()})
    for d in ("logs", "metrics", "status"):
        (run_dir / d).mkdir(parents=True, exist_ok=True)
    return env


class Gateway:
    def __init__(self, env: dict[str, str], pg_url: str, amqp_url: str):
        self.env, self.pg_url, self.amqp_url = env, pg_url, amqp_url
        self.run_dir = Path(env["GW_RUN_DIR"])
        self.log_dir = Path(env["GW_LOG_DIR"])
        self.api_url = f"http://{env['API_BIND']}"
        self.sim_url = f"http://127.0.0.1:{env['SIM_PORT']}"
        self.http = httpx.Client(timeout=10)

    # -- supervisord -----------------------------------------------------------------
    def ctl(self, *args: str, check: bool = False) -> str:
        out = subprocess.run([str(Path(sys.executable).parent / "supervisorctl"), "-c", str(ROOT / "supervisord.conf"),
                              *args], env=self.env, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"supervisorctl {' '.join(args)} failed: {out.stdout}{out.stderr}")
        return out.stdout

    def states(self) -> dict[str, str]:
        states = {}
        for line in self.ctl("status").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                states[parts[0]] = parts[1]
        return states

    def pid(self, program: str) -> int:
        return int(self.ctl("pid", program).strip())

    def wait_running(self, programs=PROGRAMS, timeout: float = 30.0) -> None:
        wait_for(lambda: all(self.states().get(p) == "RUNNING" for p in programs), timeout,
                 interval=0.2, message=f"{programs} RUNNING (now {self.states()})")

    def wait_ready(self, programs=PROGRAMS) -> None:
        """Every program RUNNING and the API answering /health."""
        self.wait_running(programs)
        wait_for(lambda: self.api("GET", "/health").status_code == 200, 30, message="API /health")

    # -- REST ------------------------------------------------------------------------------
    def api(self, method: str, path: str, **kw) -> httpx.Response:
        return self.http.request(method, self.api_url + path, **kw)

    def sim(self, method: str, path: str, **kw) -> httpx.Response:
        resp = self.http.request(method, self.sim_url + path, **kw)
        resp.raise_for_status()
        return resp

    def sim_state(self) -> dict:
        return self.sim("GET", "/__sim/state").json()

    def sim_subscribed(self, endpoint: str) -> set[str]:
        return set(self.sim_state().get("subscribed", {}).get(endpoint, []))

    # -- PostgreSQL ------------------------------------------------------------------------
    def query(self, sql: str, *args) -> list[dict]:
        conn = psycopg2.connect(self.pg_url)
        try:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(sql, args)
                return [dict(r) for r in cur.fetchall()] if cur.description else []
        finally:
            conn.close()

    def subscription(self, sid: str) -> dict:
        rows = self.query("SELECT * FROM subscriptions WHERE id = %s", sid)
        return rows[0] if rows else {}

    # -- RabbitMQ ----------------------------------------------------------------------------
    def amqp(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(self.amqp_url))

    def log_text(self, program: str) -> str:
        path = self.log_dir / f"{program}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.http.close()


def get_messages(channel, queue: str, n: int, timeout: float = 15.0) -> list:
    """Take up to ``n`` messages from ``queue`` (acked), waiting at most ``timeout`` seconds."""
    out = []
    for method, props, body in channel.consume(queue, inactivity_timeout=timeout, auto_ack=False):
        if method is None:
            break
        channel.basic_ack(method.delivery_tag)
        out.append((method, props, body))
        if len(out) >= n:
            break
    channel.cancel()
    return out
