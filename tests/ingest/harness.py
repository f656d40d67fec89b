"""ingest as a real process against the simulator over real sockets. The test stands in for
publisher and persister: it binds their PULL sockets and records every envelope."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import orjson
import zmq

from common import addresses, control
from common.envelope import Envelope, unpack
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]


class Capture:
    """Binds a PULL socket and keeps every envelope received, in order."""

    def __init__(self, ctx: zmq.Context, address: str, *more: str):
        """``more``: further addresses bound by the same socket (the publisher's priority pipe)."""
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 100)
        for a in (address, *more):
            self.sock.bind(a)
        self.items: list[Envelope] = []
        self.lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                parts = self.sock.recv_multipart()
            except zmq.Again:
                continue
            except zmq.ZMQError:
                return
            with self.lock:
                self.items.extend(Envelope.decode(one) for one in unpack(parts))

    def frames(self, topic: str | None = None, endpoint: str | None = None) -> list[Envelope]:
        with self.lock:
            return [e for e in self.items if e.kind == "frame" and (topic is None or e.topic == topic)
                    and (endpoint is None or e.endpoint == endpoint)]

    def of_kind(self, kind: str, topic: str | None = None) -> list[Envelope]:
        with self.lock:
            return [e for e in self.items if e.kind == kind and (topic is None or e.topic == topic)]

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close(0)


class IngestProcess:
    def __init__(self, run_dir: Path, sim, pg_url: str, **overrides):
        self.run_dir = run_dir
        self.sim = sim
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BYBIT_", "GW_", "SIM_"))}
        self.env.update({
            "GW_ENV_FILE": "", "BYBIT_ENV": "sim", "SIM_PORT": str(sim.port),
            "GW_RUN_DIR": str(run_dir), "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"),
            "DATABASE_URL": pg_url, "GW_PING_INTERVAL_S": "0.5", "GW_DEAD_AFTER_S": "2",
            "GW_BACKOFF_MAX_S": "2", "GW_LOG_LEVEL": "info",
        })
        self.env.update({k: str(v) for k, v in overrides.items()})
        (run_dir / "metrics").mkdir(parents=True, exist_ok=True)
        self.ctx = zmq.Context()
        self.publisher = Capture(self.ctx, addresses.publisher_frames(run_dir), addresses.publisher_priority(run_dir))
        self.persister = Capture(self.ctx, addresses.persister_frames(run_dir))
        self.log_path = run_dir / "ingest.log"
        self.proc = None
        self.start()

    def start(self) -> None:
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ingest"], cwd=ROOT, env=self.env,
                                     stdout=self.log_file, stderr=subprocess.STDOUT)

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self.publisher.close()
        self.persister.close()
        self.ctx.term()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def control(self, op: str, subscription: dict | None = None, trace_id: str = "", timeout_ms: int = 5000) -> dict:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        sock.connect(addresses.ingest_control(self.run_dir))
        try:
            rid = uuid.uuid4().hex
            try:
                message = control.request(op, rid, trace_id, subscription)
            except control.ControlError:       # a request ingest must refuse: sent as it is
                message = orjson.dumps({"id": rid, "op": op, "subscription": subscription, "trace_id": trace_id})
            sock.send(message)
            reply = control.decode(sock.recv())
            assert reply["id"] == rid
            return reply
        finally:
            sock.close(0)

    def add(self, **sub) -> dict:
        return wait_for(lambda: self.control("add", sub), 15, message="ingest control socket answering")

    def status(self) -> dict:
        path = self.run_dir / "status" / "ingest.json"
        return orjson.loads(wait_for(lambda: path.exists() and path.read_bytes(), 5, message="ingest status file"))

    def statuses(self) -> dict[str, str]:
        """Latest status per topic as reported to the persister."""
        out = {}
        for env in self.persister.of_kind("sub_status"):
            body = env.json()
            out[f"{body['endpoint']}:{body['topic']}"] = body["status"]
        return out


def sim_op(sim_url: str, op: str, **payload) -> dict:
    resp = httpx.request("GET" if op in ("state", "account") else "POST", f"{sim_url}/__sim/{op}",
                         json=payload or None, timeout=10)
    resp.raise_for_status()
    return resp.json()


def frame_counts(capture: Capture) -> collections.Counter:
    return collections.Counter(f"{e.endpoint}:{e.topic}" for e in capture.frames())
