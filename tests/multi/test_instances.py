"""Three gateway instances (whole supervisord stacks) sharing one database, one vhost and one
simulator: 60 public topics over several categories and the private stream are shared out by
lease; one instance killed (kill -9 of every process) is taken over within 15 s and announced;
the private stream's owner stopped (SIGSTOP) past its lease publishes nothing for it once the
lease expired; the account ledger equals the simulator's truth throughout.

The tests run in order on one cluster (starting three stacks takes a while on two cores)."""
from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from datetime import datetime

import psutil
import pytest

from ingest.leases import PRIVATE_UNIT, unit_of
from tests.multi.cluster import Consumer, Instance, Simulator, leases, owners
from tests.support import wait_for
from tests.support.ledger import ACCOUNT_CLASSES
from tests.support.stores import AMQP_BASE, throwaway_database, throwaway_vhost

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
IDS = ("gw-a", "gw-b", "gw-c")
TAKEOVER_S = 15.0


def market_requests() -> list[dict]:
    reqs = [{"channel": "trades", "category": "linear", "symbol": f"T{i}USDT"} for i in range(20)]
    reqs += [{"channel": "trades", "category": "spot", "symbol": f"S{i}USDT"} for i in range(15)]
    reqs += [{"channel": "trades", "category": "inverse", "symbol": f"I{i}USD"} for i in range(10)]
    reqs += [{"channel": "tickers", "category": "linear", "symbol": f"K{i}USDT"} for i in range(10)]
    reqs += [{"channel": "orderbook", "category": "linear", "symbol": f"B{i}USDT", "depth": 1} for i in range(5)]
    return reqs


PRIVATE = [{"channel": c} for c in ("order", "execution", "position", "wallet")]


class Cluster:
    def __init__(self, sim, pg_url, amqp_url):
        self.sim, self.pg_url, self.amqp_url = sim, pg_url, amqp_url
        self.instances: dict[str, Instance] = {}
        self.dead: set[str] = set()
        self.topics: list[str] = []          # "endpoint:topic" of the 60 public topics

    def start(self, instance_id: str, **env) -> Instance:
        # Links are judged dead after 60 s and a stalled program restarted after 120 s, so a
        # 30 s SIGSTOP of ingest is survived by its sockets: what Bybit sent meanwhile is still
        # there to be read when it resumes (the hazard fencing is for).
        env = {"GW_PING_INTERVAL_S": "10", "GW_DEAD_AFTER_S": "60", "GW_STALL_AFTER_S": "120", **env}
        gw = Instance(instance_id, self.pg_url, self.amqp_url, self.sim, **env)
        self.instances[instance_id] = gw
        return gw.start()

    def live(self) -> list[Instance]:
        return [gw for i, gw in self.instances.items() if i not in self.dead]

    def any(self) -> Instance:
        return self.live()[0]

    def unit(self, key: str) -> str:
        return unit_of(key.split(":", 1)[0], key, 16)

    def sim_holders(self) -> dict[str, int]:
        """How many simulator connections hold each topic (``endpoint:topic``)."""
        out = collections.Counter()
        for c in self.sim.call("GET", "/__sim/state")["connections"]:
            for t in c["topics"]:
                out[f"{c['endpoint']}:{t}"] += 1
        return out


@pytest.fixture(scope="module")
def cluster():
    sim = Simulator()
    with throwaway_database() as pg_url, throwaway_vhost() as vhost:
        c = Cluster(sim, pg_url, f"{AMQP_BASE}/{vhost}")
        c.consumer = Consumer(c.amqp_url)
        try:
            for i in IDS:
                c.start(i)
            yield c
        finally:
            c.consumer.close()
            for gw in c.instances.values():
                gw.stop()
            sim.close()


