"""Fixtures for the persister: its own throwaway database per module (so row counts
are not shared with other areas' tests), a PUSH socket, and the process itself."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import psycopg2
import pytest
import zmq

from common import addresses
from common.envelope import Envelope, json_envelope
from tests.support import ROOT
from tests.support.stores import apply_migrations, create_database, drop_database

FRAMES = ROOT / "tests" / "frames"


def frame(name: str) -> dict:
    return orjson.loads((FRAMES / f"{name}.json").read_bytes())


@pytest.fixture(scope="module")
def own_pg_url():
    name = f"wsgw_tp_{uuid.uuid4().hex[:10]}"
    url = create_database(name)
    try:
        apply_migrations(url)
        yield url
    finally:
        drop_database(name)


@pytest.fixture
def own_db(own_pg_url):
    conn = psycopg2.connect(own_pg_url)
    conn.autocommit = True
    yield conn
    with conn.cursor() as cur:   # each test leaves the tables empty
        cur.execute("TRUNCATE balances, orders, executions, positions, dead_letters, subscriptions")
    conn.close()


def persister_env(run_dir: Path, database_url: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GW_", "PERSISTER_", "DATABASE_"))}
    env.update({"GW_ENV_FILE": "", "DATABASE_URL": database_url, "GW_RUN_DIR": str(run_dir),
                "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"), "PERSISTER_BATCH_MS": "50",
                **extra})
    return env


class Proc:
    """``python -m persister`` as a child; output goes to a file for the assertions."""

    def __init__(self, run_dir: Path, database_url: str, **extra):
        self.run_dir = run_dir
        self.log_path = run_dir / "persister.log"
        self._log = self.log_path.open("wb")
        self.p = subprocess.Popen([sys.executable, "-m", "persister"], cwd=ROOT, stdout=self._log,
                                  stderr=subprocess.STDOUT, env=persister_env(run_dir, database_url, **extra))

    def status(self) -> dict:
        return orjson.loads(addresses.status_file(self.run_dir, "persister").read_bytes())

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"event": line.decode(errors="replace")})
        return out

    def events(self, name: str) -> list[dict]:
        return [line for line in self.log_lines() if line.get("event") == name]

    def stop(self, timeout: float = 20.0) -> int:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._log.close()
        return self.p.returncode


@pytest.fixture
def start_persister(short_tmp):
    procs: list[Proc] = []

    def start(database_url: str, **extra) -> Proc:
        proc = Proc(short_tmp, database_url, **extra)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


class Pusher:
    """What ingest does: PUSH (connect) to the persister's PULL, NOBLOCK."""

    def __init__(self, run_dir: Path):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.sock.connect(addresses.persister_frames(run_dir))
        self.seq = 0

    def frame(self, body: dict, topic: str | None = None, endpoint: str = "private") -> None:
        self.seq += 1
        env = Envelope("frame", orjson.dumps(body), endpoint, topic or body["topic"], 0, self.seq, "test-epoch", "c1")
        self.sock.send_multipart(env.encode(), zmq.NOBLOCK)

    def raw(self, parts: list[bytes]) -> None:
        self.sock.send_multipart(parts, zmq.NOBLOCK)

    def json(self, kind: str, body: dict) -> None:
        self.sock.send_multipart(json_envelope(kind, body).encode(), zmq.NOBLOCK)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def pusher(short_tmp):
    p = Pusher(short_tmp)
    yield p
    p.close()
