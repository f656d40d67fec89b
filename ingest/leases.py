"""Which live gateway instance owns each unit of work, through lease rows in PostgreSQL.

Units: ``private`` (the account stream) and ``shard-<i>of<N>``: a public topic belongs to the
shard ``crc32("endpoint:topic") % N``. A stable hash spreads every category over every
instance (per-category shards would leave the instance holding ``linear`` with most of the
market) and does not depend on which topics exist, so adding a topic never moves another.

A lease is a row (owner, epoch, expires_at) written with the database's ``now()``: the
epoch grows with every new owner, the owner renews it every ``lease_renew_s`` and it
expires ``lease_ttl_s`` after the last renewal. Its owner fences itself: a lease is valid
locally until ``lease_ttl_s - FENCE_MARGIN_S`` after the moment the last successful renewal
was *sent* (measured on CLOCK_BOOTTIME, which keeps counting while the process is stopped
or the host sleeps), so it stops handing off the unit's frames before any other instance
can take the unit. Every frame handed off carries the unit's owner and epoch.
"""
from __future__ import annotations

import asyncio
import hashlib
import math
import os
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field

import orjson
import psycopg2

from common.logs import RateLimited, get_logger
from common.topics import PRIVATE

log = get_logger(__name__)
PRIVATE_UNIT = "private"
FENCE_MARGIN_S = 1.0          # stop this long before the lease could expire at the database
FENCE_CHECK_S = 0.2           # how often held leases are checked against the local clock
DB_CALL_TIMEOUT_S = 3.0       # a lease statement not answered by then is given up (at least 1.5 renewals)

_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def clock() -> float:
    """Seconds on a clock that keeps running while the process is stopped (SIGSTOP, suspend)."""
    return time.clock_gettime(_CLOCK)


# -- units (pure) ------------------------------------------------------------------------------
def shard_units(shards: int) -> list[str]:
    return [f"shard-{i}of{shards}" for i in range(shards)]


def unit_of(endpoint: str, key: str, shards: int) -> str:
    """The unit a topic (``endpoint:topic``) belongs to."""
    if endpoint == PRIVATE:
        return PRIVATE_UNIT
    return f"shard-{zlib.crc32(key.encode()) % shards}of{shards}"


def preference(instance: str, unit: str) -> int:
    """Rendezvous weight: each instance prefers its own units, so a unit set free goes back
    where it was and two instances racing for free units mostly ask for different ones."""
    return int.from_bytes(hashlib.blake2b(f"{instance}|{unit}".encode(), digest_size=8).digest(), "big")


def water_level(units: int, capacities: list[int]) -> int:
    """The smallest per-instance share L with sum(min(capacity, L)) >= units: every instance
    may own up to min(its capacity, L). With equal capacities L = ceil(units / instances)."""
    if not capacities or sum(capacities) <= units:
        return max(capacities, default=0)
    lo, hi = math.ceil(units / len(capacities)), max(capacities)
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(min(c, mid) for c in capacities) >= units:
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass
class View:
    """One read of the tables: live instances (id -> capacity) and each unit's state."""
    instances: dict[str, int] = field(default_factory=dict)
    owners: dict[str, str | None] = field(default_factory=dict)   # unit -> live owner (None: free)
    private: set[str] = field(default_factory=set)                # live instances with Bybit keys


def plan(me: str, capacity: int, mine: set[str], view: View, shards: list[str],
         want_private: bool) -> tuple[list[str], list[str]]:
    """(units to try to acquire, units to give up), moving as few shards as it can: an
    instance gives up shards only above its share, and takes free ones only below it."""
    caps = dict(view.instances)
    caps[me] = capacity
    upper = min(capacity, water_level(len(shards), list(caps.values())))
    held = sorted((u for u in mine if u != PRIVATE_UNIT), key=lambda u: preference(me, u), reverse=True)
    release = held[upper:] if len(held) > upper else []
    acquire: list[str] = []
    if len(held) < upper:
        free = [u for u in shards if u not in mine and view.owners.get(u) in (None, me)]
        free.sort(key=lambda u: preference(me, u), reverse=True)
        acquire = free[:upper - len(held)]
    if want_private and PRIVATE_UNIT not in mine and view.owners.get(PRIVATE_UNIT) in (None, me):
        acquire.insert(0, PRIVATE_UNIT)
    return acquire, release


