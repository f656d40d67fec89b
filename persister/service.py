"""The persister process: PULL envelopes from ingest, write batches to PostgreSQL.

One loop, one thread. Each pass drains what ZeroMQ holds (never blocking
ingest), merges it into ``Pending``, and writes one batch when ``batch_rows``
rows are waiting or the oldest has waited ``batch_ms``. While PostgreSQL is
away the loop keeps draining, retries with capped backoff and logs the state
change once each way. The first SIGTERM stops the loop and commits what is in
hand (bounded wait); rows that cannot be written go to the spool for the next
start. A second signal exits at once.
"""
from __future__ import annotations

import time

import zmq

from common import addresses
from common.config import settings_or_exit
from common.envelope import Envelope, EnvelopeError, unpack
from common.logs import RateLimited, get_logger, setup_logging
from common.runtime import StopSignals, backoff_s, lower_priority, status_doc, write_status
from persister import metrics
from persister.intake import BadInput, parse
from persister.pending import Batch, Pending
from persister.sink import DatabaseDown, PostgresSink, SchemaNotReady
from persister.spool import RowSpool

log = get_logger("persister")

DRAIN_MAX = 5000            # envelopes taken from ZeroMQ per pass
RCVHWM = 10_000             # we drain continuously; ingest keeps its own bounded buffer beyond this
MAX_PENDING = 10_000        # rows held in memory (about 2.3 kB each: ~25 MB); past it new keys spill to disk
BACKOFF_START_S, BACKOFF_MAX_S = 0.2, 5.0
PING_IDLE_S = 5.0           # check an idle connection this often, so status tells the truth
STATUS_EVERY_S = 1.0
SHUTDOWN_WAIT_S = 8.0       # + one statement_timeout: under supervisord's stopwaitsecs=20
# `supervisorctl stop all` signals ingest at the same moment: keep taking envelopes until it
# has been quiet this long (its last flush included), at most STOP_INTAKE_MAX_S (monotonic
# time, not the injected clock: this waits for another process).
STOP_QUIET_S = 0.5
STOP_INTAKE_MAX_S = 3.0


class StopFlag:
    """Set by the first SIGTERM/SIGINT (``common.runtime.StopSignals``); the loop checks it."""

    def __init__(self):
        self.stopping = False

    def request(self, signame: str | None = None) -> None:
        self.stopping = True
        log.info("stopping", signal=signame)


