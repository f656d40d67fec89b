"""API fixtures: the Flask app over the session's PostgreSQL database and a fake
ingest (a real ZeroMQ ROUTER on a short ipc path) that acks, refuses or stays silent."""
from __future__ import annotations

import threading

import pytest
import zmq

from common import control
from common.addresses import ingest_control
from common.config import load_settings


class FakeIngest:
    """The ingest side of the control channel, with the real socket type and wire format."""

    def __init__(self, address: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(address)
        self.mode = "ack"              # ack | refuse | silent | wrong_id
        self.error = "error:handler not found,topic:x"
        self.requests: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            ident, payload = self.sock.recv_multipart()
            msg = control.decode(payload)
            self.requests.append(msg)
            if self.mode == "ack":
                self.sock.send_multipart([ident, control.reply(msg["id"], True)])
            elif self.mode == "refuse":
                self.sock.send_multipart([ident, control.reply(msg["id"], False, self.error)])
            elif self.mode == "wrong_id":
                self.sock.send_multipart([ident, b"not json"])
                self.sock.send_multipart([ident, control.reply("other", True)])
                self.sock.send_multipart([ident, control.reply(msg["id"], True)])

    def ops(self) -> list[tuple[str, str]]:
        return [(r["op"], r["subscription"]["topic"]) for r in self.requests]

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close(linger=0)
        self.ctx.term()


def make_settings(pg_url: str, run_dir, **env):
    base = {"DATABASE_URL": pg_url, "GW_RUN_DIR": str(run_dir), "GW_CONTROL_TIMEOUT_MS": "300",
            "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672/%2F"}
    base.update(env)
    return load_settings(base)


@pytest.fixture
def clean_db(db):
    def wipe():
        with db.cursor() as cur:
            cur.execute("TRUNCATE subscriptions, balances, orders")
    wipe()
    yield db
    wipe()


@pytest.fixture
def fake_ingest(short_tmp):
    ingest = FakeIngest(ingest_control(short_tmp))
    yield ingest
    ingest.close()


@pytest.fixture
def app_factory(pg_url, short_tmp, clean_db):
    from api import create_app
    from api.db import close_pools

    def make(**env):
        return create_app({"SETTINGS": make_settings(pg_url, short_tmp, **env), "TESTING": True})

    yield make
    close_pools()


@pytest.fixture
def app(app_factory):
    return app_factory()


@pytest.fixture
def client(app, fake_ingest):
    return app.test_client()
