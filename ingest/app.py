"""ingest's main(): settings, logging, the manager, the control socket and the
periodic jobs (status file, activity report, convergence with PostgreSQL)."""
from __future__ import annotations

import asyncio
import os
import sys
import time


from common import addresses
from common.config import ConfigError, settings_or_exit
from common.logs import get_logger, setup_logging
from common.runtime import StopSignals, status_doc, tune_gc, write_status
from ingest import recorder
from ingest.desired import load_desired
from ingest.control import ControlServer
from ingest.exchange_status import ExchangeStatus
from ingest.handoff import Handoff
from ingest.leases import PRIVATE_UNIT, Coordinator, InstanceConflict, LeaseDB, UnitGate, unit_of
from ingest.listen import Listener
from ingest.manager import Manager
from ingest.reconcile import Reconciler
from ingest.supervise import supervise
from ingest.universe import HeldByUniverse, Universe, load_rows

log = get_logger("ingest")
SYNC_EVERY_S = 30.0
ACTIVITY_EVERY_S = 5.0
SUPERVISE_BACKOFF_MAX_S = 10.0   # a loop that keeps failing is retried at least this often


def main() -> None:
    settings = settings_or_exit("ingest")
    setup_logging("ingest", settings.log_level)
    log.info("starting", settings=settings.describe())
    settings.warn_unknown_env(log)
    if settings.record_dir is not None:
        try:
            recorder.prepare_dir(settings.record_dir)
        except ConfigError as exc:   # as a bad setting: exit 2 naming it
            log.critical("bad_setting", error=str(exc))
            sys.exit(2)
    tune_gc()
    try:
        code = asyncio.run(run(settings))
    except Exception:
        log.exception("crashed")
        sys.exit(1)
    log.info("stopped")
    if code:
        sys.exit(code)