class Persister:
    def __init__(self, settings, sink: PostgresSink, sock, pending: Pending, clock=time.monotonic):
        self.settings, self.sink, self.sock, self.pending, self.clock = settings, sink, sock, pending, clock
        self.batch_s = settings.batch_ms / 1000.0
        self.status_path = addresses.status_file(settings.run_dir, "persister")
        self.bad_log = RateLimited(log)
        # database state
        self.db_up: bool | None = None      # None until the first attempt
        self.db_since = time.time()
        self.db_error: str | None = None
        self.schema_ready: bool | None = None
        self.schema_waits = 0
        self.outages = 0
        self.next_attempt = 0.0
        self.failures = 0                   # database attempts failed in a row
        self.last_db_ok = 0.0
        self.recovering: int | None = None   # rows written since the database came back
        # counters for the status file
        self.received = 0
        self.bad_input = 0
        self.dead_letters = 0
        self.rows_written: dict[str, int] = {}
        self.last_batch: dict | None = None
        self.started_at = time.time()

    # --- receiving ------------------------------------------------------------
    def drain(self, limit: int = DRAIN_MAX) -> int:
        n = 0
        while n < limit:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            self.take(parts)
        return n

    def take(self, parts: list[bytes]) -> None:
        """One message from ingest: one envelope, or several packed in one."""
        try:
            envelopes = unpack(parts)
        except EnvelopeError as exc:
            self.bad_input += 1
            metrics.BAD_INPUT.labels("bad_envelope").inc()
            self.bad_log("warning", "bad_input", reason="bad_envelope", error=str(exc)[:300])
            return
        for one in envelopes:
            self.handle(one)

    def handle(self, parts: list[bytes]) -> None:
        self.received += 1
        now = self.clock()
        try:
            env = Envelope.decode(parts)
            metrics.MESSAGES.labels(env.kind).inc()
            intake = parse(env)
        except (EnvelopeError, BadInput) as exc:
            reason = getattr(exc, "reason", "bad_envelope")
            self.bad_input += 1
            metrics.BAD_INPUT.labels(reason).inc()
            self.bad_log("warning", "bad_input", reason=reason, error=str(exc)[:300])
            return
        for row in intake.rows:
            self.pending.add(row, now)
        for bad in intake.bad:
            self.dead_letters += 1
            metrics.DEAD_LETTERS.labels(bad.table).inc()
            self.bad_log("warning", "dead_letter", table=bad.table, event_id=bad.event_id, error=bad.error[:300])
            self.pending.add_dead(bad, now)
        if intake.sub_status is not None:
            self.pending.add_sub_status(intake.sub_status, now)
        for endpoint, topic, ms in intake.activity:
            self.pending.add_activity(endpoint, topic, ms, now)

    # --- the database -----------------------------------------------------------
    def ensure_connected(self, now: float) -> bool:
        if self.sink.connected:
            return True
        if now < self.next_attempt:
            return False
        try:
            self.sink.connect()
        except SchemaNotReady as exc:
            self.schema_waits += 1
            metrics.SCHEMA_WAITS.inc()
            if self.schema_ready is not False:
                log.error("schema_not_ready", error=str(exc),
                          hint="migrations pending: run `make migrate`; retrying until the tables exist")
            self.schema_ready = False
            self._down(str(exc), now, log_it=False)
            return False
        except DatabaseDown as exc:
            self._down(str(exc), now)
            return False
        self.schema_ready = True
        self.failures = 0
        self.last_db_ok = now
        if not self.db_up:
            if self.db_up is False:
                self.recovering = 0         # "database_back" is logged once the backlog is written
            else:
                log.info("database_connected", pending=self.pending.count)
            self.db_up, self.db_since, self.db_error = True, time.time(), None
            metrics.DB_UP.set(1)
        return True

    def _down(self, error: str, now: float, log_it: bool = True) -> None:
        self.sink.close()
        self.db_error = error
        self.failures += 1
        self.next_attempt = now + backoff_s(self.failures, BACKOFF_MAX_S, BACKOFF_START_S)
        self.recovering = None
        if self.db_up is not False:
            if self.db_up:
                self.outages += 1
                metrics.DB_OUTAGES.inc()
            if log_it:
                log.error("database_unavailable", error=error, pending=self.pending.count,
                          retry_max_s=BACKOFF_MAX_S)
            self.db_up, self.db_since = False, time.time()
            metrics.DB_UP.set(0)

    def ping(self, now: float) -> None:
        """Touch an idle connection so an outage shows without waiting for the next event."""
        if not self.sink.connected or now - self.last_db_ok < PING_IDLE_S:
            return
        try:
            self.sink.ping()
        except DatabaseDown as exc:
            self._down(str(exc), now)
            return
        self.last_db_ok = now

    # --- writing ----------------------------------------------------------------
    def due(self, now: float) -> bool:
        p = self.pending
        if not p.count:
            return False
        return p.rows_in_memory + len(p.spool) >= self.settings.batch_rows or now - p.oldest_at >= self.batch_s

    def flush(self, now: float, force: bool = False) -> bool:
        """Write one batch if one is due; True when something was committed."""
        if not (force and self.pending.count) and not self.due(now):
            return False
        if not self.ensure_connected(now):
            return False
        batch = self.pending.take(self.settings.batch_rows)
        try:
            result = self.sink.write(batch)
        except (DatabaseDown, SchemaNotReady) as exc:
            self.pending.restore(batch, self.clock())
            schema = isinstance(exc, SchemaNotReady)
            if schema:
                self.schema_ready = False
                log.error("schema_not_ready", error=str(exc), hint="migrations pending or reverted: run `make migrate`")
            self._down(str(exc), now, log_it=not schema)
            return False
        self._after_write(batch, result)
        return True

    def _after_write(self, batch: Batch, result) -> None:
        """A batch is committed: counters, metrics, dead letters logged, the end of an outage noticed."""
        now = self.clock()
        self.last_db_ok = now
        total = sum(result.written.values())
        for table, n in result.written.items():
            self.rows_written[table] = self.rows_written.get(table, 0) + n
            metrics.ROWS_WRITTEN.labels(table).inc(n)
        for bad in result.dead:
            self.dead_letters += 1
            metrics.DEAD_LETTERS.labels(bad.table).inc()
            self.bad_log("warning", "dead_letter", table=bad.table, event_id=bad.event_id, error=bad.error[:300])
        mode = "row_by_row" if result.row_by_row else "copy"
        metrics.BATCHES.labels(mode).inc()
        metrics.BATCH_SECONDS.observe(result.seconds)
        self.last_batch = {"rows": len(batch), "ms": round(result.seconds * 1000, 3), "mode": mode,
                           "at": time.time()}
        if self.recovering is not None:
            self.recovering += total
            # The backlog is written once what waits fits in one batch (events keep coming).
            if self.pending.count < self.settings.batch_rows and not len(self.pending.spool):
                log.info("database_back", wrote_rows=self.recovering,
                         down_s=round(time.time() - self.db_since, 1))
                self.recovering = None
        if not self.pending.rows_in_memory:
            self.pending.spool.remove_if_drained()

    # --- status -----------------------------------------------------------------
    def status(self) -> dict:
        sizes = self.pending.sizes()
        for table, n in sizes.items():
            metrics.PENDING.labels(table).set(n)
        metrics.SPOOLED.set(len(self.pending.spool))
        return status_doc(
            "persister", self.started_at,
            database={"up": self.db_up, "since": self.db_since, "error": self.db_error,
                         "schema_ready": self.schema_ready, "schema_waits": self.schema_waits,
                      "outages": self.outages},
            pending=sizes, spooled=len(self.pending.spool), received=self.received,
            bad_input=self.bad_input, dead_letters=self.dead_letters, rows_written=self.rows_written,
            last_batch=self.last_batch)

    def write_status(self) -> None:
        try:
            write_status(self.status_path, self.status())
        except OSError as exc:
            self.bad_log("warning", "status_write_failed", error=str(exc))

    # --- the loop -----------------------------------------------------------------
    def run(self, stop: StopFlag, max_messages: int | None = None, idle_timeout: float | None = None) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        next_status = 0.0
        last_message = self.clock()
        try:
            while not stop.stopping:
                now = self.clock()
                wait = STATUS_EVERY_S
                if self.pending.count:
                    wait = max(0.0, min(wait, self.pending.oldest_at + self.batch_s - now))
                    if not self.sink.connected:
                        wait = max(wait, min(self.next_attempt - now, STATUS_EVERY_S))
                if poller.poll(int(wait * 1000) + 1):
                    last_message = self.clock()
                    self.drain()
                now = self.clock()
                if not self.flush(now):
                    if self.sink.connected:
                        self.ping(now)
                    else:
                        self.ensure_connected(now)   # probe with nothing to write too: status tells the truth
                if now >= next_status:
                    self.write_status()
                    next_status = now + STATUS_EVERY_S
                if max_messages is not None and self.received >= max_messages and not self.pending.count:
                    break
                if idle_timeout is not None and now - last_message >= idle_timeout:
                    break
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Drain ZeroMQ, put every row on disk, then write what the bounded wait allows.

        Spooling first means a SIGKILL during the final writes (supervisord's stopwaitsecs)
        loses nothing: the next start writes the spool again, and every write is idempotent.
        """
        deadline = self.clock() + SHUTDOWN_WAIT_S
        drained = self.drain(limit=1_000_000)
        end = time.monotonic() + STOP_INTAKE_MAX_S
        quiet_until = time.monotonic() + STOP_QUIET_S
        while time.monotonic() < min(end, quiet_until):
            if self.sock.poll(50):
                drained += self.drain(limit=1_000_000)
                quiet_until = time.monotonic() + STOP_QUIET_S
        self.pending.spill_all()
        self.next_attempt = 0.0   # one immediate attempt if the database was away
        while self.pending.count and self.clock() < deadline:
            if not self.flush(self.clock(), force=True):
                break
        left = self.pending.count
        self.pending.spill_all()
        lost = self.pending.count - len(self.pending.spool)
        log.info("stopped", drained=drained, unwritten=left, spooled=len(self.pending.spool),
                 subscription_updates_lost=lost)
        self.write_status()
        self.pending.spool.close()
        self.sink.close()
        self.sock.close(linger=0)


def main() -> int:
    settings = settings_or_exit("persister")
    setup_logging("persister", settings.log_level)
    log.info("starting", settings=settings.describe())
    settings.warn_unknown_env(log)
    log.info("priority", nice=lower_priority(settings.nice_behind_ingest))     # ingest reads first
    settings.status_dir.mkdir(parents=True, exist_ok=True)
    spool = RowSpool(settings.run_dir / "spool" / "persister.jsonl")
    if len(spool):
        log.info("spool_found", rows=len(spool), path=str(spool.path))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, RCVHWM)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = addresses.persister_frames(settings.run_dir)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        log.error("bind_failed", endpoint=endpoint, error=str(exc))
        return 1
    metrics.DB_UP.set(0)
    stop = StopFlag()
    StopSignals(stop.request).install()
    app = Persister(settings, PostgresSink(settings.database_url), sock, Pending(spool, MAX_PENDING))
    app.run(stop)
    ctx.term()
    return 0
