"""A simulator on a thread per module, a small sync WebSocket client, recorded frames."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

import bybitsim

FRAMES = Path(__file__).resolve().parent.parent / "frames"
KEY, SECRET = "test-key", "test-secret"


def frame(name: str) -> dict:
    return json.loads((FRAMES / f"{name}.json").read_text())


class Client:
    """A sync websockets client speaking JSON, with waits that have deadlines."""

    def __init__(self, url: str):
        self.ws = connect(url, open_timeout=5, close_timeout=1, compression=None).__enter__()

    def send(self, obj) -> None:
        self.ws.send(obj if isinstance(obj, str) else json.dumps(obj))

    def recv(self, timeout: float = 3.0) -> dict:
        return json.loads(self.ws.recv(timeout=timeout))

    def recv_until(self, predicate, timeout: float = 3.0) -> dict:
        """The first message matching ``predicate``; the ones before it are discarded."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching message before the deadline")
            msg = self.recv(left)
            if predicate(msg):
                return msg

    def reply(self, timeout: float = 3.0) -> dict:
        """The next control reply (anything without a topic)."""
        return self.recv_until(lambda m: "topic" not in m, timeout)

    def data(self, topic: str, timeout: float = 3.0) -> dict:
        return self.recv_until(lambda m: m.get("topic") == topic, timeout)

    def request(self, obj, timeout: float = 3.0) -> dict:
        self.send(obj)
        return self.reply(timeout)

    def subscribe(self, *topics, req_id=None) -> dict:
        msg = {"op": "subscribe", "args": list(topics)}
        if req_id is not None:
            msg["req_id"] = req_id
        return self.request(msg)

    def auth(self, key: str = KEY, secret: str = SECRET, expires_in_ms: int = 5000, req_id="auth-1") -> dict:
        expires = int(time.time() * 1000) + expires_in_ms
        return self.request({"req_id": req_id, "op": "auth", "args": [key, expires, bybitsim.sign(secret, expires)]})

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def sim():
    with bybitsim.run_in_thread(rate=50, api_key=KEY, api_secret=SECRET, account_rate=0, seed=7) as handle:
        yield handle


@pytest.fixture(autouse=True)
def clean_sim(request):
    """Each test starts from no faults and the module's rates."""
    yield
    if "sim" in request.fixturenames:
        handle = request.getfixturevalue("sim")
        handle.reset()
        handle.rate(rate=50, account_rate=0)


@pytest.fixture
def client(sim):
    """``client(endpoint)`` opens a connection; all are closed after the test."""
    opened = []

    def open_(endpoint: str, query: str = "") -> Client:
        url = sim.ws_private_url + query if endpoint == "private" else sim.ws_public_url(endpoint)
        c = Client(url)
        opened.append(c)
        return c

    yield open_
    for c in opened:
        try:
            c.close()
        except Exception:
            pass
