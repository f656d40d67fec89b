"""Fault injections against a running gateway, each measured the same way.

A fault returns how it was detected (the system event, log line or status key that shows
it), how long detection and recovery took, and the market data it cost; ``Run.settle``
then pauses the simulator's account and checks that nothing of it is missing from
PostgreSQL or the account queues. Used by ``bench/faults.py``, ``bench/soak.py`` and
``tests/faults/``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

from bench._account import db_missing, queue_missing
from bench._consumer import iso_to_ns
from bench._gw import BenchGateway, kill_all, lease_owners, pids, status_file
from bench._results import Result
from tests.support import wait_for
from tests.support.ledger import Ledger

KILL_TARGET_S = 10.0        # target: a killed process is back (supervisord) within 5-10 s
TAKEOVER_TARGET_S = 15.0    # target: a dead instance's units taken over within 15 s
RECONNECT_TARGET_S = 30.0   # target: reconnection attempted at least every 30 s
RESUBSCRIBE_TARGET_S = 2.0  # target: every subscription back within 2 s of a drop
RESYNC_TARGET_S = 5.0       # our own bound: a book resynced within 5 s
TICKERS_BACK_S = 5.0        # target: after a publisher restart every ticker flows again within 5 s
OUTAGE_TARGET_S = 30.0      # our own bound: publishing/persisting again within 30 s of the store's return
SETTLE_TIMEOUT_S = 30.0


class Run:
    """A gateway (``tests.support.gateway.Gateway``), a ``ConsumerProcess`` on its vhost, and the
    account rate to restore after each settle."""

    def __init__(self, gw, consumer, account_rate: float = 5.0, cluster=None, outage_s: float = 10.0):
        self.gw, self.consumer, self.account_rate = gw, consumer, account_rate
        self.cluster, self.outage_s = cluster, outage_s

    # -- observations ----------------------------------------------------------------------
    def sim_rate(self, **kw) -> None:
        self.sim_call("POST", "/__sim/rate", kw)

    def sim_call(self, method: str, path: str, body: dict | None = None, tries: int = 5) -> dict:
        """A simulator control call that survives a busy simulator (timeouts are retried)."""
        import httpx

        for attempt in range(tries):
            try:
                return self.gw.sim(method, path, **({"json": body} if body is not None else {})).json()
            except httpx.TransportError:
                if attempt == tries - 1:
                    raise
        raise AssertionError("not reached")

    def drops(self) -> int:
        """Market events dropped so far: publisher (per class) + ingest hand-off."""
        total = 0
        for proc, path in (("publisher", ("dropped",)), ("ingest", ("handoff",))):
            try:
                st = status_file(self.gw, proc)
            except (OSError, ValueError):
                continue
            if proc == "publisher":
                total += sum(st.get("dropped", {}).values())
            else:
                total += sum(sum(d.get("dropped", {}).values()) for d in st.get("handoff", {}).values())
        return total

    def gaps(self) -> int:
        return self.consumer.last_window().get("gaps", 0)

    def event(self, kind: str, since: float, timeout: float, pred=lambda e: True) -> dict:
        """The first system event ``kind`` consumed after ``since`` matching ``pred``."""
        ev = wait_for(lambda: next((e for e in self.consumer.system(kind, since) if pred(e)), None), timeout,
                      interval=0.05, message=f"system event {kind}")
        # "t": when the gateway made the event (its received_at), not when the consumer got it
        ev["t"] = iso_to_ns(ev["received_at"]) / 1e9 if ev.get("received_at") else ev["at"]
        return ev

    def subscribed(self, endpoint: str) -> set[str]:
        return self.gw.sim_subscribed(endpoint)

    def settle(self, res: Result, timeout: float = SETTLE_TIMEOUT_S) -> None:
        """Pause the account, wait until PostgreSQL and the queues hold the simulator's ground truth."""
        self.sim_rate(account_rate=0)
        t0 = time.monotonic()
        truth = self.sim_call("GET", "/__sim/account")

        examples: dict = {}
        verdict: dict = {}

        def missing() -> dict:
            examples.clear()
            db = db_missing(truth, self.gw.query, examples)
            q = queue_missing(truth, self.consumer.account(), examples)
            verdict.clear()
            verdict.update(self.ledger(truth))
            for k, v in verdict["problems"].items():
                examples[f"ledger_{k}"] = v[:3]
            return ({f"db_{k}": v for k, v in db.items() if v} | {f"queue_{k}": v for k, v in q.items() if v}
                    | {f"ledger_{k}": len(v) for k, v in verdict["problems"].items()})

        last = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                last = missing()
            except Exception as exc:   # the database may still be coming back
                last = {"check_error": 1, "why": str(exc)[:80]}
            if not last:
                break
            time.sleep(0.25)   # polling the stores with a deadline
        res.account_missing = last
        res.missing_examples = dict(examples) if last else {}
        res.ledger = {k: verdict.get(k) for k in ("exec_ids", "deliveries", "duplicate_deliveries", "orders", "coins")}
        res.settle_s = round(time.monotonic() - t0, 2)
        self.sim_rate(account_rate=self.account_rate)

    def ledger(self, truth: dict) -> dict:
        """The consumer's ledger (every account and system event it got so far) against ``truth``."""
        ledger = Ledger()
        for line in self.consumer.account():
            ledger.add(line.get("rk", ""), line.get("mid"), line)
        for line in self.consumer.system():
            ledger.add(line.get("rk", ""), line.get("mid"), line)
        return ledger.check(truth)

    def measure(self, name: str, fn) -> Result:
        res = Result(name)
        gaps0, drops0 = self.gaps(), self.drops()
        try:
            fn(res)
        except Exception as exc:   # one failed fault is a row of the table, not the end of the run
            res.error = f"{type(exc).__name__}: {exc}"[:200]
        try:
            self.sim_call("POST", "/__sim/reset", {})
            self.settle(res)
        except Exception as exc:   # a simulator too busy to answer: recorded, the run goes on
            res.error = (res.error + f" settle: {type(exc).__name__}: {exc}")[:300]
            res.account_missing = res.account_missing or {"not_checked": 1}
        res.market_gaps = max(0, self.gaps() - gaps0)
        res.market_dropped = max(0, self.drops() - drops0)
        return res

    # -- faults -------------------------------------------------------------------------------
    def kill9(self, program: str):
        def run(res: Result) -> None:
            old = wait_for(lambda: pids(self.gw).get(program), 30, interval=0.1, message=f"{program} RUNNING")
            t0 = time.time()
            os.kill(old, signal.SIGKILL)
            res.target_s = KILL_TARGET_S
            # a new pid as soon as supervisord spawned it (STARTING): "back" is the role's own readiness
            new = wait_for(lambda: (p := pids(self.gw, ("STARTING", "RUNNING")).get(program)) not in (None, old)
                           and p, 60, interval=0.05, message=f"{program} restarted")
            if program == "ingest":
                want = {"linear": self.expect_linear, "private": self.expect_private}
                wait_for(lambda: all(want[e] <= self.subscribed(e) for e in want), 60, interval=0.05,
                         message="every subscription back")
                res.recovery_what = "every subscription back at the exchange"
            elif program in ("publisher", "persister"):
                key = ("broker", "state", "ready") if program == "publisher" else ("database", "up", True)
                wait_for(lambda: (s := status_file(self.gw, program))["pid"] == new and s[key[0]][key[1]] == key[2],
                         60, interval=0.05, message=f"{program} ready")
                res.recovery_what = "new pid ready (broker ready)" if program == "publisher" else \
                    "new pid ready (database up)"
            else:
                wait_for(lambda: self.gw.api("GET", "/api/v1/status").status_code == 200, 60, interval=0.05,
                         message="API answering")
                res.recovery_what = "API answering /api/v1/status"
            res.recovered_s = round(time.time() - t0, 2)
            ev = self.event("process_crashed", t0, 60, lambda e: e["data"].get("program") == program)
            res.detected_by, res.detect_s = "system.process_crashed (ops eventlistener)", round(ev["t"] - t0, 2)
        return run

    def kill9_tickers(self, topics: list[str]):
        """The publisher killed with -9 while linear tickers stream. The new one holds no full
        ticker to merge deltas onto, so it asks ingest for snapshots: recovered when RabbitMQ has
        confirmed a ticker of every topic again (its status file's ``delivered``; every ticker
        published is complete), counted from the new publisher being ready."""
        def run(res: Result) -> None:
            keys = [f"linear:{t}" for t in topics]
            # the fault before may have restarted it: supervisord says RUNNING after startsecs
            old = wait_for(lambda: pids(self.gw).get("publisher"), 30, interval=0.1, message="publisher RUNNING")
            t0 = time.time()
            os.kill(old, signal.SIGKILL)
            res.target_s = TICKERS_BACK_S
            new = wait_for(lambda: (p := pids(self.gw, ("STARTING", "RUNNING")).get("publisher")) not in (None, old)
                           and p, 60, interval=0.05, message="publisher restarted")
            wait_for(lambda: (s := status_file(self.gw, "publisher"))["pid"] == new and s["broker"]["state"] == "ready",
                     60, interval=0.05, message="publisher ready")
            ready = time.time()

            def delivered() -> dict:
                return status_file(self.gw, "publisher").get("delivered") or {}

            got = wait_for(lambda: (d := delivered()) and all((d.get(k) or 0) > ready for k in keys) and d, 60,
                           interval=0.1, message="every ticker confirmed by RabbitMQ again")
            res.recovered_s = round(max(0.0, max(got[k] for k in keys) - ready), 2)
            res.recovery_what = f"all {len(keys)} linear tickers confirmed again (from the new publisher ready)"
            # asked for by the new publisher, or made by ingest for frames its hand-off dropped meanwhile
            ev = self.event("ticker_resync", t0, 30,
                            lambda e: any(w in str(e["data"].get("reason")) for w in ("publisher", "hand-off")))
            res.detected_by = f"system.ticker_resync ({ev['data'].get('reason')})"
            res.detect_s = round(ev["t"] - t0, 2)
        return run

    def drop(self, endpoint: str):
        def run(res: Result) -> None:
            want = self.expect_private if endpoint == "private" else self.expect_linear
            t0 = time.time()
            self.gw.sim("POST", "/__sim/drop", json={"endpoint": endpoint})
            # recovery first, at the exchange: the system event may queue behind a market backlog
            wait_for(lambda: want <= self.subscribed(endpoint), 60, interval=0.02, message="resubscribed")
            res.recovered_s, res.target_s = round(time.time() - t0, 2), RESUBSCRIBE_TARGET_S
            res.recovery_what = f"all {len(want)} topics subscribed again"
            ev = self.event("connection_lost", t0, 60, lambda e: e["data"].get("endpoint") == endpoint
                            and e["data"].get("lost_at", 0) >= t0 - 0.5)
            res.detected_by = f"system.connection_lost ({ev['data'].get('reason')})"
            res.detect_s = round(ev["data"]["lost_at"] - t0, 2)
            if ev["at"] - ev["data"]["lost_at"] > 5:
                res.detected_by += f", consumed {ev['at'] - ev['data']['lost_at']:.0f} s after it happened"
        return run

    def _lost_then_restored(self, res: Result, endpoint: str, t0: float, detect_timeout: float, clear) -> None:
        lost = self.event("connection_lost", t0, detect_timeout, lambda e: e["data"].get("endpoint") == endpoint
                          and e["data"].get("lost_at", 0) >= t0 - 0.5)
        clear()
        res.detected_by = f"system.connection_lost ({lost['data'].get('reason')})"
        res.detect_s = round(lost["data"]["lost_at"] - t0, 2)
        back = self.event("connection_restored", lost["at"] - 1, 60,
                          lambda e: e["data"].get("endpoint") == endpoint
                          and e["data"].get("lost_at") == lost["data"]["lost_at"])
        want = self.expect_private if endpoint == "private" else self.expect_linear
        wait_for(lambda: want <= self.subscribed(endpoint), 30, interval=0.05, message="resubscribed")
        res.recovered_s = round(back["data"]["restored_at"] - lost["data"]["lost_at"], 2)
        res.target_s, res.recovery_what = RECONNECT_TARGET_S, "lost -> reconnected"

    def no_pong(self, endpoint: str = "linear"):
        def run(res: Result) -> None:
            t0 = time.time()
            self.gw.sim("POST", "/__sim/pong", json={"endpoint": endpoint, "enabled": False})
            self._lost_then_restored(res, endpoint, t0, 60, lambda: self.gw.sim(
                "POST", "/__sim/pong", json={"endpoint": endpoint, "enabled": True}))
        return run

    def stall(self, endpoint: str = "linear"):
        def run(res: Result) -> None:
            t0 = time.time()
            self.gw.sim("POST", "/__sim/stall", json={"endpoint": endpoint, "enabled": True, "current_only": True})
            self._lost_then_restored(res, endpoint, t0, 60, lambda: None)
        return run

    def max_active_time(self):
        def run(res: Result) -> None:
            t0 = time.time()
            self.gw.sim("POST", "/__sim/close_private", json={"after_s": 0.5})
            self._lost_then_restored(res, "private", t0, 30, lambda: self.gw.sim(
                "POST", "/__sim/close_private", json={"after_s": None}))
        return run

    def auth_failure(self):
        def run(res: Result) -> None:
            t0 = time.time()
            self.gw.sim("POST", "/__sim/auth", json={"fail": True})
            self.gw.sim("POST", "/__sim/drop", json={"endpoint": "private"})
            ev = self.event("auth_failed", t0, 30)
            res.detected_by, res.detect_s = f"system.auth_failed ({ev['data'].get('ret_msg')})", round(ev["t"] - t0, 2)
            t1 = time.time()
            self.gw.sim("POST", "/__sim/auth", json={"fail": False})
            self.event("connection_restored", t1 - 0.5, 60, lambda e: e["data"].get("endpoint") == "private")
            wait_for(lambda: self.expect_private <= self.subscribed("private"), 30, interval=0.05,
                     message="private resubscribed")
            res.recovered_s, res.target_s = round(time.time() - t1, 2), RECONNECT_TARGET_S
            res.recovery_what = "auth fixed -> private subscribed"
        return run

    def rejected_topic(self):
        def run(res: Result) -> None:
            topic = "publicTrade.RJCT0USDT"
            self.gw.sim("POST", "/__sim/reject", json={"topic": topic, "endpoint": "linear"})
            t0 = time.time()
            r = self.gw.api("POST", "/api/v1/subscriptions", json={"channel": "trades", "category": "linear",
                                                                  "symbol": "RJCT0USDT", "requested_by": "faults"})
            sid = r.json()["id"]
            row = wait_for(lambda: (s := self.gw.subscription(sid))["status"] == "failed" and s, 30, interval=0.05,
                           message="subscription failed")
            res.detected_by = f"subscriptions.status=failed ({row['last_error']})"
            res.detect_s = round(time.time() - t0, 2)
            res.recovery_what = "other topics unaffected" if self.expect_linear <= self.subscribed("linear") else \
                "OTHER TOPICS LOST"
            if "LOST" in res.recovery_what:
                res.error = "a rejected topic took other subscriptions down"
            self.gw.api("DELETE", f"/api/v1/subscriptions/{sid}", params={"requested_by": "faults"})
        return run

    def args_over_10(self, n: int = 14):
        def run(res: Result) -> None:
            t0 = time.time()
            ids = []
            for i in range(n):
                r = self.gw.api("POST", "/api/v1/subscriptions", json={
                    "channel": "trades", "category": "spot", "symbol": f"AX{i}USDT", "requested_by": "faults"})
                ids.append(r.json()["id"])
            wait_for(lambda: all(self.gw.subscription(i)["status"] == "active" for i in ids), 30, interval=0.1,
                     message=f"{n} spot topics active")
            refused = self.gw.sim_state()["counters"]
            res.detected_by = f"prevented: batches of <=10 (sim counters {refused.get('subscribe_refused', 0)} refused)"
            res.recovered_s, res.target_s = round(time.time() - t0, 2), None
            res.recovery_what = f"{n} spot topics in one burst all active"
            for i in ids:
                self.gw.api("DELETE", f"/api/v1/subscriptions/{i}", params={"requested_by": "faults"})
        return run

    def book(self, hook: str):
        def run(res: Result) -> None:
            topic = self.book_topic
            t0 = time.time()
            self.gw.sim("POST", f"/__sim/{hook}", json={"topic": topic, "endpoint": "linear"})
            ev = self.event("book_resync", t0, 20, lambda e: e["data"].get("topic") == topic)
            res.detected_by = f"system.book_resync ({ev['data'].get('reason')})"
            res.detect_s = round(ev["t"] - t0, 2)
            key = f"linear:{topic}"
            n0 = status_file(self.gw, "ingest")["topics"][key]["frames"]
            wait_for(lambda: status_file(self.gw, "ingest")["topics"][key]["frames"] > n0 + 2
                     and topic in self.subscribed("linear"), 20, interval=0.05, message="book flowing again")
            res.recovered_s, res.target_s = round(time.time() - t0, 2), RESYNC_TARGET_S
            res.recovery_what = "book resubscribed, frames flowing"
        return run

    def rest_10006(self):
        def run(res: Result) -> None:
            self.gw.sim("POST", "/__sim/rest_fault", json={"kind": "rate_limit", "count": 2,
                                                         "path": "/v5/account/wallet-balance", "reset_ms": 500})
            self.gw.sim("POST", "/__sim/rest_fault", json={"kind": "rate_limit", "count": 1,
                                                         "path": "/v5/position/list", "reset_ms": None})
            t0 = time.time()
            self.gw.sim("POST", "/__sim/drop", json={"endpoint": "private"})   # a reconnect reconciles
            ev = self.event("reconciliation_done", t0, 60)
            calls = [c for c in self.gw.sim("GET", "/__sim/rest_log").json()["calls"]
                     if c["retCode"] == 10006 and c["at_ms"] >= t0 * 1000]
            res.detected_by = f"10006 x{len(calls)} retried (ingest status reconciliation.rest)"
            res.recovered_s, res.target_s = round(ev["t"] - t0, 2), RECONNECT_TARGET_S
            res.recovery_what = "reconciliation_done after the rate limit"
            if len(calls) < 3:
                res.error = f"expected 3 rate-limited calls, saw {len(calls)}"
        return run

    def delete_account_queue(self, queue: str = "ws-gateway.executions"):
        """An operator deletes an account queue while fills flow: the publisher declares the
        topology again and publishes what came back unroutable; the ledger must lose no fill."""
        def run(res: Result) -> None:
            import pika

            conn = pika.BlockingConnection(pika.URLParameters(self.gw.amqp_url))
            try:
                # deleted while empty: what RabbitMQ already routed into it would die with it
                wait_for(lambda: conn.channel().queue_declare(queue, passive=True).method.message_count == 0,
                         30, interval=0.05, message=f"{queue} drained by the consumer")
                t0 = time.time()
                conn.channel().queue_delete(queue)
            finally:
                conn.close()
            ev = self.event("topology_restored", t0, 60)
            res.detected_by = f"system.topology_restored ({ev['data'].get('trigger')})"
            res.detect_s = round(ev["t"] - t0, 2)
            res.recovered_s, res.target_s = round(ev["t"] - t0, 2), OUTAGE_TARGET_S
            res.recovery_what = f"{queue} declared again, {ev['data'].get('republished', 0)} returned events republished"
        return run

    def wallet_a_b_a(self, amount: str = "100"):
        """The wallet goes A -> B -> A (a transfer in, then out): all three states must be
        published as three events and PostgreSQL must end at the third."""
        def run(res: Result) -> None:
            self.sim_rate(account_rate=0)
            marks = int(time.time() * 1000)
            t0 = time.time()
            states = [self.sim_call("POST", "/__sim/transfer", {"amount": a, "marks_at_ms": marks})["wallet"]
                      for a in (amount, amount, f"-{amount}")]
            balances = [next(c["walletBalance"] for c in w["coin"] if c["coin"] == "USDT") for w in states]

            def published() -> list[dict]:
                return [line for line in self.consumer.account()
                        if line.get("cls") == "balances" and line.get("source") == "bybit" and line["at"] >= t0]

            got = wait_for(lambda: (p := published()) and len(p) >= 3 and p, 30, interval=0.05,
                           message="three wallet events consumed")
            seen = [next(c["walletBalance"] for c in line["data"][0]["coin"] if c["coin"] == "USDT") for line in got[:3]]
            res.detected_by = f"balances on the bus: {' -> '.join(seen)} ({len({g['mid'] for g in got[:3]})} ids)"
            res.detect_s = round(got[2]["at"] - t0, 2)
            last_ts = got[2]["exchange_ts"]
            row = wait_for(lambda: (r := self.gw.query(
                "SELECT wallet_balance, exchange_ts FROM balances WHERE coin = 'USDT'")) and
                r[0]["exchange_ts"] == last_ts and r[0], 30, interval=0.1, message="PostgreSQL at the third state")
            res.recovered_s = round(time.time() - t0, 2)
            res.recovery_what = f"PostgreSQL USDT {row['wallet_balance']} at the third push"
            if seen != balances or balances[0] != balances[2] or len({g["mid"] for g in got[:3]}) != 3:
                res.error = f"wallet states {seen} published, expected {balances} under three ids"
        return run

    def stalled_ingest(self):
        """ingest's loop stops (SIGSTOP): the eventlistener restarts it and says so."""
        def run(res: Result) -> None:
            old = pids(self.gw)["ingest"]
            t0 = time.time()
            os.kill(old, signal.SIGSTOP)
            try:
                ev = self.event("process_stalled", t0, 120, lambda e: e["data"].get("program") == "ingest")
                res.detected_by = f"system.process_stalled (silent {ev['data'].get('silent_s')} s)"
                res.detect_s = round(ev["t"] - t0, 2)
                wait_for(lambda: (p := pids(self.gw).get("ingest")) not in (None, old), 120, interval=0.1,
                         message="ingest restarted")
            finally:
                try:
                    os.kill(old, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            want = {"linear": self.expect_linear, "private": self.expect_private}
            wait_for(lambda: all(want[e] <= self.subscribed(e) for e in want), 60, interval=0.05,
                     message="every subscription back")
            res.recovered_s = round(time.time() - t0, 2)
            res.recovery_what = "restarted by the eventlistener, every subscription back"
        return run

    def rabbitmq_outage(self):
        def run(res: Result) -> None:
            t0 = time.time()
            subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True, timeout=60)
            try:
                wait_for(lambda: status_file(self.gw, "publisher")["broker"]["state"] != "ready", 30, interval=0.05,
                         message="publisher sees the outage")
                res.detected_by = "publisher status broker.state != ready ('broker connection lost' log)"
                res.detect_s = round(time.time() - t0, 2)
                f0 = status_file(self.gw, "ingest")["handoff"]["publisher"]["sent"]
                time.sleep(self.outage_s)   # the outage itself: how long the broker stays away
                flowing = status_file(self.gw, "ingest")["handoff"]["publisher"]["sent"] > f0
            finally:
                t1 = time.time()
                subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True, timeout=120)
                subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=False, capture_output=True, timeout=120)
            wait_for(lambda: status_file(self.gw, "publisher")["broker"]["state"] == "ready", 60, interval=0.1,
                     message="publisher reconnected")
            res.recovered_s, res.target_s = round(time.time() - t1, 2), OUTAGE_TARGET_S
            res.recovery_what = f"broker back -> publisher ready; ingest kept reading: {flowing}"
            if not flowing:
                res.error = "ingest stopped handing off during the broker outage"
        return run

    def postgres_outage(self):
        def run(res: Result) -> None:
            if self.cluster is None:
                res.error = "no private PostgreSQL cluster (needs root and a PostgreSQL installation)"
                return
            t0 = time.time()
            self.cluster.stop()
            try:
                wait_for(lambda: not status_file(self.gw, "persister")["database"]["up"], 30, interval=0.05,
                         message="persister sees the outage")
                res.detected_by = "persister status database.up=false ('database_unavailable' log)"
                res.detect_s = round(time.time() - t0, 2)
                f0 = status_file(self.gw, "ingest")["handoff"]["publisher"]["sent"]
                time.sleep(self.outage_s)   # the outage itself
                flowing = status_file(self.gw, "ingest")["handoff"]["publisher"]["sent"] > f0
                # leases cannot be renewed: ingest keeps its units until they would expire, then stops
                fenced = not status_file(self.gw, "ingest")["instance"]["owned"]
            finally:
                t1 = time.time()
                self.cluster.start()
            wait_for(lambda: status_file(self.gw, "persister")["database"]["up"], 60, interval=0.1,
                     message="persister reconnected")
            wait_for(lambda: status_file(self.gw, "ingest")["instance"]["owned"], 60, interval=0.1,
                     message="ingest owns its units again")
            res.recovered_s, res.target_s = round(time.time() - t1, 2), OUTAGE_TARGET_S
            res.recovery_what = (f"database back -> persister writing, ingest's units taken back (new epoch); "
                                 f"ingest kept reading: {flowing}; fenced at the end of the outage: {fenced}")
            if not flowing:
                res.error = "ingest stopped handing off during the database outage"
        return run

    def takeover(self, instance_id: str = "faults-b"):
        """A second instance (its own supervisord stack, the same stores and simulator) shares the
        market and ends up owning the private stream (this gateway's ingest is stopped, hands
        everything over, then started: it takes its share of the shards back); then every process of the
        second is killed (kill -9 of its supervisord and programs). Recovered when this gateway
        owns every unit again and holds every subscription, private ones included; detected by
        system.owner_changed for the private unit (reason expired, with the gap)."""
        def run(res: Result) -> None:
            keep = ("GW_PING_INTERVAL_S", "GW_DEAD_AFTER_S", "GW_BACKOFF_MAX_S", "PUBLISHER_BACKOFF_MAX_S",
                    "GW_LOG_LEVEL", "SIM_RATE", "SIM_ACCOUNT_RATE", "GW_LEASE_TTL_S", "GW_LEASE_RENEW_S")
            b = BenchGateway(self.gw.pg_url, self.gw.amqp_url, sim_of=self.gw, GW_INSTANCE_ID=instance_id,
                             **{k: self.gw.env[k] for k in keep if k in self.gw.env})
            try:
                b.start()
                self.gw.ctl("stop", "ingest")     # it gives every unit up; the other takes them all
                wait_for(lambda: set(lease_owners(self.gw).values()) == {instance_id}, 60, interval=0.25,
                         message=f"{instance_id} owns every unit")
                self.gw.ctl("start", "ingest")    # and takes its share of the shards back
                wait_for(lambda: (o := lease_owners(self.gw)).get("private") == instance_id and all(o.values())
                         and len(set(o.values())) == 2, 90, interval=0.25,
                         message=f"{instance_id} owns the private stream, the shards shared by both")
                wait_for(lambda: all(st["status"] == "active" for st in status_file(b, "ingest")["topics"].values()),
                         30, interval=0.25, message=f"{instance_id} subscribed")
                units = sorted(u for u, o in lease_owners(self.gw).items() if o == instance_id)
                t0 = time.time()
                kill_all(b)
                res.target_s = TAKEOVER_TARGET_S
                want = {"linear": self.expect_linear, "private": self.expect_private}
                wait_for(lambda: len(set(lease_owners(self.gw).values())) == 1 and None not in
                         lease_owners(self.gw).values(), 60, interval=0.1, message="every unit owned by this gateway")
                wait_for(lambda: all(f"{e}:{t}" in (st := status_file(self.gw, "ingest")["topics"])
                                     and st[f"{e}:{t}"]["status"] == "active" for e in want for t in want[e]),
                         60, interval=0.1, message="every subscription held again")
                res.recovered_s = round(time.time() - t0, 2)
                res.recovery_what = (f"{len(units)} units of the killed instance (private + "
                                     f"{len(units) - 1} shards) owned here, every subscription held again")
                ev = self.event("owner_changed", t0, 30, lambda e: e["data"].get("unit") == "private"
                                and e["data"].get("old_owner") == instance_id)
                res.detected_by = (f"system.owner_changed (private: {instance_id} -> {ev['data']['new_owner']}, "
                                   f"{ev['data']['reason']}, gap {ev['data']['gap_s']} s)")
                res.detect_s = round(ev["t"] - t0, 2)
            finally:
                b.stop()
        return run

    # -- what must come back -----------------------------------------------------------------
    def snapshot_subscriptions(self, book_topic: str | None) -> None:
        self.expect_linear = self.subscribed("linear")
        self.expect_private = self.subscribed("private")
        self.book_topic = book_topic
