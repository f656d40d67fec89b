"""What is received but not yet written: the latest row per key, bounded.

Rows of the same key are merged with the rank rule of ``persister.rows`` (the
same rule the SQL guard applies), so a batch never holds a key twice and the
merge result does not depend on arrival order. Past ``max_rows`` new keys go
to the append-only spool in arrival order and come back as room frees up;
rows of a key already in memory are merged in place and take no room.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

from persister.rows import TABLES, BadRecord, Row
from persister.spool import RowSpool

SUBSCRIPTIONS = "subscriptions"
MAX_DEAD = 10_000  # dead letters held while the database is away; past it they are only logged


@dataclass(frozen=True, slots=True)
class SubStatus:
    endpoint: str
    topic: str
    status: str
    error: str | None
    at_ms: int


@dataclass
class Batch:
    rows: list[Row] = field(default_factory=list)
    sub_status: list[SubStatus] = field(default_factory=list)
    activity: dict[tuple[str, str], int] = field(default_factory=dict)
    dead: list[BadRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows) + len(self.sub_status) + len(self.activity) + len(self.dead)


class Pending:
    def __init__(self, spool: RowSpool, max_rows: int = 100_000):
        self.spool = spool
        self.max_rows = max_rows
        self._tables: dict[str, dict[tuple, Row]] = {t: {} for t in TABLES}
        self._n = 0
        self._sub_status: dict[tuple[str, str], SubStatus] = {}
        self._activity: dict[tuple[str, str], int] = {}
        self._dead: list[BadRecord] = []
        self.dead_dropped = 0
        # When the oldest unwritten item arrived (monotonic s); rows spooled by an earlier run are due now.
        self.oldest_at: float | None = float("-inf") if len(spool) else None

    # --- adding ---------------------------------------------------------------
    def add(self, row: Row, now: float) -> None:
        table = self._tables[row.table]
        if row.key not in table and (len(self.spool) or self._n >= self.max_rows):
            self.spool.append([row])   # keep arrival order: once spilling, new keys queue behind
        else:
            self._merge(row)
        self._touch(now)

    def _merge(self, row: Row) -> None:
        table = self._tables[row.table]
        current = table.get(row.key)
        if current is None:
            table[row.key] = row
            self._n += 1
        elif row.rank >= current.rank:
            table[row.key] = row

    def add_sub_status(self, s: SubStatus, now: float) -> None:
        key = (s.endpoint, s.topic)
        current = self._sub_status.get(key)
        if current is None or s.at_ms >= current.at_ms:
            self._sub_status[key] = s
        self._touch(now)

    def add_activity(self, endpoint: str, topic: str, ms: int, now: float) -> None:
        key = (endpoint, topic)
        if ms > self._activity.get(key, -1):
            self._activity[key] = ms
        self._touch(now)

    def add_dead(self, bad: BadRecord, now: float) -> None:
        if len(self._dead) >= MAX_DEAD:
            self.dead_dropped += 1
            return
        self._dead.append(bad)
        self._touch(now)

    def _touch(self, now: float) -> None:
        if self.oldest_at is None:
            self.oldest_at = now

    # --- taking and giving back -----------------------------------------------
    def take(self, n: int) -> Batch:
        """Up to ``n`` rows (plus all subscription updates and dead letters) to write now."""
        room = self.max_rows - self._n
        if len(self.spool) and room > 0:
            for row in self.spool.read(min(room, max(n, 1))):
                self._merge(row)
        batch = Batch(sub_status=list(self._sub_status.values()), activity=dict(self._activity),
                      dead=self._dead)
        self._sub_status, self._activity, self._dead = {}, {}, []
        for table in self._tables.values():
            want = n - len(batch.rows)
            if want <= 0:
                break
            keys = list(islice(table, want))
            batch.rows.extend(table.pop(k) for k in keys)
        self._n -= len(batch.rows)
        if not self.count:
            self.oldest_at = None
        return batch

    def restore(self, batch: Batch, now: float) -> None:
        """Give back a batch that could not be written; newer rows received meanwhile win."""
        for row in batch.rows:
            self._merge(row)
        for s in batch.sub_status:
            self.add_sub_status(s, now)
        for key, ms in batch.activity.items():
            self.add_activity(*key, ms, now)
        for bad in batch.dead:
            self.add_dead(bad, now)
        if len(batch):
            self._touch(now)

    def spill_all(self) -> int:
        """Move every row in memory to the spool (shutdown while the database is away)."""
        rows = [row for table in self._tables.values() for row in table.values()]
        for table in self._tables.values():
            table.clear()
        self._n = 0
        self.spool.append(rows)
        return len(rows)

    # --- sizes ----------------------------------------------------------------
    @property
    def rows_in_memory(self) -> int:
        return self._n

    @property
    def count(self) -> int:
        return self._n + len(self.spool) + len(self._sub_status) + len(self._activity) + len(self._dead)

    def sizes(self) -> dict[str, int]:
        out = {t: len(rows) for t, rows in self._tables.items()}
        out[SUBSCRIPTIONS] = len(self._sub_status) + len(self._activity)
        out["dead_letters"] = len(self._dead)
        return out
