"""The whole gateway under supervisord for the bench, fault and soak runs.

Reuses the tests' gateway harness (``tests/support/gateway.py``: environment, supervisorctl, REST and
simulator clients) but runs supervisord with ``subprocess`` instead of pytest-xprocess, so a
plain script can start and stop it. Stores are throwaway: a database with every migration
(or a private PostgreSQL cluster that can be stopped) and a RabbitMQ vhost.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import wait_for
from tests.support.gateway import Gateway, gateway_env
from tests.support.stores import AMQP_BASE, apply_migrations, throwaway_database, throwaway_vhost

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ("simulator", "publisher", "persister", "ingest", "api")
WATCHED = ("ingest", "publisher", "persister", "api", "simulator")
PRIVATE = ("order", "execution", "position", "wallet")


@contextlib.contextmanager
def stores(own_cluster: bool = False):
    """(pg_url, amqp_url): a throwaway database (or a private cluster, ``.cluster`` on the
    yielded tuple's owner) and a throwaway vhost, removed on exit."""
    with throwaway_vhost() as vhost:
        amqp_url = f"{AMQP_BASE}/{vhost}"
        if not own_cluster:
            with throwaway_database() as pg_url:
                yield pg_url, amqp_url, None
            return
        from tests.support.stores import Cluster  # initdb + pg_ctl as postgres, own port
        cluster = Cluster()
        try:
            cluster.start()
            apply_migrations(cluster.url)
            yield cluster.url, amqp_url, cluster
        finally:
            cluster.destroy()


class BenchGateway(Gateway):
    """supervisord with the four programs and the simulator; ``stop()`` always cleans up.
    ``sim_of``: a further instance (give it its own ``GW_INSTANCE_ID``) on the same stores,
    without a simulator of its own: it uses that gateway's."""

    def __init__(self, pg_url: str, amqp_url: str, sim_of: "BenchGateway | None" = None, **overrides):
        run_dir = Path(tempfile.mkdtemp(prefix="gwb-", dir="/tmp"))
        if sim_of is not None:
            overrides = {**overrides, "GW_SIM_AUTOSTART": "false", "SIM_PORT": sim_of.env["SIM_PORT"]}
        env = gateway_env(run_dir, pg_url, amqp_url, **overrides)
        super().__init__(env, pg_url, amqp_url)
        self.programs = PROGRAMS if sim_of is None else tuple(p for p in PROGRAMS if p != "simulator")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "BenchGateway":
        out = open(self.run_dir / "supervisord.out", "wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "supervisord"), "-n", "-c", str(ROOT / "supervisord.conf")],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        wait_for(lambda: (self.run_dir / "supervisor.sock").exists() or self.proc.poll() is not None, 30,
                 interval=0.1, message="supervisord socket")
        if self.proc.poll() is not None:
            raise RuntimeError(f"supervisord exited: {(self.run_dir / 'supervisord.out').read_text()}")
        self.wait_running(self.programs, timeout)
        wait_for(lambda: self.api("GET", "/health").status_code == 200, timeout, message="API /health")
        return self

    def stop(self, keep_dir: Path | None = None) -> None:
        """Stop every program and supervisord; copy the logs to ``keep_dir`` first if given."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.ctl("stop", "all")
                except Exception:   # supervisord's own SIGTERM below stops the programs too
                    pass
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        finally:
            if keep_dir is not None:
                shutil.copytree(self.log_dir, keep_dir, dirs_exist_ok=True)
            self.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)



# -- what the runs drive (any e2e Gateway: this one or the pytest fixture's) ----------------
def subscribe(gw: Gateway, requests: list[dict], timeout: float = 60) -> list[str]:
    """POST each request; wait until every one is active. Returns the subscription ids."""
    ids = []
    for req in requests:
        resp = gw.api("POST", "/api/v1/subscriptions", json={**req, "requested_by": "bench"})
        if resp.status_code not in (200, 201):
            raise RuntimeError(f"subscribe {req}: {resp.status_code} {resp.text}")
        ids.append(resp.json()["id"])
    wait_for(lambda: gw.query("SELECT count(*) AS n FROM subscriptions WHERE status = 'active' "
                              "AND id = ANY(%s::uuid[])", ids)[0]["n"] == len(ids), timeout, interval=0.25,
             message=f"{len(ids)} subscriptions active")
    return ids


def pids(gw: Gateway, states=("RUNNING",)) -> dict[str, int]:
    """{program: pid} of the programs supervisord reports in ``states``. Over supervisord's XML-RPC
    socket: cheap enough to poll (spawning supervisorctl costs ~0.3 s of CPU each time)."""
    from xmlrpc.client import ServerProxy

    from supervisor.xmlrpc import SupervisorTransport

    proxy = ServerProxy("http://127.0.0.1", transport=SupervisorTransport(
        None, None, f"unix://{gw.run_dir / 'supervisor.sock'}"))
    return {p["name"]: p["pid"] for p in proxy.supervisor.getAllProcessInfo() if p["statename"] in states}


def kill_all(gw: "BenchGateway") -> None:
    """kill -9 of supervisord and every process under it (each program is a process group of its
    own, so the stack is not one group), supervisord first so nothing is restarted."""
    import psutil

    try:
        top = psutil.Process(gw.proc.pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    gw.proc.wait(10)


def lease_owners(gw: Gateway) -> dict[str, str | None]:
    """{unit: owner of its live lease, None when none}."""
    return {r["unit"]: (r["owner"] if r["live"] else None)
            for r in gw.query("SELECT unit, owner, expires_at > now() AS live FROM gateway_leases")}


def status_file(gw: Gateway, process: str) -> dict:
    import orjson

    return orjson.loads((gw.run_dir / "status" / f"{process}.json").read_bytes())


def exit_on_sigterm() -> None:
    """SIGTERM (make interrupted, a timeout) unwinds like Ctrl-C, so every ``finally`` stops the gateway."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def market_requests(n_trades: int, books: int = 0, spot: int = 0) -> list[dict]:
    """``n_trades`` linear trade streams (symbols T0USDT...), ``books`` linear orderbook.50 streams,
    ``spot`` spot trade streams."""
    reqs = [{"channel": "trades", "category": "linear", "symbol": f"T{i}USDT"} for i in range(n_trades)]
    reqs += [{"channel": "orderbook", "category": "linear", "symbol": f"B{i}USDT", "depth": 50} for i in range(books)]
    reqs += [{"channel": "trades", "category": "spot", "symbol": f"S{i}USDT"} for i in range(spot)]
    return reqs


def private_requests() -> list[dict]:
    return [{"channel": c} for c in PRIVATE]


# -- resident memory -------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    """VmRSS of one process, MB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out += [int(c) for c in text]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def rss_by_program(gw: Gateway, pid_map: dict[str, int] | None = None) -> dict[str, float]:
    """RSS per program in MB; for the API the largest of gunicorn's master and workers
    (each is a process that must stay under the bound)."""
    pid_map = pid_map or pids(gw)
    out = {}
    for program in WATCHED:
        pid = pid_map.get(program)
        if not pid:
            continue
        procs = [pid] + (children(pid) if program == "api" else [])
        out[program] = round(max(rss_mb(p) for p in procs), 1)
    return out


def now_ms() -> int:
    return int(time.time() * 1000)