# -- one unit held ---------------------------------------------------------------------------------
class Lease:
    """A unit this process owns: frames of the unit are handed off only while ``valid()``.
    ``extra`` goes into every envelope of the unit (AMQP headers ``instance``, ``owner_epoch``)."""

    __slots__ = ("unit", "epoch", "valid_until", "since", "extra")

    def __init__(self, unit: str, instance: str, epoch: int, valid_until: float, since: float | None = None):
        self.unit, self.epoch, self.valid_until = unit, epoch, valid_until
        self.since = since if since is not None else time.time()
        self.extra = {"oi": instance, "oe": epoch} if instance else {}

    def valid(self) -> bool:
        return clock() < self.valid_until


ALWAYS = Lease("all", "", 0, math.inf)   # no coordination (a Manager used on its own, in tests)


@dataclass
class Acquired:
    unit: str
    epoch: int
    previous_owner: str | None
    previous_epoch: int | None
    previous_renewed_at: float | None    # epoch seconds
    released: bool                       # the old owner gave it up (else it expired, or none)
    at: float                            # database time of the takeover, epoch seconds

    def announcement(self, instance: str) -> dict:
        if self.previous_owner is None:
            reason = "first_owner"
        elif self.previous_owner == instance:
            reason = "reacquired"      # its own unit again: after an ingest restart or a lost lease
        else:
            reason = "handed_over" if self.released else "expired"
        gap_s = None if self.previous_renewed_at is None else round(max(0.0, self.at - self.previous_renewed_at), 3)
        return {"unit": self.unit, "old_owner": self.previous_owner, "old_epoch": self.previous_epoch,
                "new_owner": instance, "new_epoch": self.epoch, "reason": reason,
                "gap_from": self.previous_renewed_at, "gap_to": self.at, "gap_s": gap_s}


class InstanceConflict(Exception):
    """Another live stack holds this instance id, or splits topics differently: fatal."""


