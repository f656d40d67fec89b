"""Fixtures for the publisher's process tests: the real ``python -m publisher``
against the session's throwaway RabbitMQ vhost, fed by a PUSH socket here."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import orjson
import pika
import pytest
import zmq

from common import addresses, classify
from common.envelope import Envelope
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
FRAMES = ROOT / "tests" / "frames"


def frame_bytes(name: str) -> bytes:
    return (FRAMES / f"{name}.json").read_bytes()


class PublisherProc:
    """One ``python -m publisher`` subprocess and a PUSH socket connected to it."""

    def __init__(self, run_dir: Path, amqp_url: str, extra_env: dict | None = None):
        self.run_dir = run_dir
        self.env = {**os.environ, "GW_ENV_FILE": "", "RABBITMQ_URL": amqp_url, "GW_RUN_DIR": str(run_dir),
                    "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"), "GW_BACKOFF_MAX_S": "1", "PUBLISHER_BACKOFF_MAX_S": "1",
                    # no ingest here to read first: the test process pushes at normal priority, and a
                    # nicer publisher would only be slower against it on a busy machine
                    "GW_NICE_BEHIND_INGEST": "0",
                    **(extra_env or {})}
        (run_dir / "metrics").mkdir(parents=True, exist_ok=True)
        self.log_path = run_dir / f"publisher-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.connect(addresses.publisher_frames(run_dir))

    def start(self, ready: bool = True) -> "PublisherProc":
        """Start and wait for its status file (``ready``: with the broker channel ready)."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "publisher"], cwd=ROOT, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.status()["pid"] == self.proc.pid
                 and (not ready or self.status()["broker"]["state"] == "ready"),
                 timeout=20, message="publisher started")
        return self

    def status(self) -> dict:
        return orjson.loads(addresses.status_file(self.run_dir, "publisher").read_bytes())

    def total(self, key: str) -> int:
        return sum(self.status()[key].values())

    def push(self, env: Envelope, block: bool = True) -> None:
        self.sock.send_multipart(env.encode(), flags=0 if block else zmq.NOBLOCK)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("publisher did not stop in time")
        finally:
            self._log.close()

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        finally:
            self.sock.close(0)
            self.ctx.term()


@pytest.fixture
def publisher(short_tmp, amqp_url, broker):
    """Factory: ``publisher(**env)`` starts one; all are killed at teardown."""
    made: list[PublisherProc] = []

    def start(run_dir: Path | None = None, **env) -> PublisherProc:
        p = PublisherProc(run_dir or short_tmp, amqp_url, {k: str(v) for k, v in env.items()})
        made.append(p)
        return p.start()

    yield start
    for p in made:
        p.close()


class Broker:
    """A blocking pika connection to the test vhost, for inspecting what arrived."""

    def __init__(self, url: str):
        self.url = url
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()

    def count(self, queue: str) -> int:
        return self.ch.queue_declare(queue, passive=True).method.message_count

    def purge_gateway_queues(self) -> None:
        logging.getLogger("pika.channel").setLevel(logging.ERROR)   # 404s for queues not declared yet
        if not self.conn.is_open:
            self.conn = pika.BlockingConnection(pika.URLParameters(self.url))
            self.ch = self.conn.channel()
        for cls in classify.EVENT_CLASSES:
            try:
                self.ch.queue_purge(classify.queue_name(cls))
            except pika.exceptions.ChannelClosedByBroker:   # not declared yet
                self.ch = self.conn.channel()

    def drain(self, queue: str, n: int | None = None, timeout: float = 10.0) -> list[tuple]:
        """Consume (and ack) until ``n`` messages (or the queue stays empty 0.3 s)."""
        out = []
        deadline = time.monotonic() + timeout
        for method, props, body in self.ch.consume(queue, inactivity_timeout=0.3):
            if method is None:
                if n is None or len(out) >= n or time.monotonic() > deadline:
                    break
                continue
            self.ch.basic_ack(method.delivery_tag)
            out.append((method, props, orjson.loads(body)))
            if n is not None and len(out) >= n:
                break
            if time.monotonic() > deadline:
                break
        self.ch.cancel()
        return out

    def close(self) -> None:
        try:
            self.conn.close()
        except pika.exceptions.AMQPError:
            pass


@pytest.fixture
def broker(amqp_url):
    b = Broker(amqp_url)
    b.purge_gateway_queues()
    yield b
    try:
        b.purge_gateway_queues()
    finally:
        b.close()


def frame_seq(body: dict, name: str) -> int:
    """Which ``market_env``/``account_env`` seq an event was made from (its exchange_ts tells)."""
    frame = orjson.loads(frame_bytes(name))
    return body["exchange_ts"] - frame.get("ts", frame.get("creationTime"))


def market_env(seq: int, name: str = "public_trade", endpoint: str = "linear", epoch: str = "ep1",
               payload: bytes | None = None) -> Envelope:
    """A public frame envelope; the payload is made unique per seq (distinct event ids). With
    ``payload``, the topic is the one it names (as ingest reads it), else ``name``'s."""
    frame = orjson.loads(frame_bytes(name))
    frame["ts"] = frame["ts"] + seq
    topic = frame["topic"]
    if payload is not None:
        try:
            topic = orjson.loads(payload).get("topic", topic)
        except (orjson.JSONDecodeError, AttributeError):
            pass
    return Envelope("frame", payload or orjson.dumps(frame), endpoint=endpoint, topic=topic,
                    recv_ns=time.time_ns(), stream_seq=seq, epoch=epoch, trace_id=f"t{seq}")


def account_env(seq: int, name: str = "order", epoch: str = "ep1") -> Envelope:
    """A private push of a new account fact per (epoch, seq): a new fill, order or position
    state (``updatedTime``), or wallet version (``creationTime``), so each has its own id."""
    frame = orjson.loads(frame_bytes(name))
    frame["id"] = f"acct-{epoch}-{seq}"
    frame["creationTime"] += seq
    for rec in frame["data"]:
        if "execId" in rec:
            rec["execId"] = f"{rec['execId']}-{epoch}-{seq}"
        if "updatedTime" in rec:
            rec["updatedTime"] = str(int(rec["updatedTime"]) + seq + 1000 * (zlib.crc32(epoch.encode()) % 1000))
    return Envelope("frame", orjson.dumps(frame), endpoint="private", topic=frame["topic"],
                    recv_ns=time.time_ns(), stream_seq=seq, epoch=epoch, trace_id=f"a{seq}")
