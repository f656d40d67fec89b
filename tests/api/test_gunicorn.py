"""The API as supervisord runs it: ``python -m api`` (gunicorn, 2 gthread workers)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served_api(pg_url, short_tmp, fake_ingest, clean_db):
    port = free_port()
    metrics_dir = short_tmp / "metrics"
    metrics_dir.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "GW_ENV_FILE": "", "DATABASE_URL": pg_url,
           "GW_RUN_DIR": str(short_tmp), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
           "API_BIND": f"127.0.0.1:{port}", "GW_CONTROL_TIMEOUT_MS": "500", "GW_LOG_LEVEL": "info"}
    log_path = short_tmp / "api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/health", timeout=1).status_code == 200, timeout=20,
                 message="gunicorn to answer /health")
        yield proc, base, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.timeout(60)
def test_python_m_api_serves_and_stops_on_sigterm(served_api, fake_ingest):
    proc, base, log_path = served_api
    with httpx.Client(base_url=base, timeout=5) as http:
        assert http.get("/health").json() == {"status": "ok"}
        created = http.post("/api/v1/subscriptions", json={"channel": "trades", "category": "linear",
                                                           "symbol": "BTCUSDT", "requested_by": "svc-a"},
                            headers={"X-Request-ID": "gun-1"})
        assert created.status_code == 201 and created.json()["ingest"] == "accepted"
        assert created.headers["X-Request-ID"] == "gun-1"
        assert fake_ingest.requests[-1]["trace_id"] == "gun-1"
        listed = http.get("/api/v1/subscriptions").json()
        assert [i["topic"] for i in listed["items"]] == ["publicTrade.BTCUSDT"]
        for _ in range(20):                  # spread over both workers
            http.get("/health")
        metrics = http.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        health_lines = [line for line in metrics.text.splitlines()
                        if line.startswith('wsgw_api_requests_total{method="GET",route="/health",status="200"}')]
        assert health_lines and float(health_lines[0].split()[-1]) >= 21   # summed over worker files
        assert 'wsgw_api_control_requests_total{op="add",result="accepted"} 1.0' in metrics.text
    # HUP (supervisorctl signal HUP api): new workers, still serving, same master.
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "Hang up" in log_path.read_text() or "Handling signal: hup" in log_path.read_text(), 10,
             message="gunicorn to handle HUP")
    wait_for(lambda: httpx.get(f"{base}/api/v1/subscriptions", timeout=2).status_code == 200, 15,
             message="served after HUP")
    assert proc.poll() is None
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    lines = log_path.read_text().splitlines()
    assert lines and all(line.startswith("{") for line in lines), lines[:5]
    assert any('"trace_id":"gun-1"' in line for line in lines)


@pytest.mark.timeout(60)
def test_silent_connections_do_not_stall_requests(served_api):
    """Connections that open and send nothing (client pools connecting ahead, TCP probes)
    must not hold the workers' threads: with gunicorn's default a new connection holds a
    thread for up to 5 s, and 20 of them stalled /health for 14.8 s."""
    _proc, base, _log = served_api
    port = int(base.rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(24)]
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(10):          # new connections each time: spread over both workers
                started = time.monotonic()
                assert httpx.get(f"{base}/health", timeout=10).status_code == 200
                assert time.monotonic() - started < 1.0, "a request waited behind silent connections"
            assert http.get("/health").status_code == 200
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.timeout(60)
def test_huge_body_through_gunicorn_is_a_json_413(served_api):
    """A body past the 16 KB limit is refused with the JSON error, over a real socket: the
    rest of the body is drained or the connection closed after the answer, never reset
    before it."""
    _proc, base, _log = served_api
    huge = b'{"channel":"trades","category":"linear","symbol":"' + b"A" * (2 * 1024 * 1024) + b'"}'
    with httpx.Client(base_url=base, timeout=10) as http:
        for _ in range(3):
            resp = http.post("/api/v1/subscriptions", content=huge, headers={"Content-Type": "application/json"})
            assert resp.status_code == 413
            assert resp.json()["error"]["code"] == "body_too_large"
            assert resp.headers["connection"] == "close"     # not reused: the body was never read
        assert http.get("/health").status_code == 200


@pytest.mark.timeout(60)
def test_chunked_bodies_through_gunicorn(served_api):
    """A chunked body (no Content-Length) is read up to the limit: a small one is served, a
    huge one is a 413 (not a 400 for JSON cut at the limit), and the client can go on."""
    _proc, base, _log = served_api

    def chunks(data: bytes):
        for i in range(0, len(data), 8192):
            yield data[i:i + 8192]

    small = b'{"channel":"trades","category":"linear","symbol":"CHUNKUSDT","requested_by":"svc-c"}'
    huge = b'{"channel":"trades","category":"linear","symbol":"' + b"A" * (2 * 1024 * 1024) + b'"}'
    with httpx.Client(base_url=base, timeout=10) as http:
        created = http.post("/api/v1/subscriptions", content=chunks(small), headers={"Content-Type": "application/json"})
        assert created.status_code == 201 and created.json()["topic"] == "publicTrade.CHUNKUSDT"
        refused = http.post("/api/v1/subscriptions", content=chunks(huge), headers={"Content-Type": "application/json"})
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "body_too_large"
        assert http.get("/health").status_code == 200


@pytest.mark.timeout(60)
def test_requests_gunicorn_refuses_get_the_json_error_shape(served_api):
    """What gunicorn refuses before the app runs (request line or headers too large, a
    request line that is not HTTP) is answered in the API's one error shape, not HTML."""
    _proc, base, _log = served_api
    port = int(base.rsplit(":", 1)[1])
    with httpx.Client(base_url=base, timeout=10) as http:
        long_url = http.get("/api/v1/subscriptions", params={"symbol": "A" * 9000})
        big_header = http.get("/health", headers={"X-Filler": "b" * 9000})
    answers = [(long_url.status_code, long_url.headers["content-type"], long_url.json()),
               (big_header.status_code, big_header.headers["content-type"], big_header.json())]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    answers.append((int(head.split()[1]), "application/json" if b"application/json" in head else head.decode(),
                    json.loads(body)))
    assert [(status, ctype, err["error"]["code"]) for status, ctype, err in answers] == [
        (414, "application/json", "uri_too_long"), (431, "application/json", "header_fields_too_large"),
        (400, "application/json", "bad_request")]
    assert all(set(err["error"]) == {"code", "message", "details"} and err["error"]["message"]
               for _s, _c, err in answers)