# -- the tables ----------------------------------------------------------------------------------
_REGISTER = """
INSERT INTO gateway_instances AS g (instance_id, token, host, pid, api_bind, shards, capacity, private)
VALUES (%(id)s, %(token)s, %(host)s, %(pid)s, %(api)s, %(shards)s, %(capacity)s, %(private)s)
ON CONFLICT (instance_id) DO UPDATE SET token = EXCLUDED.token, host = EXCLUDED.host, pid = EXCLUDED.pid,
    api_bind = EXCLUDED.api_bind, shards = EXCLUDED.shards, capacity = EXCLUDED.capacity,
    private = EXCLUDED.private, started_at = now(), heartbeat_at = now(), stopped_at = NULL
WHERE g.token = EXCLUDED.token OR g.stopped_at IS NOT NULL OR g.heartbeat_at <= now() - make_interval(secs => %(ttl)s)
RETURNING instance_id
"""
_HEARTBEAT = """
UPDATE gateway_instances SET heartbeat_at = now(), pid = %(pid)s
WHERE instance_id = %(id)s AND token = %(token)s AND stopped_at IS NULL RETURNING 1
"""
_RENEW = """
UPDATE gateway_leases SET renewed_at = now(), expires_at = now() + make_interval(secs => %(ttl)s)
WHERE owner = %(id)s AND expires_at > now()
  AND (unit, epoch) IN (SELECT * FROM unnest(%(units)s::text[], %(epochs)s::bigint[]))
RETURNING unit
"""
_READ = """
SELECT unit, CASE WHEN owner IS NOT NULL AND expires_at > now() THEN owner END FROM gateway_leases;
"""
_LIVE = """
SELECT instance_id, capacity, private FROM gateway_instances
WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => %(ttl)s)
"""
_ACQUIRE = """
WITH prev AS (
    SELECT unit, owner, holder, epoch, renewed_at, expires_at FROM gateway_leases
    WHERE unit = ANY(%(units)s) AND (owner IS NULL OR expires_at <= now() OR owner = %(id)s)
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE gateway_leases l SET owner = %(id)s, holder = %(id)s, epoch = l.epoch + 1, acquired_at = now(),
        renewed_at = now(), expires_at = now() + make_interval(secs => %(ttl)s)
    FROM prev WHERE l.unit = prev.unit
    RETURNING l.unit, l.epoch, prev.holder, prev.epoch AS prev_epoch, prev.renewed_at, prev.expires_at,
              prev.owner IS NULL AS released
), hist AS (
    INSERT INTO gateway_lease_history (unit, epoch, owner, acquired_at, previous_owner, previous_epoch,
                                       previous_renewed_at, previous_expires_at)
    SELECT unit, epoch, %(id)s, now(), holder, CASE WHEN holder IS NOT NULL THEN prev_epoch END, renewed_at,
           CASE WHEN released THEN renewed_at ELSE expires_at END FROM taken
)
SELECT unit, epoch, holder, prev_epoch, extract(epoch FROM renewed_at)::float8, released,
       extract(epoch FROM now())::float8 FROM taken
"""
_RELEASE = """
UPDATE gateway_leases SET owner = NULL, renewed_at = now(), expires_at = now()
WHERE owner = %(id)s AND (unit, epoch) IN (SELECT * FROM unnest(%(units)s::text[], %(epochs)s::bigint[]))
RETURNING unit
"""


