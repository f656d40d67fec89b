"""REST latency through gunicorn: p50/p95/p99 for GET and POST at 50 concurrent clients.

Starts ``python -m api`` on a free port (the project's gunicorn config, the default log
level) against a throwaway PostgreSQL database (all migrations applied, dropped
afterwards) with a fake ingest answering control requests on a real ZeroMQ ROUTER (and
marking added subscriptions active, as ingest and the persister do after Bybit's ack), then
drives it with 50 keep-alive connections, closed loop: each client sends its next request
when the last one is answered. Target: p95 < 20 ms.

The load generator shares the 2 cores with the server, so it should be lean: by default it
is wrk (Debian's package, installed with apt-get when missing and running as root; one
thread, 50 connections, a Lua script making each request), otherwise a minimal asyncio
HTTP/1.1 client in this file (``--client python``, also used for ``--rate``). The bench
prints which one it used, and per scenario the CPU each side spent per request (gunicorn
master and workers, PostgreSQL backends of the bench database, the fake ingest, the load
generator), read from /proc before and after.

With ``--capacity`` it then runs the same 50 clients with think time (each waits a random
pause between an answer and its next request) at rising rates, and prints the highest rate at
which p95 stays under 20 ms per scenario. The closed loop is the saturated end of that curve:
there, latency is the number of clients times the CPU a request costs, shared by two cores.

    .venv/bin/python bench/api_bench.py [--clients 50] [--requests 3000] [--client wrk|python]
                                         [--rate 0] [--only post] [--repeat 1] [--gunicorn-args ...]
                                         [--capacity [--capacity-seconds 4]]

``--rate`` paces the whole client pool to that many requests per second (0: as fast as
the clients can go, each sending its next request when the last one is answered).
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson
import psutil
import psycopg2
import zmq

from common.addresses import ingest_control
from tests.support.stores import throwaway_database

ROOT = Path(__file__).resolve().parent.parent


def _fake_ingest(address: str, stop, database_url: str) -> None:
    """Answers every control request "ok", as ingest does, and marks each added subscription
    active within about 50 ms, as ingest and the persister do once Bybit acknowledges it: later
    requesters then join an active subscription, as in a running gateway."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    db = psycopg2.connect(database_url)
    db.autocommit = True
    added: list[str] = []
    flush_at = None
    while not stop.is_set():
        if sock.poll(50):
            ident, payload = sock.recv_multipart()
            request = orjson.loads(payload)
            sock.send_multipart([ident, orjson.dumps({"id": request["id"], "ok": True})])
            if request.get("op") == "add":
                added.append(request["subscription"]["id"])
                flush_at = flush_at or time.monotonic() + 0.05
            if flush_at is None or time.monotonic() < flush_at:
                continue
        if added:
            flush_at = None
            with db.cursor() as cur:
                cur.execute("UPDATE subscriptions SET status = 'active', status_at = now() "
                            "WHERE id = ANY(%s::uuid[]) AND status = 'pending'", (added,))
            added.clear()
    db.close()
    sock.close(linger=0)
    ctx.term()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Conn:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: the load generator shares
    the 2 cores with the server, and httpx's per-request cost (~1-2 ms of CPU) would be
    measured as server latency. Reconnects (and retries once) when gunicorn closes a
    kept-alive connection, e.g. a worker recycled by max_requests."""

    def __init__(self, host: str, port: int):
        self.host, self.port, self.reader, self.writer = host, port, None, None
        self.reconnects = 0

    async def _open(self):
        if self.writer is not None:
            self.writer.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes | None) -> int:
        for attempt in (0, 1):
            if self.writer is None:
                await self._open()
            try:
                return await self._once(method, path, body)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.writer, self.reconnects = None, self.reconnects + 1
                if attempt:
                    raise
        raise AssertionError("not reached")

    async def _once(self, method: str, path: str, body: bytes | None) -> int:
        payload = body or b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(payload)}\r\n"
                + ("Content-Type: application/json\r\n" if body is not None else "") + "\r\n")
        self.writer.write(head.encode() + payload)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("closed before the status line")
        status, length, close = int(status_line.split()[1]), 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
        await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return status


async def _drive(base: str, clients: int, total: int, rate: float, make_request) -> tuple[list[float], dict]:
    host, port = base.split("//")[1].split(":")
    latencies: list[float] = []
    codes: dict = {}
    issued = 0
    start = time.perf_counter()
    conns = [_Conn(host, int(port)) for _ in range(clients)]

    async def worker(conn: _Conn):
        nonlocal issued
        while issued < total:
            n = issued
            issued += 1
            if rate:
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            method, url, body = make_request(n)
            t0 = time.perf_counter()
            status = await conn.request(method, url, None if body is None else orjson.dumps(body))
            latencies.append(time.perf_counter() - t0)
            codes[status] = codes.get(status, 0) + 1

    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        if c.writer is not None:
            c.writer.close()
    codes["elapsed"] = time.perf_counter() - start
    reconnects = sum(c.reconnects for c in conns)
    if reconnects:
        codes["reconnects"] = reconnects
    return latencies, codes


def _pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(p * 10) - 1] * 1000


# ----- wrk ------------------------------------------------------------------------------

# One wrk thread, one Lua state: ``request()`` builds each request (the scenario's path
# and body, numbered like the python client's), ``response()`` counts status codes and
# server-side closes and stops the thread after ``total`` answers (and says so on stderr:
# wrk's main thread sleeps for the whole -d unless interrupted, so the bench then sends
# it SIGINT); ``done()`` prints one JSON line with wrk's histogram (microseconds).
_WRK_LUA = r"""
local kind, total, ids, syms = "%(kind)s", %(total)d, {%(ids)s}, {%(syms)s}
local n, answered = 0, 0
codes, closes = {}, 0              -- globals: done() reads them with thread:get()
local hdr_json = {["Content-Type"] = "application/json"}
local threads = {}
math.randomseed(7)
function setup(thread) table.insert(threads, thread) end
function request()
  n = n + 1
  if kind == "health" then return wrk.format("GET", "/health")
  elseif kind == "list" then return wrk.format("GET", "/api/v1/subscriptions?limit=20&offset=" .. (n %% 80))
  elseif kind == "one" then return wrk.format("GET", "/api/v1/subscriptions/" .. ids[(n %% #ids) + 1])
  else
    local body = '{"channel":"trades","category":"linear","symbol":"' .. syms[math.random(#syms)] ..
                 '","requested_by":"svc-' .. (n %% 5) .. '"}'
    return wrk.format("POST", "/api/v1/subscriptions", hdr_json, body)
  end
end
%(delay)s
function response(status, headers, body)
  answered = answered + 1
  codes[status] = (codes[status] or 0) + 1
  if headers["Connection"] == "close" or headers["connection"] == "close" then closes = closes + 1 end
  if answered == total then
    wrk.thread:stop()
    io.stderr:write("STOPPED\n")
    io.stderr:flush()
  end
end
function done(summary, latency, requests)
  local parts, nclose = {}, 0
  for _, t in ipairs(threads) do
    for code, count in pairs(t:get("codes")) do parts[#parts + 1] = '"' .. code .. '":' .. count end
    nclose = nclose + t:get("closes")
  end
  io.write(string.format('WRK {"requests":%%d,"duration_us":%%d,"p50":%%d,"p95":%%d,"p99":%%d,"max":%%d,' ..
    '"errors":{"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d},"closes":%%d,"codes":{%%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    nclose, table.concat(parts, ",")))
end
"""


def _wrk_available(install: bool) -> str | None:
    """wrk's path; installed from Debian's package when missing (root only, idempotent)."""
    path = shutil.which("wrk")
    if path or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    print("installing wrk (apt-get install -y wrk) ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk")


# Think time: each connection waits a random time (exponential, mean ``think_ms``) between
# an answer and its next request, as 50 independent clients would. wrk counts latency from
# the moment a request is written, so the wait is not in the figures.
_WRK_DELAY = r"""
local think_ms = %f
function delay() return math.floor(-math.log(1 - math.random()) * think_ms + 0.5) end
"""


def _drive_wrk(wrk: str, base: str, clients: int, total: int, kind: str, ids: list[str], symbols: list[str],
               run_dir: Path, think_ms: float = 0.0) -> dict:
    script = run_dir / f"{kind}.lua"
    quote = lambda items: ",".join(f'"{i}"' for i in items)   # noqa: E731
    script.write_text(_WRK_LUA % {"kind": kind, "total": total, "ids": quote(ids), "syms": quote(symbols),
                                  "delay": _WRK_DELAY % think_ms if think_ms > 0 else ""})
    # -d is only a safety bound: the script stops the thread after ``total`` answers.
    proc = subprocess.Popen([wrk, "-t1", f"-c{clients}", "-d120s", "--timeout", "10s", "-s", str(script), base],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.strip() == "STOPPED":
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=60)
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRK ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {stdout[-2000:]} {stderr[-2000:]}")
    return orjson.loads(line[4:])


# ----- CPU accounting -------------------------------------------------------------------

def _cpu(proc: psutil.Process, with_children: bool = True) -> float:
    """user+system seconds of ``proc``, its live descendants and its waited-for children."""
    try:
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        if with_children:
            for child in proc.children(recursive=True):
                try:
                    c = child.cpu_times()
                    total += c.user + c.system
                except psutil.NoSuchProcess:
                    pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


class _Backends:
    """CPU of the PostgreSQL backends connected to the bench database (by pid)."""

    def __init__(self, url: str):
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        self.dbname = self.conn.info.dbname

    def snapshot(self) -> dict[int, float]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                        (self.dbname,))
            pids = [r[0] for r in cur.fetchall()]
        out = {}
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                out[pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return out

    @staticmethod
    def spent(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(v - before.get(pid, 0.0) for pid, v in after.items())


class _Sampler(threading.Thread):
    """During a scenario, every 0.5 s: the CPU of each PostgreSQL backend (so one that
    closes mid-run still counts up to its last sample) and, once every client is connected,
    how the connections are split over the gunicorn workers (a closed-loop client's latency
    grows with the number of connections its worker serves)."""

    def __init__(self, backends: _Backends, server: psutil.Process, port: int, clients: int):
        super().__init__(daemon=True)
        self.backends, self.server, self.port, self.clients = backends, server, port, clients
        self.seen: dict[int, float] = {}
        self.split: list[int] | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            for pid, cpu in self.backends.snapshot().items():
                self.seen[pid] = max(cpu, self.seen.get(pid, 0.0))
            if self.split is None:
                counts = []
                for worker in self.server.children():
                    try:
                        counts.append(sum(1 for c in worker.net_connections(kind="tcp")
                                          if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.port))
                    except psutil.Error:
                        pass
                if sum(counts) >= self.clients:
                    self.split = sorted(counts, reverse=True)

    def finish(self) -> dict[int, float]:
        self.done.set()
        self.join()
        after = self.backends.snapshot()
        return {pid: max(after.get(pid, 0.0), self.seen.get(pid, 0.0)) for pid in after.keys() | self.seen.keys()}


# ----- capacity: the same 50 clients, each pausing between requests --------------------

CAPACITY_RATES = (250, 500, 1000, 1500, 2000, 2500, 3000, 4000)
TARGET_P95_MS = 20.0


def _capacity(args, drive, only: set[str]) -> None:
    """For each scenario, step the rate the 50 clients offer (each waits a random think time
    of mean clients/rate between an answer and its next request) until p95 reaches the target
    or the API no longer keeps up (answered rate under 90% of the offered one). Prints the
    highest answered rate with p95 under the target: the load at which the target holds on
    this machine, the closed-loop run above being the saturated end of the same curve."""
    print(f"\ncapacity: {args.clients} clients with think time (exponential, mean clients/rate), "
          f"about {args.capacity_seconds:.0f} s per step; p95 target < {TARGET_P95_MS:.0f} ms")
    print(f"{'scenario':36} {'offered':>7} {'req/s':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}")
    summary = []
    for label, kind in SCENARIOS:
        if kind == "health" or (only and kind not in only):
            continue
        best, latency_ms = None, 0.0
        for rate in CAPACITY_RATES:
            # A client's cycle is its think time plus the answer's latency (the last step's p50).
            think_ms = max(0.0, args.clients / rate * 1000 - latency_ms)
            res, _gen = drive(kind, max(500, int(rate * args.capacity_seconds)), think_ms)
            answered = res["requests"] / (res["duration_us"] / 1e6)
            p95 = res["p95"] / 1000
            print(f"{label:36} {rate:7d} {answered:6.0f} {res['p50'] / 1000:7.2f} {p95:7.2f} "
                  f"{res['p99'] / 1000:7.2f}", flush=True)
            if p95 >= TARGET_P95_MS or answered < 0.9 * rate:
                break
            best, latency_ms = answered, res["p50"] / 1000
        summary.append(f"{kind} {best:.0f}" if best else f"{kind} below {CAPACITY_RATES[0]}")
    print(f"highest rate with p95 < {TARGET_P95_MS:.0f} ms at {args.clients} clients (req/s): " + ", ".join(summary))


# ----- the run --------------------------------------------------------------------------

SCENARIOS = (("GET /health", "health"), ("GET /api/v1/subscriptions?limit=20", "list"),
             ("GET /api/v1/subscriptions/{id}", "one"), ("POST /api/v1/subscriptions", "post"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=3000, help="per scenario")
    ap.add_argument("--rate", type=float, default=0.0, help="requests/s for the whole pool (python client); "
                    "0 = closed loop")
    ap.add_argument("--client", choices=("wrk", "python"), default=None,
                    help="load generator (default: wrk when available or installable, else python)")
    ap.add_argument("--only", default="", help="comma-separated scenario kinds: health,list,one,post")
    ap.add_argument("--repeat", type=int, default=1, help="run every scenario this many times")
    ap.add_argument("--capacity", action="store_true",
                    help="then step the offered rate (clients with think time) to find where p95 reaches 20 ms")
    ap.add_argument("--capacity-seconds", type=float, default=4.0, help="length of each capacity step")
    ap.add_argument("--log-level", default="info", help="GW_LOG_LEVEL of the API (default: info, as deployed)")
    ap.add_argument("--gunicorn-args", default="", help="GUNICORN_CMD_ARGS for experiments, e.g. '--threads 8' "
                    "(default: the project's api/gunicorn_conf.py alone)")
    args = ap.parse_args()
    # run_all.py stops an overrunning bench with SIGTERM: unwind, so the database is dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with throwaway_database() as url:     # every migration applied; dropped at the end
        return _run(args, url)


def _run(args, url: str) -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="wsgwb-", dir="/tmp"))
    stop = multiprocessing.Event()
    proc = ingest = None
    wrk = None
    if args.client != "python" and not args.rate:
        wrk = _wrk_available(install=True)
        if wrk is None and args.client == "wrk":
            raise SystemExit("wrk is not installed and could not be installed")
    try:
        # Its own process, so its replies do not wait on the load generator's GIL.
        ingest = multiprocessing.Process(target=_fake_ingest, args=(ingest_control(run_dir), stop, url),
                                         daemon=True)
        ingest.start()
        port = _free_port()
        (run_dir / "metrics").mkdir()
        env = {"PATH": os.environ.get("PATH", ""), "GW_ENV_FILE": "", "DATABASE_URL": url, "GW_RUN_DIR": str(run_dir),
               "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"), "API_BIND": f"127.0.0.1:{port}",
               "GW_LOG_LEVEL": args.log_level}
        if args.gunicorn_args:
            env["GUNICORN_CMD_ARGS"] = args.gunicorn_args
        # The API's log goes to a file, as under supervisord (one JSON line per request at info).
        log_file = open(run_dir / "api.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the API did not start")
                time.sleep(0.1)   # a start-up poll in a script, not a test

        # Seed 100 subscriptions so GETs read real rows.
        ids = []
        with httpx.Client(base_url=base) as http:
            for i in range(100):
                r = http.post("/api/v1/subscriptions", json={"channel": "tickers", "category": "linear",
                                                             "symbol": f"S{i:03d}USDT"})
                ids.append(r.json()["id"])
        symbols = [f"P{i:03d}USDT" for i in range(300)]
        makers = {
            "health": lambda n: ("GET", "/health", None),
            "list": lambda n: ("GET", f"/api/v1/subscriptions?limit=20&offset={n % 80}", None),
            "one": lambda n: ("GET", f"/api/v1/subscriptions/{ids[n % len(ids)]}", None),
            "post": lambda n: ("POST", "/api/v1/subscriptions", {
                "channel": "trades", "category": "linear", "symbol": random.choice(symbols),
                "requested_by": f"svc-{n % 5}"}),
        }

        def drive(kind: str, total: int, think_ms: float = 0.0) -> tuple[dict, float]:
            """One scenario: its figures and the generator's CPU seconds."""
            if wrk:
                before = os.times()
                res = _drive_wrk(wrk, base, args.clients, total, kind, ids, symbols, run_dir, think_ms)
                after = os.times()
                gen = (after.children_user - before.children_user) + (after.children_system - before.children_system)
                return res, gen
            me = psutil.Process()
            t0 = me.cpu_times()
            lat, codes = asyncio.run(_drive(base, args.clients, total, args.rate, makers[kind]))
            t1 = me.cpu_times()
            elapsed = codes.pop("elapsed")
            closes = codes.pop("reconnects", 0)
            res = {"requests": len(lat), "duration_us": elapsed * 1e6, "p50": _pct(lat, 50) * 1000,
                   "p95": _pct(lat, 95) * 1000, "p99": _pct(lat, 99) * 1000, "max": max(lat) * 1e6,
                   "codes": codes, "closes": closes, "errors": {}}
            return res, (t1.user - t0.user) + (t1.system - t0.system)

        # Warm-up, not reported: both workers open their pools and touch every path once.
        for kind in ("health", "list", "one"):
            drive(kind, 500)

        server = psutil.Process(proc.pid)

        def workers_rss() -> str:
            return ", ".join(f"{c.memory_info().rss / 2**20:.0f}" for c in server.children(recursive=True))
        rss0 = workers_rss()
        backends = _Backends(url)
        ingest_p = psutil.Process(ingest.pid)
        only = {k.strip() for k in args.only.split(",") if k.strip()}
        mode = f"paced at {args.rate:.0f} req/s" if args.rate else "closed loop"
        gen_name = (f"wrk ({wrk}, 1 thread, {args.clients} connections, Lua request/response)" if wrk
                    else "python asyncio HTTP/1.1 client (bench/api_bench.py)")
        load0 = os.getloadavg()
        print(f"\n{args.clients} concurrent clients, {args.requests} requests per scenario, {mode}, "
              f"API log level {args.log_level}, {os.cpu_count()} CPUs; load generator: {gen_name}"
              + (f"; GUNICORN_CMD_ARGS={args.gunicorn_args!r}" if args.gunicorn_args else ""))
        print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}\n")
        print(f"{'scenario':36} {'req/s':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}   "
              f"{'CPU us/req: api':>15} {'pg':>5} {'ingest':>6} {'client':>6}  codes")
        worst_p95 = 0.0
        for _ in range(args.repeat):
            for label, kind in SCENARIOS:
                if only and kind not in only:
                    continue
                s0, b0, i0 = _cpu(server), backends.snapshot(), _cpu(ingest_p, with_children=False)
                sampler = _Sampler(backends, server, port, args.clients)
                sampler.start()
                res, gen_cpu = drive(kind, args.requests)
                b1 = sampler.finish()
                s1, i1 = _cpu(server), _cpu(ingest_p, with_children=False)
                n = res["requests"] or 1
                per = lambda sec: sec / n * 1e6   # noqa: E731
                p95 = res["p95"] / 1000
                if kind != "health":
                    worst_p95 = max(worst_p95, p95)
                codes = dict(res["codes"])
                if res["closes"]:
                    codes["closed by server"] = res["closes"]
                errors = {k: v for k, v in res.get("errors", {}).items() if v}
                if errors:
                    codes["errors"] = errors
                if sampler.split:
                    codes["connections per worker"] = "/".join(map(str, sampler.split))
                print(f"{label:36} {n / (res['duration_us'] / 1e6):6.0f} {res['p50'] / 1000:7.2f} {p95:7.2f} "
                      f"{res['p99'] / 1000:7.2f} {res['max'] / 1000:7.2f}   {per(s1 - s0):15.0f} "
                      f"{per(_Backends.spent(b0, b1)):5.0f} {per(i1 - i0):6.0f} {per(gen_cpu):6.0f}  {codes}",
                      flush=True)
        load1 = os.getloadavg()
        print(f"\nload average at the end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
        print(f"gunicorn workers RSS MB after the warm-up: {rss0}; at the end: {workers_rss()}")
        print(f"worst p95 over the API scenarios: {worst_p95:.2f} ms (target < 20 ms): "
              f"{'MET' if worst_p95 < 20 else 'NOT MET'}")
        if args.capacity and wrk:
            _capacity(args, drive, only)
        elif args.capacity:
            print("\ncapacity: needs wrk (think time per connection); not run")
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        stop.set()
        if ingest is not None:
            ingest.join(timeout=5)
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
