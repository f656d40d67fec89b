"""Several whole gateway stacks (supervisord each: publisher, persister, ingest, api, ops) sharing
one PostgreSQL database, one RabbitMQ vhost and one Bybit simulator, as separate hosts would.

Each stack is its own process group (``start_new_session``), so "every process of one
instance" can be killed or stopped at once. The simulator runs on its own (``python -m
bybitsim``): no stack starts one (``GW_SIM_AUTOSTART=false``), all point at its port.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import pika
import pika.exceptions
import psutil

from tests.support import free_port, wait_for
from tests.support.gateway import ROOT, Gateway, gateway_env
from tests.support.ledger import ACCOUNT_CLASSES, Ledger

STACK = ("publisher", "persister", "ingest", "api")
KEY, SECRET = "multi-key", "multi-secret-0123456789abcdef"


class Simulator:
    def __init__(self, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="gwsim-", dir="/tmp"))
        base = {k: v for k, v in os.environ.items() if not k.startswith(("BYBIT_", "GW_", "SIM_", "API_"))}
        base.update({"GW_ENV_FILE": "", "BYBIT_ENV": "sim", "SIM_PORT": str(self.port), "SIM_API_KEY": KEY,
                     "SIM_API_SECRET": SECRET, "SIM_RATE": "5", "SIM_ACCOUNT_RATE": "4",
                     "GW_RUN_DIR": str(self.dir)})
        base.update({k: str(v) for k, v in env.items()})
        self.log = open(self.dir / "simulator.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "bybitsim"], cwd=ROOT, env=base, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: httpx.get(f"{self.url}/__sim/state", timeout=2).status_code == 200, 30,
                 message="simulator answering")

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        resp = httpx.request(method, f"{self.url}{path}", json=body, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Instance(Gateway):
    """One gateway stack with its own run directory, API port and instance id."""

    def __init__(self, instance_id: str, pg_url: str, amqp_url: str, sim: Simulator, **overrides):
        run_dir = Path(tempfile.mkdtemp(prefix=f"gw-{instance_id}-", dir="/tmp"))
        env = gateway_env(run_dir, pg_url, amqp_url, GW_INSTANCE_ID=instance_id, GW_SIM_AUTOSTART="false",
                          SIM_PORT=sim.port, SIM_API_KEY=KEY, SIM_API_SECRET=SECRET, BYBIT_API_KEY=KEY,
                          BYBIT_API_SECRET=SECRET, GW_RECONCILE_INTERVAL_S="10", **overrides)
        super().__init__(env, pg_url, amqp_url)
        self.instance_id = instance_id
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Instance":
        out = open(self.run_dir / "supervisord.out", "wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "supervisord"), "-n", "-c", str(ROOT / "supervisord.conf")],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        wait_for(lambda: (self.run_dir / "supervisor.sock").exists() or self.proc.poll() is not None, 30,
                 interval=0.1, message="supervisord socket")
        self.wait_ready(STACK)
        return self

    def processes(self) -> list[psutil.Process]:
        """supervisord and every process under it (supervisord gives each program a process
        group of its own, so the stack is not one group)."""
        try:
            top = psutil.Process(self.proc.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def signal_all(self, sig: int) -> None:
        """``sig`` to supervisord and every program it runs, supervisord first (so a killed or
        stopped program is not restarted behind the test's back)."""
        for p in self.processes():
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def ingest_status(self) -> dict:
        return json.loads((self.run_dir / "status" / "ingest.json").read_bytes())

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.signal_all(signal.SIGCONT)
                stack = self.processes()
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    pass
                for p in stack:         # anything left behind
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
        finally:
            self.close()
            keep = os.environ.get("MULTI_KEEP_LOGS")
            if keep:
                shutil.copytree(self.log_dir, Path(keep) / self.instance_id, dirs_exist_ok=True)
            shutil.rmtree(self.run_dir, ignore_errors=True)


class Consumer:
    """Every event of the vhost (one exclusive queue bound to ``#``), in a thread: what a
    consumer sees, with the ``instance`` and ``owner_epoch`` headers of each."""

    def __init__(self, amqp_url: str):
        self.url = amqp_url
        self.queue = f"multi-test-{uuid.uuid4().hex[:8]}"
        self.lock = threading.Lock()
        self.events: list[dict] = []
        self.ledger = Ledger()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(20), "consumer queue bound"

    def _run(self) -> None:
        # A durable queue of its own, consumed again after a reconnect: the shared broker may be
        # restarted by another test meanwhile, and what arrived in between must not be lost.
        while not self._stop.is_set():
            try:
                self._consume()
            except pika.exceptions.AMQPError:
                time.sleep(0.5)

    def _consume(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            ch = conn.channel()
            ch.exchange_declare("ws-gateway.events", exchange_type="topic", durable=True)
            ch.queue_declare(self.queue, durable=True)
            ch.queue_bind(self.queue, "ws-gateway.events", routing_key="#")
            ch.basic_qos(prefetch_count=500)
            self._ready.set()
            for method, props, body in ch.consume(self.queue, inactivity_timeout=0.2):
                if self._stop.is_set():
                    ch.queue_delete(self.queue)
                    return
                if method is not None:
                    self._take(method, props, body)
                    ch.basic_ack(method.delivery_tag)
        finally:
            try:
                conn.close()
            except Exception:
                pass

    def _take(self, method, props, body) -> None:
        doc = json.loads(body)
        headers = props.headers or {}
        cls = doc.get("event_class")
        item = {"rk": method.routing_key, "mid": props.message_id, "cls": cls, "topic": doc.get("topic"),
                "category": doc.get("category"), "instance": headers.get("instance"),
                "epoch": headers.get("owner_epoch"), "received_at": doc.get("received_at"),
                "at": time.time(), "data": doc.get("data") if cls == "system" else None}
        with self.lock:
            self.events.append(item)
            if cls in ACCOUNT_CLASSES or cls == "system":
                self.ledger.add(method.routing_key, props.message_id, doc)

    def snapshot(self, since: float = 0.0) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e["at"] >= since]

    def market_by_topic(self, since: float = 0.0) -> dict[str, list[dict]]:
        out = defaultdict(list)
        for e in self.snapshot(since):
            if e["cls"] not in ACCOUNT_CLASSES and e["cls"] != "system":
                out[f"{e['category']}:{e['topic']}"].append(e)
        return out

    def system(self, kind: str, since: float = 0.0) -> list[dict]:
        return [e for e in self.snapshot(since) if e["rk"] == f"system.{kind}"]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)


def leases(gw: Gateway) -> dict[str, dict]:
    """{unit: row} of the lease table, with ``live`` (not expired by the database's clock)."""
    return {r["unit"]: r for r in gw.query("SELECT unit, owner, holder, epoch, acquired_at, renewed_at, "
                                           "expires_at, expires_at > now() AS live FROM gateway_leases")}


def owners(gw: Gateway) -> dict[str, str | None]:
    return {u: (r["owner"] if r["live"] else None) for u, r in leases(gw).items()}
