"""REST reconciliation of the account, in its own asyncio tasks.

When: at ingest start, after every private (re)connect once its topics are subscribed,
when a publisher or persister restarted (its status file shows a new pid or start time),
every ``reconcile_interval_s``, and again with backoff after a failure.

How: fetch server time, the wallet (every coin ever held, zero ones included), open
orders, order history since the newest fill known, any order known open or recently
changed that neither list returned (by ``orderId``), positions (by settle coin, plus by
symbol for any we knew non-flat), and fills since the newest one known minus a margin.
Then send the state downstream as ``rest`` envelopes (publisher and persister). A
reconciliation is reported ``reconciliation_done`` only when every call succeeded;
otherwise ``reconciliation_failed``, nothing is sent, and it is retried with backoff.

Live pushes never wait for a reconciliation: they go out as they come. A record fetched
over REST carries the same id as the push of the same fact and Bybit's version, so a
consumer (and the persister) keeps the newest whatever arrives last.
"""
from __future__ import annotations

import asyncio
import time

import psycopg2

from common import addresses
from common.envelope import REST, json_envelope
from common.logs import get_logger
from common.runtime import backoff_s, read_status
from ingest import metrics
from ingest.account_state import Known, Seen, Snapshot, exec_start_ms, loss_start_ms, merge_wallets
from ingest.rest import RestClient, RestError

log = get_logger(__name__)
# Bybit's order and position lists need a settle coin (or symbol) for linear; options settle in USDC or USDT.
ORDER_QUERIES = (("linear", {"settleCoin": "USDT"}), ("linear", {"settleCoin": "USDC"}), ("inverse", {}),
                 ("spot", {}), ("option", {"settleCoin": "USDC"}), ("option", {"settleCoin": "USDT"}))
POSITION_QUERIES = (("linear", {"settleCoin": "USDT"}), ("linear", {"settleCoin": "USDC"}), ("inverse", {}),
                    ("option", {"settleCoin": "USDC"}), ("option", {"settleCoin": "USDT"}))
EXEC_CATEGORIES = ("linear", "inverse", "spot", "option")
COIN_QUERY_MAX = 20            # coins per wallet-balance request when asking for coins by name
MAX_LOOKUPS = 200              # single-order and single-position look-ups per reconciliation
CONCURRENCY = 4                # REST calls in flight (Bybit allows 50/s per endpoint)
RETRY_BASE_S, RETRY_CAP_S = 1.0, 60.0
DOWNSTREAMS = ("publisher", "persister")


def read_known(database_url: str, changed_since_ms: int | None) -> Known:
    """From PostgreSQL: the newest fill, open orders (and orders changed since), open positions,
    and the coins with a balance (Bybit leaves a coin out once it is zero unless asked by name)."""
    conn = psycopg2.connect(database_url, connect_timeout=3, application_name="ws-gateway-reconcile")
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 5000")
            cur.execute("SELECT (SELECT max(exec_time) FROM executions), (SELECT max(updated_time) FROM orders)")
            exec_ms, order_ms = cur.fetchone()
            cur.execute("SELECT order_id, category FROM orders WHERE is_open OR updated_time >= %s "
                        "ORDER BY is_open DESC, updated_time DESC LIMIT %s",
                        (changed_since_ms if changed_since_ms is not None else 2 ** 62, MAX_LOOKUPS * 5))
            orders = dict(cur.fetchall())
            cur.execute("SELECT category, symbol FROM positions WHERE size <> 0")
            positions = set(cur.fetchall())
            cur.execute("SELECT DISTINCT coin FROM balances WHERE account_type = 'UNIFIED' AND "
                        "(wallet_balance <> 0 OR equity <> 0 OR locked <> 0 OR borrow_amount <> 0)")
            coins = {r[0] for r in cur.fetchall()}
    finally:
        conn.close()
    return Known(None if exec_ms is None else int(exec_ms), None if order_ms is None else int(order_ms),
                 orders, positions, coins)