@pytest.mark.timeout(240)
def test_clients_that_stop_mid_request_do_not_freeze_the_api(served_api):
    """A client that sends part of a request and goes quiet holds a pool thread only until
    the socket timeout (5 s): with more of them than the workers have threads, /health is
    late but answered."""
    _proc, base, _log = served_api
    port = int(base.rsplit(":", 1)[1])
    stalled = []
    try:
        for _ in range(9):                   # more than the 2 x 4 threads
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")      # the rest never comes
            stalled.append(sock)
        # Each stalled connection costs a pool thread 5 s; with 9 on one worker, /health may
        # wait 15 s or more. Without the timeout no call was ever answered.
        assert httpx.get(f"{base}/health", timeout=90).status_code == 200

        released: set[int] = set()

        def all_released() -> bool:        # the server closed every stalled connection
            for i, sock in enumerate(stalled):
                if i in released:
                    continue
                sock.setblocking(False)
                try:
                    if sock.recv(1) == b"":
                        released.add(i)
                except BlockingIOError:
                    pass
                except OSError:                 # reset: closed as well
                    released.add(i)
            return len(released) == len(stalled)

        wait_for(all_released, timeout=90, message="every stalled connection closed by the API")
        with httpx.Client(base_url=base, timeout=5) as http:
            assert all(http.get("/health").status_code == 200 for _ in range(5))
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.timeout(90)
def test_clients_keeping_their_socket_after_connection_close_do_not_stall_the_api(served_api):
    """After an answer that ends the connection gunicorn lingers (reads until the client
    closes, at most 2 s) so the client is not reset before reading it. gunicorn did that in
    each worker's main loop: 10 clients that read their answer and keep the socket open
    stalled /health for 4 s. The linger now runs in a thread of its own (api/closer.py):
    same rule, the answer complete and followed by the server's FIN, the socket closed at
    the deadline, nothing waiting behind it."""
    import psutil

    proc, base, _log = served_api
    port = int(base.rsplit(":", 1)[1])
    held = []
    try:
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            held.append(sock)
        for sock in held:                        # whole answer, then the server's FIN
            sock.settimeout(10)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"status":"ok"}\n'), answer[-200:]
        for _ in range(20):                      # new connections: both workers
            started = time.monotonic()
            assert httpx.get(f"{base}/health", timeout=30).status_code == 200
            assert time.monotonic() - started < 1.0, "a request waited behind a lingering close"
        ports = {sock.getsockname()[1] for sock in held}

        def server_side_closed() -> bool:        # at the 2 s deadline, not leaked
            workers = psutil.Process(proc.pid).children()
            return not any(conn.raddr and conn.raddr.port in ports
                           for worker in workers for conn in worker.net_connections(kind="tcp"))

        wait_for(server_side_closed, timeout=15, message="the lingering sockets closed by the workers")
    finally:
        for sock in held:
            sock.close()