class LeaseDB:
    """The statements, on one kept connection, called from one worker thread at a time."""

    def __init__(self, settings, token: str | None = None, host: str | None = None):
        self.url, self.s = settings.database_url, settings
        self.host = host or socket.gethostname()
        # The stack, not the process: a restarted ingest of the same stack is the same instance.
        self.token = token or f"{self.host}:{settings.run_dir}"
        self.units = [PRIVATE_UNIT] + shard_units(settings.shards)
        self.conn = None
        timeout_ms = int(max(500, settings.lease_renew_s * 1000))
        self.options = f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"

    def _connection(self):
        conn = self.conn
        if conn is None or conn.closed:
            conn = self.conn = psycopg2.connect(self.url, connect_timeout=max(2, int(self.s.lease_renew_s)),
                                                application_name=f"ws-gateway-leases-{self.s.instance_id}",
                                                options=self.options, keepalives=1, keepalives_idle=2,
                                                keepalives_interval=1, keepalives_count=2,
                                                tcp_user_timeout=int(self.s.lease_renew_s * 1000) + 1000)
            conn.autocommit = True
        return conn

    def _run(self, fn):
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                return fn(cur)
        except psycopg2.Error:
            if self.conn is conn:
                self.conn = None
            try:
                conn.close()
            except psycopg2.Error:
                pass
            raise

    def abandon(self) -> None:
        """A call hangs on the kept connection (a half-open link): the next call opens another;
        the hung one closes its own when it finally fails."""
        self.conn = None

    def _args(self, **kw) -> dict:
        return {"id": self.s.instance_id, "token": self.token, "ttl": self.s.lease_ttl_s, "pid": os.getpid(), **kw}

    def register(self) -> None:
        """Take the instance id (refused while another stack's heartbeat for it is live) and
        make sure every unit has its lease row."""
        def run(cur):
            cur.execute("SELECT instance_id, shards FROM gateway_instances WHERE instance_id <> %(id)s "
                        "AND stopped_at IS NULL AND shards <> %(shards)s "
                        "AND heartbeat_at > now() - make_interval(secs => %(ttl)s)",
                        self._args(shards=self.s.shards))
            other = cur.fetchone()
            if other:
                raise InstanceConflict(f"GW_SHARDS={self.s.shards} but live instance {other[0]!r} splits public "
                                       f"topics into {other[1]} shards: every instance must use the same count")
            cur.execute(_REGISTER, self._args(host=self.host, api=self.s.api_bind, shards=self.s.shards,
                                              capacity=self.s.shard_capacity, private=self.s.has_private))
            if cur.fetchone() is None:
                cur.execute("SELECT host, token, extract(epoch FROM now() - heartbeat_at)::float8 "
                            "FROM gateway_instances WHERE instance_id = %(id)s", self._args())
                row = cur.fetchone() or ("?", "?", 0.0)
                raise InstanceConflict(
                    f"GW_INSTANCE_ID={self.s.instance_id!r} is in use by a live instance ({row[1]}, heartbeat "
                    f"{row[2]:.1f} s ago): give this one its own GW_INSTANCE_ID, or stop the other first")
            cur.execute("INSERT INTO gateway_leases (unit) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                        (self.units,))
            # instances gone for a day (a replaced container's host name, say) leave the status page
            cur.execute("DELETE FROM gateway_instances WHERE heartbeat_at < now() - interval '1 day' "
                        "AND instance_id <> %(id)s", self._args())
        self._run(run)

    def tick(self, held: dict[str, int]) -> tuple[set[str], View]:
        """Heartbeat, renew ``held`` (unit -> epoch), read the others: (units renewed, view)."""
        def run(cur):
            cur.execute(_HEARTBEAT, self._args())
            if cur.fetchone() is None:
                raise InstanceConflict(f"GW_INSTANCE_ID={self.s.instance_id!r} was taken by another stack "
                                       "(this one's heartbeat had expired)")
            renewed: set[str] = set()
            if held:
                units = list(held)
                cur.execute(_RENEW, self._args(units=units, epochs=[held[u] for u in units]))
                renewed = {r[0] for r in cur.fetchall()}
            cur.execute(_LIVE, self._args())
            live = cur.fetchall()
            cur.execute(_READ)
            owners = {u: o for u, o in cur.fetchall()}
            return renewed, View({i: c for i, c, _ in live}, owners, {i for i, _, p in live if p})
        return self._run(run)

    def acquire(self, units: list[str]) -> list[Acquired]:
        def run(cur):
            cur.execute(_ACQUIRE, self._args(units=units))
            return [Acquired(u, e, h, pe, r, rel, at) for u, e, h, pe, r, rel, at in cur.fetchall()]
        return self._run(run)

    def release(self, held: dict[str, int]) -> list[str]:
        """Give up ``held`` (unit -> epoch); returns the units that were still ours to give."""
        if not held:
            return []
        units = list(held)

        def run(cur):
            cur.execute(_RELEASE, self._args(units=units, epochs=[held[u] for u in units]))
            return sorted(r[0] for r in cur.fetchall())
        return self._run(run)

    def deregister(self) -> None:
        self._run(lambda cur: cur.execute("UPDATE gateway_instances SET stopped_at = now() "
                                          "WHERE instance_id = %(id)s AND token = %(token)s", self._args()))

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass


# -- the coordinator --------------------------------------------------------------------------------
class Coordinator:
    """Renews what this process owns, fences what it can no longer renew, gives up and takes
    units as instances come and go. ``on_acquired(Acquired, Lease)`` and ``on_lost(unit, why)``
    are called on the event loop; ``on_lost`` runs before the unit is released in the table."""

    def __init__(self, settings, db: LeaseDB, on_acquired, on_lost):
        self.s, self.db = settings, db
        self.me = settings.instance_id
        self.on_acquired, self.on_lost = on_acquired, on_lost
        self.shards = shard_units(settings.shards)
        self.held: dict[str, Lease] = {}
        self.registered = False
        self.view = View()
        self.state = {"database": None, "error": None, "last_renewal": None, "acquired": 0, "lost": 0,
                      "released": 0}
        self._warn = RateLimited(log, 5.0)
        self.first_tick = asyncio.Event()    # set once the first attempt to register and acquire ended

    # -- used on the hot path ----------------------------------------------------------------
    def lease_for(self, endpoint: str, key: str) -> Lease | None:
        """The valid lease of the unit ``key`` belongs to, None when this process does not own it."""
        lease = self.held.get(unit_of(endpoint, key, self.s.shards))
        return lease if lease is not None and lease.valid() else None

    def private_elsewhere(self) -> bool:
        """Another live instance has Bybit keys: the private stream is its to hold, not ours to refuse."""
        return bool(self.view.private - {self.me})

    def owns(self, unit: str) -> bool:
        lease = self.held.get(unit)
        return lease is not None and lease.valid()

    # -- loops ------------------------------------------------------------------------------------
    async def _db(self, fn, *args):
        """``fn(*args)`` in a daemon thread of its own (one call at a time: every call is awaited),
        given up after DB_CALL_TIMEOUT_S: a call hung on a half-open connection must neither stop
        the renewals that follow nor keep the process from exiting."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(result, exc) -> None:
            if not fut.done():
                fut.set_exception(exc) if exc is not None else fut.set_result(result)

        def run() -> None:
            try:
                result, exc = fn(*args), None
            except BaseException as e:      # handed to the awaiting coroutine
                result, exc = None, e
            try:
                loop.call_soon_threadsafe(done, result, exc)
            except RuntimeError:            # the loop is closed: the process is stopping
                pass

        threading.Thread(target=run, name="leases-db", daemon=True).start()
        try:
            return await asyncio.wait_for(fut, max(DB_CALL_TIMEOUT_S, self.s.lease_renew_s * 1.5))
        except asyncio.TimeoutError:
            self.db.abandon()
            raise TimeoutError(f"no answer from PostgreSQL within {DB_CALL_TIMEOUT_S} s") from None

    async def run(self) -> None:
        """One tick every ``lease_renew_s``; InstanceConflict ends it (the caller exits)."""
        while True:
            started = clock()
            try:
                await self.tick()
            finally:
                self.first_tick.set()
            await asyncio.sleep(max(0.05, self.s.lease_renew_s - (clock() - started)))

    async def fence(self) -> None:
        """Drop a unit as soon as its lease may no longer be ours, whatever the database does."""
        while True:
            self._lose([u for u, lease in self.held.items() if not lease.valid()],
                       "not renewed in time: fenced before the lease can expire")
            await asyncio.sleep(FENCE_CHECK_S)

    async def tick(self) -> None:
        sent = clock()
        try:
            if not self.registered:
                await self._db(self.db.register)
                self.registered = True
                log.info("instance_registered", instance=self.me, shards=self.s.shards,
                         capacity=self.s.shard_capacity, private=self.s.has_private, token=self.db.token)
            held = {u: lease.epoch for u, lease in self.held.items()}
            renewed, view = await self._db(self.db.tick, held)
        except InstanceConflict:
            raise
        except Exception as exc:   # the database is away: keep what we own until it would expire
            self.state.update(database=False, error=str(exc).strip()[:300])
            self._warn("warning", "lease_renewal_failed", error=self.state["error"],
                       held=sorted(self.held), fenced_in_s={u: round(lease.valid_until - clock(), 1)
                                                            for u, lease in self.held.items()})
            return
        self.state.update(database=True, error=None, last_renewal=time.time())
        self.view = view
        refused = []
        for unit, epoch in held.items():
            lease = self.held.get(unit)
            if lease is None or lease.epoch != epoch:
                continue
            if unit in renewed:
                lease.valid_until = sent + self.s.lease_ttl_s - FENCE_MARGIN_S
            else:
                refused.append(unit)
        self._lose(refused, "renewal refused: the lease expired or another instance took it")
        acquire, release = plan(self.me, self.s.shard_capacity, set(self.held), view, self.shards,
                                self.s.has_private)
        if release:
            gone = {u: self.held[u].epoch for u in release}
            self._lose(release, "rebalance: above this instance's share")
            try:
                released = await self._db(self.db.release, gone)
                self.state["released"] += len(released)
                log.info("leases_released", units=released, instances=len(view.instances) + 1)
            except Exception as exc:   # it expires on its own
                self._warn("warning", "lease_release_failed", error=str(exc).strip()[:300])
        if acquire:
            sent = clock()
            try:
                got = await self._db(self.db.acquire, acquire)
            except Exception as exc:
                self._warn("warning", "lease_acquire_failed", error=str(exc).strip()[:300])
                return
            if got:      # one line for all: the details go out as system.owner_changed
                log.info("leases_acquired", units={a.unit: {k: v for k, v in a.announcement(self.me).items()
                                                            if k in ("new_epoch", "old_owner", "reason", "gap_s")}
                                                   for a in got})
            for a in got:
                lease = Lease(a.unit, self.me, a.epoch, sent + self.s.lease_ttl_s - FENCE_MARGIN_S, since=a.at)
                self.held[a.unit] = lease
                self.state["acquired"] += 1
                self.on_acquired(a, lease)

    def _lose(self, units: list[str], why: str) -> None:
        lost = {u: lease for u in units if (lease := self.held.pop(u, None)) is not None}
        if not lost:
            return
        for lease in lost.values():
            lease.valid_until = -math.inf      # whatever still holds it stops handing off now
        self.state["lost"] += len(lost)
        log.warning("leases_lost", units={u: lease.epoch for u, lease in lost.items()}, reason=why)
        for unit, lease in lost.items():
            self.on_lost(unit, lease, why)

    async def close(self) -> None:
        """Give every unit up (the caller has stopped handing off) and mark the instance stopped."""
        held = {u: lease.epoch for u, lease in self.held.items()}
        for lease in self.held.values():
            lease.valid_until = -math.inf
        self.held.clear()
        try:
            if self.registered:
                released = await self._db(self.db.release, held)
                await self._db(self.db.deregister)
                log.info("instance_stopped", released=released)
        except Exception as exc:
            log.warning("lease_release_failed", error=str(exc).strip()[:300], action="they expire on their own")
        finally:
            self.db.close()

    def status(self) -> dict:
        return {"instance": self.me, "shards": self.s.shards, "capacity": self.s.shard_capacity,
                "owned": {u: {"epoch": lease.epoch, "since": lease.since,
                              "valid_for_s": round(lease.valid_until - clock(), 2)}
                          for u, lease in sorted(self.held.items())},
                "live_instances": sorted(set(self.view.instances) | {self.me}), **self.state}


# -- the reconciler's way out, gated by the private lease ------------------------------------------
class _GatedDownstream:
    def __init__(self, downstream, gate: "UnitGate"):
        self.downstream, self.gate = downstream, gate

    def send(self, parts: list[bytes], cls: str) -> None:
        lease = self.gate.lease()
        if lease is None:
            self.gate.dropped += 1
            return
        if lease.extra:
            header = orjson.loads(parts[1])
            header["x"] = {**(header.get("x") or {}), **lease.extra}
            parts = [parts[0], orjson.dumps(header), parts[2]]
        self.downstream.send(parts, cls)


class UnitGate:
    """What the reconciler sends goes out only while this process owns the private unit, with
    that unit's owner and epoch; anything else (a reconciliation that ended after the lease
    was lost) is dropped and counted."""

    def __init__(self, handoff, lease):
        self.handoff, self.lease = handoff, lease
        self.dropped = 0
        self.publisher = _GatedDownstream(handoff.publisher, self)
        self.persister = _GatedDownstream(handoff.persister, self)

    @property
    def epoch(self) -> str:
        return self.handoff.epoch

    def system(self, kind: str, body: dict, endpoint: str = "", trace_id: str = "") -> None:
        lease = self.lease()
        if lease is None:
            self.dropped += 1
            return
        self.handoff.system(kind, body, endpoint=endpoint, trace_id=trace_id, extra=lease.extra)