class Reconciler:
    def __init__(self, settings, handoff, client: RestClient | None = None, known_reader=read_known):
        self.settings, self.handoff = settings, handoff
        self.client = client or RestClient(settings.rest_url, settings.bybit_api_key, settings.bybit_api_secret,
                                           settings.recv_window_ms)
        self._read_known = known_reader
        self.seen = Seen()
        self._wake = asyncio.Event()
        self._reasons: list[str] = []
        self._lost: dict[str, int] = {}         # downstream -> it may have lost events from this time (ms)
        self._downstreams: dict[str, tuple] = {}
        self._sem = asyncio.Semaphore(CONCURRENCY)
        self.state = {"configured": True, "state": "idle", "done": 0, "failed": 0, "last_done_at": None,
                      "last_duration_ms": None, "last_counts": None, "last_reasons": None, "last_error": None,
                      "last_error_at": None, "database_known": None, "already_pushed": {}}

    # -- called by the manager and the app --------------------------------------------------
    def request(self, reason: str, lost_since_ms: int | None = None, downstream: str | None = None) -> None:
        """Reconcile soon; ``downstream`` (default: both) may have lost events from ``lost_since_ms``."""
        self._reasons.append(reason)
        if lost_since_ms is not None:
            self._merge_lost({name: lost_since_ms for name in ([downstream] if downstream else DOWNSTREAMS)})
        self._wake.set()

    def _merge_lost(self, lost: dict[str, int]) -> None:
        for name, ms in lost.items():
            self._lost[name] = min(ms, self._lost.get(name, ms))

    def take(self, topic: str, cls: str, obj: dict, raw: bytes, recv_ns: int, conn_id: str) -> bool:
        """Every private push passes here to be noted; it is never held (always False)."""
        try:
            self.seen.observe(topic, obj)
        except Exception:   # bookkeeping only: a push it cannot read must still be handed off
            log.exception("seen_observe_failed", topic=topic)
        return False

    def status(self) -> dict:
        return {**self.state, "rest": dict(self.client.counts),
                "clock_offset_ms": self.client.offset_ms,
                "downstream_pids": {name: ident[0] for name, (ident, _) in self._downstreams.items()}}

    async def close(self) -> None:
        await self.client.close()

    # -- the loops ----------------------------------------------------------------------------
    async def run(self) -> None:
        """One loop: wait for a reason (or the interval, or the retry delay), reconcile, report."""
        failures = 0
        while True:
            wait = self.settings.reconcile_interval_s if not failures else \
                backoff_s(failures, RETRY_CAP_S, RETRY_BASE_S)
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                self._reasons.append("retry" if failures else "periodic")
            self._wake.clear()
            reasons, self._reasons = sorted(set(self._reasons)), []
            lost, self._lost = self._lost, {}
            started = time.monotonic()
            self.state["state"] = "running"
            try:
                snap = await self.reconcile(lost)
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # RestError, bad records, database: reported, retried
                failures += 1
                self._reasons = [*reasons, *self._reasons]
                self._merge_lost(lost)
                self._failed(exc, reasons, failures, started)
            else:
                failures = 0
                self._done(snap, reasons, started)
            self.state["state"] = "backoff" if failures else "idle"

    async def watch_downstreams(self, every_s: float = 1.0) -> None:
        """A publisher or persister with a new pid (or start time) may have lost events: reconcile."""
        while True:
            for name in DOWNSTREAMS:
                path = addresses.status_file(self.settings.run_dir, name)
                status = read_status(path)
                if status is None:
                    continue
                ident = (status.get("pid"), status.get("started_at"))
                prev = self._downstreams.get(name)
                if prev is not None and prev[0] != ident:
                    since = loss_start_ms(name, prev[1])
                    log.info("downstream_restarted", process=name, old_pid=prev[0][0], new_pid=ident[0],
                             lost_since_ms=since)
                    self.request(f"{name}_restarted", since, downstream=name)
                self._downstreams[name] = (ident, status)
            await asyncio.sleep(every_s)

    # -- one reconciliation -------------------------------------------------------------------
    async def reconcile(self, lost: dict[str, int] | None = None) -> Snapshot:
        """``lost``: downstream -> the time from which it may have lost events (ms)."""
        lost = lost or {}
        lost_since = min(lost.values()) if lost else None
        await self.client.sync_clock()
        now = self.client.now_ms()
        known = await self._known(lost_since)
        start = exec_start_ms(known.exec_ms, lost_since, now)
        orders_from = exec_start_ms(known.order_ms, lost_since, now)
        snap = Snapshot()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._wallet(snap, known.coins))
            for cat, params in ORDER_QUERIES:
                tg.create_task(self._list(snap.add_orders, "/v5/order/realtime", cat, params, 50))
                tg.create_task(self._list(snap.add_orders, "/v5/order/history", cat,
                                          {**params, "startTime": orders_from}, 50))
            for cat, params in POSITION_QUERIES:
                tg.create_task(self._list(snap.add_positions, "/v5/position/list", cat, params, 200))
            for cat in EXEC_CATEGORIES:
                tg.create_task(self._list(snap.add_executions, "/v5/execution/list", cat,
                                          {"startTime": start}, 100))
        await self._lookups(snap, known)
        self._send(snap, lost)
        self.seen.apply(snap)
        return snap

    async def _known(self, lost_since: int | None) -> Known:
        """PostgreSQL's view when reachable (merged with what ingest saw), else ingest's alone.

        After a downstream lost events, orders that changed since are looked up too: the
        persister may hold their final state while the publisher's consumers never got it.
        """
        mem = self.seen.known()
        try:
            db = await asyncio.to_thread(self._read_known, self.settings.database_url, lost_since)
        except Exception as exc:   # the database is optional here: memory is the fallback
            self.state["database_known"] = f"unavailable: {str(exc).strip()[:200]}"
            return mem
        self.state["database_known"] = "ok"
        return Known(db.exec_ms if db.exec_ms is not None else mem.exec_ms,
                     db.order_ms if db.order_ms is not None else mem.order_ms, {**db.orders, **mem.orders},
                     db.positions | mem.positions, db.coins | mem.coins)

    async def _call(self, path: str, params: dict):
        async with self._sem:
            return await self.client.get(path, params)

    async def _wallet(self, snap: Snapshot, known_coins: set[str]) -> None:
        """Every coin held now, and every coin known to have been held: Bybit's answer without a
        coin list leaves out coins that went to zero, which would stay non-zero downstream."""
        path = "/v5/account/wallet-balance"
        async with self._sem:
            reply = await self.client.get(path, {"accountType": "UNIFIED"})
        items = reply.result.get("list")
        if not isinstance(items, list) or not all(isinstance(a, dict) for a in items):
            raise RestError(path, "result.list is not a list of accounts")
        listed = {c.get("coin") for a in items for c in (a.get("coin") or []) if isinstance(c, dict)}
        missing = sorted(c for c in known_coins if c not in listed)
        at_ms = reply.time_ms
        for i in range(0, len(missing), COIN_QUERY_MAX):
            async with self._sem:
                more = await self.client.get(path, {"accountType": "UNIFIED",
                                                    "coin": ",".join(missing[i:i + COIN_QUERY_MAX])})
            extra = more.result.get("list")
            if not isinstance(extra, list):
                raise RestError(path, "result.list is not a list")
            items = merge_wallets(items, extra)
            at_ms = max(at_ms, more.time_ms)
        snap.wallet, snap.wallet_ms = items, at_ms

    async def _list(self, add, path: str, category: str, params: dict, limit: int) -> None:
        async with self._sem:
            records, at = await self.client.pages(path, {**params, "category": category}, limit)
        add(category, records, at)

    async def _lookups(self, snap: Snapshot, known: Known) -> None:
        """Orders we knew open (or saw change) that no list returned; positions we knew open."""
        orders = [(oid, cat) for oid, cat in known.orders.items() if oid not in snap.orders]
        fetched = {(c, s) for c, s, _ in snap.positions}
        positions = sorted(p for p in known.positions if p not in fetched)
        if len(orders) + len(positions) > MAX_LOOKUPS:
            log.warning("reconcile_lookups_capped", orders=len(orders), positions=len(positions), cap=MAX_LOOKUPS)
        orders = orders[:MAX_LOOKUPS]
        positions = positions[:max(0, MAX_LOOKUPS - len(orders))]

        async def order(oid: str, cat: str) -> None:
            for path in ("/v5/order/realtime", "/v5/order/history"):
                reply = await self._call(path, {"category": cat, "orderId": oid})
                found = reply.result.get("list")
                if isinstance(found, list) and found:
                    snap.add_orders(cat, found, reply.time_ms)
                    return
            snap.unresolved += 1        # Bybit no longer knows it (closed > 7 days ago): nothing to say

        async def position(cat: str, symbol: str) -> None:
            reply = await self._call("/v5/position/list", {"category": cat, "symbol": symbol})
            found = reply.result.get("list")
            if not isinstance(found, list):
                raise RestError("/v5/position/list", "result.list is not a list")
            snap.add_positions(cat, found, reply.time_ms)

        async with asyncio.TaskGroup() as tg:
            for oid, cat in orders:
                tg.create_task(order(oid, cat))
            for cat, symbol in positions:
                tg.create_task(position(cat, symbol))

    # -- downstream ---------------------------------------------------------------------------
    def _send(self, snap: Snapshot, lost: dict[str, int]) -> None:
        """Each downstream gets what it may not have: a push already handed off needs no second
        copy, unless that downstream restarted and may have lost it (from its ``lost`` time on)."""
        for name in DOWNSTREAMS:
            view = snap.without_pushed(self.seen, lost.get(name))
            self.state["already_pushed"][name] = view.skipped
            sock = getattr(self.handoff, name)
            for body in view.bodies():
                sock.send(json_envelope(REST, body, endpoint="private", topic=body["topic"], recv_ns=time.time_ns(),
                                        epoch=self.handoff.epoch).encode(), "")

    def _done(self, snap: Snapshot, reasons: list[str], started: float) -> None:
        ms = round((time.monotonic() - started) * 1000, 1)
        counts = snap.counts()
        self.state.update(done=self.state["done"] + 1, last_done_at=time.time(), last_duration_ms=ms,
                          last_counts=counts, last_reasons=reasons)
        metrics.RECONCILIATIONS.labels("done").inc()
        log.info("reconciliation_done", reasons=reasons, duration_ms=ms, **counts)
        self.handoff.system("reconciliation_done", {"reasons": reasons, "duration_ms": ms, "counts": counts,
                                                    "at": time.time()}, endpoint="private")

    def _failed(self, exc: BaseException, reasons: list[str], failures: int, started: float) -> None:
        if isinstance(exc, BaseExceptionGroup):       # from a TaskGroup: report the first cause
            exc = exc.exceptions[0]
        error = f"{type(exc).__name__}: {exc}"[:500]
        retry_in = backoff_s(failures, RETRY_CAP_S, RETRY_BASE_S)
        self.state.update(failed=self.state["failed"] + 1, last_error=error, last_error_at=time.time())
        metrics.RECONCILIATIONS.labels("failed").inc()
        log.warning("reconciliation_failed", reasons=reasons, error=error, attempt=failures, retry_in_s=retry_in)
        self.handoff.system("reconciliation_failed", {"reasons": reasons, "error": error, "attempt": failures,
                                                      "retry_in_s": retry_in, "at": time.time(),
                                                      "duration_ms": round((time.monotonic() - started) * 1000, 1)},
                            endpoint="private")