def test_three_instances_share_the_market_and_each_topic_has_one_publisher(cluster):
    gws = cluster.live()
    for n, req in enumerate(market_requests()):
        resp = gws[n % 3].api("POST", "/api/v1/subscriptions", json={**req, "requested_by": "multi"})
        assert resp.status_code in (200, 201), resp.text
        cluster.topics.append(f"{req['category']}:{resp.json()['topic']}")
    for req in PRIVATE:
        resp = gws[1].api("POST", "/api/v1/subscriptions", json={**req, "requested_by": "multi"})
        assert resp.status_code in (200, 201), resp.text
    gw = cluster.any()

    def shared_out():
        own = owners(gw)
        per = collections.Counter(o for u, o in own.items() if u != PRIVATE_UNIT)
        return (all(own.values()) and set(per) == set(IDS) and max(per.values()) <= 6
                and gw.query("SELECT count(*) AS n FROM subscriptions WHERE status = 'active'")[0]["n"] == 64)
    wait_for(shared_out, 90, interval=0.5, message=f"16 shards over 3 instances, 64 topics active ({owners(gw)})")
    holders = wait_for(lambda: (h := cluster.sim_holders()) and all(h.get(t) == 1 for t in cluster.topics) and h,
                       30, interval=0.5, message="each topic held by one connection at the simulator")
    assert sum(n for k, n in holders.items() if k.startswith("private:")) == 4

    t0 = time.time()
    wait_for(lambda: len(cluster.consumer.market_by_topic(t0)) == 60, 30, interval=0.5,
             message="events of all 60 topics")
    time.sleep(3)    # a window of events to judge (not a wait for a condition)
    by_topic = cluster.consumer.market_by_topic(t0)
    own = owners(gw)
    publishers = {t: {(e["instance"], e["epoch"]) for e in evs} for t, evs in by_topic.items()}
    assert all(len(p) == 1 for p in publishers.values()), {t: p for t, p in publishers.items() if len(p) != 1}
    wrong = {t: p for t, p in publishers.items() if next(iter(p))[0] != own[cluster.unit(t)]}
    assert not wrong, f"published by another instance than the unit's owner: {wrong}"
    epochs = {u: r["epoch"] for u, r in leases(gw).items()}
    assert all(next(iter(p))[1] == epochs[cluster.unit(t)] for t, p in publishers.items())
    share = collections.Counter(next(iter(p))[0] for p in publishers.values())
    assert set(share) == set(IDS), share
    account = [e for e in cluster.consumer.snapshot(t0) if e["cls"] in ACCOUNT_CLASSES]
    assert account and {e["instance"] for e in account} == {own[PRIVATE_UNIT]}
    print(f"topics per instance {dict(share)}; shards {collections.Counter(own.values())}; "
          f"private on {own[PRIVATE_UNIT]}")


def test_status_on_any_instance_shows_every_instance_and_what_it_owns(cluster):
    own = owners(cluster.any())
    for gw in cluster.live():
        report = gw.api("GET", "/api/v1/status").json()
        listed = {i["instance_id"]: i for i in report["instances"]}
        assert set(listed) == set(IDS) and all(i["state"] == "live" for i in listed.values())
        for iid, inst in listed.items():
            assert {o["unit"] for o in inst["owns"]} == {u for u, o in own.items() if o == iid}
            assert all(o["since"] and o["epoch"] >= 1 for o in inst["owns"])
        assert report["unowned_units"] == []


def test_a_change_through_any_api_reaches_the_owner_within_a_second(cluster):
    """Through the API of an instance that does not own the topic's shard: the owner hears it
    from PostgreSQL's NOTIFY, not from the 30 s converge."""
    own = owners(cluster.any())
    seen = []
    for i in range(4):
        symbol = f"N{i}USDT"
        key = f"linear:publicTrade.{symbol}"
        other = next(gw for gw in cluster.live() if gw.instance_id != own[cluster.unit(key)])
        t0 = time.monotonic()
        resp = other.api("POST", "/api/v1/subscriptions",
                         json={"channel": "trades", "category": "linear", "symbol": symbol, "requested_by": "multi"})
        assert resp.status_code == 201, resp.text
        wait_for(lambda: cluster.sim_holders().get(key) == 1, 10, interval=0.05, message=f"{key} subscribed")
        seen.append(time.monotonic() - t0)
        resp = other.api("DELETE", f"/api/v1/subscriptions/{resp.json()['id']}", params={"requested_by": "multi"})
        assert resp.status_code in (200, 204)
        wait_for(lambda: key not in cluster.sim_holders(), 10, interval=0.05, message=f"{key} unsubscribed")
    print(f"POST on a non-owner -> subscribed by the owner: {[round(s, 2) for s in seen]} s")
    assert max(seen) < 5.0     # the fallback converge runs every 30 s