class Ingest:
    def __init__(self, settings):
        self.settings = settings
        settings.status_dir.mkdir(parents=True, exist_ok=True)
        self.handoff = Handoff(settings.run_dir, settings.handoff_buffer, settings.handoff_buffer_mb,
                               linger_s=settings.handoff_linger_ms / 1000)
        self.mgr = Manager(settings, self.handoff)
        self.handoff.on_lost = self.mgr.hand_off_lost
        self.recorder = None
        if settings.record_dir is not None:
            self.recorder = self.mgr.recorder = recorder.Recorder.from_settings(settings)
            self.recorder.start()
        # which units (private stream, public shards) this instance owns, by lease
        self.coord = self.mgr.ownership = Coordinator(settings, LeaseDB(settings), self.on_acquired, self.on_lost)
        self.listener = None
        self.exit_code = 0
        self.stop: asyncio.Event | None = None
        self._private_held = asyncio.Event()
        self._taken: list[tuple] = []        # (Acquired, Lease) to announce once their topics are held
        self.reconciler = None
        if settings.has_private:       # no snapshot on subscribe: account state comes from Bybit's REST API too
            # what it sends goes out only while this instance owns the private unit
            gate = UnitGate(self.handoff, lambda: self.coord.held.get(PRIVATE_UNIT)
                            if self.coord.owns(PRIVATE_UNIT) else None)
            self.reconciler = self.mgr.reconciler = Reconciler(settings, gate)
            self.reconciler.client.pause_on_403(   # a 403 is an IP ban: no REST call for a while, and say so
                settings.rest_ban_s, lambda kind, body: self.handoff.system(kind, body, endpoint="private"))
            self.reconciler.request("ingest_started")
        # whole-category rows (symbol "*"): expanded here into a topic per listed symbol
        self.universe = Universe(settings, self.mgr, self.request_sync, owns_row=lambda key: self.coord.owns(
            unit_of(key.split(":", 1)[0], key, settings.shards)))
        self.control = ControlServer(settings.run_dir, HeldByUniverse(self.mgr, self.universe, self.request_sync),
                                     self.request_sync)
        self.exchange = ExchangeStatus(self.mgr, self.handoff) if settings.exchange_status else None
        self._sync_now = asyncio.Event()
        self._sync_trace = ""
        self.db_state = {"reachable": None, "last_sync": None, "error": None}
        self.started = time.time()

    def request_sync(self, trace_id: str = "") -> None:
        self._sync_trace = trace_id
        self._sync_now.set()

    # -- instances and leases --------------------------------------------------------------
    def on_notify(self, keys: list[str] | None) -> None:
        """A subscription changed (through any instance's API): converge now if it is ours.
        None: the listener (re)connected and may have missed some. A whole-category row's topics
        span every shard: any instance may hold some of them."""
        if keys is None or any(k.endswith(".*") or self.coord.owns(unit_of(k.split(":", 1)[0], k, self.settings.shards))
                               for k in keys):
            self.request_sync()

    def on_acquired(self, acquired, lease) -> None:
        """A unit is ours: announce it, subscribe its topics, and for the private unit fetch over
        REST what the gap (old owner's last renewal -> now) may have cost."""
        private = acquired.unit == PRIVATE_UNIT
        self._taken.append((acquired, lease))
        self.request_sync()
        if private and self.reconciler is not None:
            since = acquired.previous_renewed_at
            self.reconciler.request("owner_changed", int(since * 1000) if since and acquired.previous_owner else None)
            self._private_held.set()

    def announce_taken(self) -> None:
        """``system.owner_changed`` for each unit taken since the last converge, naming the topics
        now held under it: the market data of those topics in the gap was lost."""
        taken, self._taken = self._taken, []
        for acquired, lease in taken:
            body = acquired.announcement(self.settings.instance_id)
            body["topics"] = sorted(k for k, st in self.mgr.topics.items() if st.lease is lease)
            self.handoff.system("owner_changed", body, endpoint="private" if acquired.unit == PRIVATE_UNIT else "",
                                extra=lease.extra)

    def on_lost(self, unit: str, lease, why: str) -> None:
        """Fenced: its topics are dropped (no frame of it is handed off any more) and unsubscribed."""
        if unit == PRIVATE_UNIT:
            self._private_held.clear()
        topics = self.mgr.drop_unit(unit, lease)
        self.handoff.system("lease_lost", {"unit": unit, "instance": self.settings.instance_id, "epoch": lease.epoch,
                                           "reason": why, "topics": topics, "at": time.time()},
                            endpoint="private" if unit == PRIVATE_UNIT else "")

    async def leases_loop(self) -> None:
        try:
            await self.coord.run()
        except InstanceConflict as exc:     # a second stack with our id, or another shard count
            log.critical("instance_conflict", error=str(exc))
            self.exit_code = 2
            if self.stop is not None:
                self.stop.set()
            await asyncio.Future()          # the process is stopping: not a loop to restart

    async def serve_control(self) -> None:
        """Control messages are answered once this instance knows what it owns (the first lease
        tick), so an answer's ``held`` is true from the start; they wait in ZeroMQ meanwhile."""
        await self.coord.first_tick.wait()
        await self.control.serve()

    async def reconcile_loop(self) -> None:
        """The reconciler runs only while this instance owns the private unit."""
        while True:
            await self._private_held.wait()
            task = asyncio.create_task(self.reconciler.run(), name="reconcile-run")
            try:
                while self._private_held.is_set() and not task.done():
                    await asyncio.wait({task}, timeout=0.2)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()

    async def sync_loop(self) -> None:
        """Converge to PostgreSQL's desired set at start, when told, and every 30 s."""
        delay = 0.5
        while True:
            trace_id, self._sync_trace = self._sync_trace, ""
            self._sync_now.clear()
            seq = self.control.reads.begin()    # a control read started after this one wins over it
            try:
                desired, invalid = await asyncio.to_thread(load_desired, self.settings.database_url)
                whole_rows = await asyncio.to_thread(load_rows, self.settings.database_url)
            except Exception as exc:
                if self.db_state["reachable"] is not False:
                    log.warning("desired_state_unavailable", error=str(exc).strip(), retry_in_s=delay)
                self.db_state.update(reachable=False, error=str(exc).strip())
                wait, delay = delay, min(delay * 2, SYNC_EVERY_S)
            else:
                if self.db_state["reachable"] is not True:
                    log.info("desired_state_loaded", topics=len(desired), invalid=len(invalid))
                for sid, why in invalid:
                    log.error("invalid_stored_subscription", id=sid, error=why)
                self.db_state.update(reachable=True, error=None, last_sync=time.time())
                _, desired = Universe.split(desired)
                for sid, why in self.universe.set_rows(whole_rows):
                    log.error("invalid_stored_subscription", id=sid, error=why)
                self.mgr.converge(self.universe.desired(self.control.converge_view(desired, seq)))
                self.announce_taken()
                if trace_id:
                    log.info("synced", topics=len(desired), trace_id=trace_id)
                wait, delay = SYNC_EVERY_S, 0.5
            try:
                await asyncio.wait_for(self._sync_now.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def report_loop(self) -> None:
        """Status file every second; activity to the persister every few seconds; flush hand-off."""
        path = addresses.status_file(self.settings.run_dir, "ingest")
        last_activity = time.monotonic()
        while True:
            for _ in range(20):
                self.mgr.flush_metrics()
                self.handoff.flush()
                await asyncio.sleep(0.05)
            now = time.monotonic()
            if now - last_activity >= ACTIVITY_EVERY_S:
                activity = self.mgr.take_activity()
                if activity:
                    self.handoff.to_persister("activity", {"topics": activity})
                last_activity = now
            try:
                write_status(path, status_doc(
                    "ingest", self.started, epoch=self.handoff.epoch, database=self.db_state,
                    handoff=self.handoff.stats(),
                    instance={**self.coord.status(), "listen": self.listener.status() if self.listener else None},
                    recording=self.recorder.status() if self.recorder else {"enabled": False},
                    **self._mgr_status()))
            except OSError as exc:
                log.warning("status_write_failed", error=str(exc))

    def _mgr_status(self) -> dict:
        out = self.mgr.status()
        out["universe"] = self.universe.status()
        out["topics"].update(self.universe.topic_entries(out["topics"]))
        if self.exchange is not None:   # Bybit's system-status socket: its connection and notices
            exchange = out["exchange_status"] = self.exchange.status()
            out["connections"].append(exchange["connection"])
        return out

    async def close(self) -> None:
        # Pushes held by a running reconciliation go first, while the binders still read.
        if self.reconciler is not None:
            await self.reconciler.close()
        if self.exchange is not None:
            await self.exchange.close()
        await self.universe.close()
        await self.mgr.close()
        if self.listener is not None:
            self.listener.close()
        await self.coord.close()         # nothing is handed off any more: others may take over now
        if self.recorder is not None:    # after the sockets: every frame they read is written
            await asyncio.to_thread(self.recorder.close)
        self.mgr.flush_metrics()
        self.handoff.flush()
        self.control.close()
        self.handoff.close()


async def run(settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop(signame: str) -> None:
        log.info("stopping", signal=signame)
        stop.set()

    def on_force(signame: str) -> None:
        log.warning("forced_exit", signal=signame)
        os._exit(1)

    StopSignals(on_stop, on_force).install(loop)
    app = Ingest(settings)
    if app.exchange is not None:
        app.exchange.start()
    app.stop = stop
    app.listener = Listener(settings.database_url, loop, app.on_notify)
    app.listener.start()
    jobs = [("sync", app.sync_loop), ("report", app.report_loop), ("control", app.serve_control),
            ("leases", app.leases_loop), ("fence", app.coord.fence), ("universe", app.universe.run)]
    if app.reconciler is not None:
        jobs += [("reconcile", app.reconcile_loop), ("downstreams", app.reconciler.watch_downstreams)]
    # each loop runs for good: one that raises or returns is logged, counted and started again
    tasks = [asyncio.create_task(supervise(name, name, job, app.mgr.task_failures,
                                           backoff_max_s=SUPERVISE_BACKOFF_MAX_S), name=name)
             for name, job in jobs]
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and t.exception():
                raise t.exception()   # the supervisor itself failed: take the process down, not leave it looking alive
    finally:
        for t in tasks:
            t.cancel()
        stopper.cancel()
        try:
            await asyncio.wait_for(app.close(), 8.0)
        except asyncio.TimeoutError:
            log.warning("close_timed_out")
    return app.exit_code
