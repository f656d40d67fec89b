"""DELETE and POST of the same topics interleaved by many clients at once, through the real
API (gunicorn, 2 workers) and the real ingest against the simulator: once the requests are
answered, ingest holds exactly what the table wants, at once (not at the next 30 s converge),
and the simulator follows."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.ingest.harness import IngestProcess
from tests.support import free_port, wait_for

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]
TOPICS = [{"channel": "trades", "category": "linear", "symbol": s}
          for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")]
ROUNDS = 40


@pytest.fixture(scope="module")
def sim():
    import bybitsim

    with bybitsim.run_in_thread(port=0, rate=5) as s:
        yield s


@pytest.fixture
def gateway(pg_url, clean_db, short_tmp, sim):
    """ingest and the API (``python -m api``) on one run directory and database."""
    ingest = IngestProcess(short_tmp, sim, pg_url)
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "GW_ENV_FILE": "", "DATABASE_URL": pg_url,
           "GW_RUN_DIR": str(short_tmp), "PROMETHEUS_MULTIPROC_DIR": str(short_tmp / "metrics"),
           "API_BIND": f"127.0.0.1:{port}", "GW_LOG_LEVEL": "info"}
    with open(short_tmp / "api.log", "wb") as log:
        api = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/health", timeout=1).status_code == 200, 20, message="API /health")
        wait_for(lambda: ingest.control("status")["ok"], 15, message="ingest control socket")
        yield base, ingest
    finally:
        api.terminate()
        try:
            api.wait(10)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait(5)
        ingest.close()
        sim.reset()


def table_wants(db) -> set[str]:
    with db.cursor() as cur:
        cur.execute("SELECT endpoint || ':' || topic FROM subscriptions WHERE status IN ('pending', 'active')")
        return {r[0] for r in cur.fetchall()}


def test_interleaved_delete_and_post_leave_ingest_equal_to_the_table(gateway, clean_db, sim):
    """Each round, for every topic at once: its only holder lets go (the row is removed, ingest
    is told remove) while a new requester asks for it (a new row, or a join if first). The
    table always ends wanting every topic; a remove that reached ingest after the add of the
    row that followed it used to leave the topic unsubscribed until the next converge."""
    base, ingest = gateway
    http = httpx.Client(base_url=base, timeout=30)
    holders = {}
    for i, topic in enumerate(TOPICS):
        resp = http.post("/api/v1/subscriptions", json=topic | {"requested_by": f"r0-t{i}"})
        assert resp.status_code == 201, resp.text
        holders[i] = (f"r0-t{i}", resp.json()["id"])
    for round_no in range(1, ROUNDS + 1):
        barrier = threading.Barrier(2 * len(TOPICS))
        results, errors = {}, []

        def release(i, name, sid):
            with httpx.Client(base_url=base, timeout=30) as c:
                barrier.wait()
                resp = c.delete(f"/api/v1/subscriptions/{sid}", params={"requested_by": name})
            if resp.status_code != 200 or resp.json()["ingest"] not in ("accepted", "not_needed"):
                errors.append(resp.text)

        def take(i, name):
            with httpx.Client(base_url=base, timeout=30) as c:
                barrier.wait()
                resp = c.post("/api/v1/subscriptions", json=TOPICS[i] | {"requested_by": name})
            if resp.status_code not in (200, 201) or resp.json()["ingest"] not in ("accepted", "not_needed"):
                errors.append(resp.text)
            else:
                results[i] = (name, resp.json()["id"])

        threads = []
        for i, (name, sid) in holders.items():
            threads.append(threading.Thread(target=release, args=(i, name, sid)))
            threads.append(threading.Thread(target=take, args=(i, f"r{round_no}-t{i}")))
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        holders = results
        # every request is answered: ingest has applied every change it was told of
        wanted = table_wants(clean_db)
        assert wanted == {f"linear:publicTrade.{t['symbol']}" for t in TOPICS}
        held = set(ingest.control("status")["status"]["topics"])
        assert held == wanted, f"round {round_no}: ingest holds {sorted(held)}, the table wants {sorted(wanted)}"
    wait_for(lambda: {f"linear:{t}" for t in sim.state()["subscribed"].get("linear", [])} == wanted, 10,
             message=f"the simulator subscribed to {sorted(wanted)}")
    http.close()
    print(f"stale messages ingest ignored: {ingest.log().count('control_remove_ignored')}")