def test_a_second_stack_with_a_live_instance_id_refuses_to_start(cluster, tmp_path):
    gw = cluster.any()
    env = {**gw.env, "GW_RUN_DIR": str(tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    before = owners(gw)
    out = subprocess.run([sys.executable, "-m", "ingest"], env=env, capture_output=True, text=True, timeout=60,
                         cwd=str(gw.env["GW_HOME"]))
    assert out.returncode == 2, out.stdout[-2000:]
    assert "instance_conflict" in out.stdout and f"GW_INSTANCE_ID={gw.instance_id!r} is in use" in out.stdout
    assert owners(gw) == before


def _recovered(cluster, victim: str, lost_topics: list[str], since: float) -> bool:
    by_topic = cluster.consumer.market_by_topic(since)
    return all(any(e["instance"] not in (None, victim) for e in by_topic.get(t, [])) for t in lost_topics)


def _ledger_equal(cluster) -> dict:
    cluster.sim.call("POST", "/__sim/rate", {"account_rate": 0})
    truth = cluster.sim.call("GET", "/__sim/account")
    verdict = {}

    def equal():
        with cluster.consumer.lock:
            verdict.update(cluster.consumer.ledger.check(truth))
        return not verdict["problems"]
    try:
        wait_for(equal, 60, interval=1.0, message=f"ledger equal to the truth ({verdict})")
    finally:
        cluster.sim.call("POST", "/__sim/rate", {"account_rate": 4})
    assert len(truth["executions"]) > 20
    return verdict


def test_kill9_of_an_instance_is_taken_over_within_15s_and_announced(cluster):
    gw = cluster.any()
    own = owners(gw)
    victim = own[PRIVATE_UNIT]
    units = sorted(u for u, o in own.items() if o == victim)
    lost_topics = [t for t in cluster.topics if own[cluster.unit(t)] == victim]
    assert lost_topics
    killed = cluster.instances[victim]
    t0 = time.time()
    killed.signal_all(signal.SIGKILL)
    cluster.dead.add(victim)
    gw = cluster.any()
    wait_for(lambda: _recovered(cluster, victim, lost_topics, t0), 40, interval=0.2,
             message=f"{len(lost_topics)} topics of {victim} flowing from the others")
    took = time.time() - t0
    wait_for(lambda: all(o not in (None, victim) for o in owners(gw).values()), 20, interval=0.5,
             message="every unit owned by a live instance")
    announced = wait_for(lambda: (a := [e["data"] for e in cluster.consumer.system("owner_changed", t0)
                                        if e["data"]["old_owner"] == victim]) and len(a) >= len(units) and a,
                         20, interval=0.5, message="owner_changed for each of its units")
    assert {a["unit"] for a in announced} == set(units)
    assert set().union(*(a["topics"] for a in announced)) >= set(lost_topics)   # which topics had the gap
    for a in announced:
        assert a["new_owner"] in IDS and a["new_owner"] != victim and a["reason"] == "expired"
        assert 0 < a["gap_s"] < TAKEOVER_S + 5 and a["new_epoch"] == a["old_epoch"] + 1
    print(f"kill -9 of {victim} ({len(units)} units, {len(lost_topics)} topics): flowing again after "
          f"{took:.1f} s; gaps announced {[a['gap_s'] for a in announced]}")
    assert took <= TAKEOVER_S
    verdict = _ledger_equal(cluster)
    print(f"ledger: {verdict['facts']} from {verdict['sources']}, {verdict['duplicate_deliveries']} repeated ids")


def test_a_stopped_private_owner_publishes_nothing_after_its_lease_expired(cluster):
    gw = cluster.any()
    owner = owners(gw)[PRIVATE_UNIT]
    paused = cluster.instances[owner]
    epoch = leases(gw)[PRIVATE_UNIT]["epoch"]
    ingest = psutil.Process(paused.pid("ingest"))
    t0 = time.time()
    ingest.suspend()                                       # SIGSTOP
    try:
        wait_for(lambda: owners(gw)[PRIVATE_UNIT] not in (None, owner), 30, interval=0.5,
                 message="private unit taken over")
        time.sleep(max(0.0, 30 - (time.time() - t0)))     # stopped for 30 s in all
    finally:
        ingest.resume()                                    # SIGCONT
    # after SIGCONT the paused ingest finds its lease gone: it must not publish for it
    wait_for(lambda: not paused.ingest_status()["instance"]["owned"].get(PRIVATE_UNIT), 30, interval=0.5,
             message="the resumed instance no longer claims the private unit")
    time.sleep(5)    # what it might still send would arrive now (a window, not a condition)
    ended = gw.query("SELECT previous_expires_at FROM gateway_lease_history WHERE unit = %s AND previous_owner = %s "
                     "AND previous_epoch = %s", PRIVATE_UNIT, owner, epoch)
    assert len(ended) == 1
    expired_at = ended[0]["previous_expires_at"].timestamp()
    late = [e for e in cluster.consumer.snapshot(t0) if e["cls"] in ACCOUNT_CLASSES and e["instance"] == owner
            and datetime.fromisoformat(e["received_at"].replace("Z", "+00:00")).timestamp() > expired_at]
    assert not late, f"{len(late)} account events from {owner} received after its lease expired: {late[:3]}"
    mine = [e for e in cluster.consumer.snapshot(t0) if e["cls"] in ACCOUNT_CLASSES]
    assert all(e["instance"] and isinstance(e["epoch"], int) for e in mine)
    assert {e["epoch"] for e in mine if e["instance"] == owner} <= {epoch}
    assert paused.pid("ingest") == ingest.pid            # the same process, resumed (not restarted)
    status = paused.ingest_status()
    assert not status["instance"]["owned"].get(PRIVATE_UNIT)
    verdict = _ledger_equal(cluster)
    print(f"SIGSTOP of {owner}'s ingest for 30 s: {len(mine)} account events since, none from it after "
          f"{datetime.fromtimestamp(expired_at).isoformat()} ({status['fenced_frames']} frames fenced on "
          f"resuming); ledger {verdict['facts']}")
