"""PostgreSQL writer: one transaction per batch.

Rows go through COPY into a temporary staging table per table, then one prepared
``INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE <guard>`` per table
(about twice as fast as execute_values; docs/decisions/persister-staging-tables.md). The guard is the
rank rule of ``persister.rows`` in SQL, so a replayed or late event changes
nothing. When a batch fails on its data, it is written again row by row under
savepoints: the rows PostgreSQL refuses go to ``dead_letters`` and the others
are written. A lost connection raises ``DatabaseDown`` and the caller keeps the
batch; a missing table or column raises ``SchemaNotReady``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extras

from persister.pending import Batch
from persister.rows import BALANCES, COLUMNS, EXECUTIONS, KEYS, ORDERS, POSITIONS, TABLES, BadRecord, Row


class DatabaseDown(Exception):
    """The connection is gone or unusable; nothing of the batch was committed."""


class SchemaNotReady(Exception):
    """A table or column the persister writes does not exist yet (migrations pending)."""


# raw is json (no equality operator): compare its text, which is exactly what was received.
_NEWER = ("EXCLUDED.{ts} > t.{ts} OR (EXCLUDED.{ts} = t.{ts} AND EXCLUDED.raw::text IS DISTINCT FROM t.raw::text)")
GUARDS = {
    BALANCES: _NEWER.format(ts="exchange_ts"),
    POSITIONS: _NEWER.format(ts="updated_time"),
    # A terminal status beats an open one whatever the timestamps; an open one never replaces it.
    ORDERS: ("(t.is_open AND NOT EXCLUDED.is_open) OR (t.is_open = EXCLUDED.is_open AND ("
             + _NEWER.format(ts="updated_time") + "))"),
    # Executions never change; only a full record completes one first seen on execution.fast.
    EXECUTIONS: "t.source = 'ws_fast' AND EXCLUDED.source <> 'ws_fast'",
}
SUBSCRIPTION_COLUMNS = ("endpoint", "topic", "status", "last_error", "status_at", "updated_at", "last_event_at")
DEAD_LETTER_COLUMNS = ("event_id", "table_name", "error", "payload")

_SUB_STATUS_SQL = """
UPDATE subscriptions SET status = %(status)s, last_error = %(error)s,
       status_at = to_timestamp(%(at_ms)s / 1000.0), updated_at = now()
 WHERE endpoint = %(endpoint)s AND topic = %(topic)s AND status <> 'removed'
   AND (status_at IS NULL OR status_at <= to_timestamp(%(at_ms)s / 1000.0))"""
_ACTIVITY_SQL = """
UPDATE subscriptions s SET last_event_at = to_timestamp(v.ms / 1000.0)
  FROM (VALUES %s) AS v(endpoint, topic, ms)
 WHERE s.endpoint = v.endpoint AND s.topic = v.topic AND s.status <> 'removed'
   AND (s.last_event_at IS NULL OR s.last_event_at < to_timestamp(v.ms / 1000.0))"""
_DEAD_SQL = "INSERT INTO dead_letters (event_id, table_name, error, payload) VALUES %s"
# SQLSTATE class 54 ("row is too big", "index row size exceeds maximum"): the row's fault, not
# the connection's, although psycopg2 files it under OperationalError.
_ROW_TOO_BIG = psycopg2.errors.ProgramLimitExceeded


# A staged row must fit one page (the stage tables have no TOAST table, see PostgresSink.connect).
# A raw object longer than this skips the stage: it is upserted on its own, in the same
# transaction. Every other text column holds a piece of raw, so the row stays under 8160 bytes
# for ASCII; a row that still does not fit fails the COPY and the batch is written row by row.
STAGE_MAX_RAW = 2_500


def upsert_sql(table: str, source: str) -> str:
    cols = COLUMNS[table]
    keys = KEYS[table]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in keys)
    return (f"INSERT INTO {table} AS t ({', '.join(cols)}) {source} "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}, written_at = now() "
            f"WHERE {GUARDS[table]}")


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _escape(v: str) -> str:
    if "\\" in v or "\t" in v or "\n" in v or "\r" in v:   # rare: only then pay for translate
        return v.translate(_COPY_ESCAPES)
    return v


def copy_text(rows: list[Row]) -> bytes:
    """Rows in COPY text format (tab separated, \\N for NULL, backslash escapes)."""
    # One comprehension, no call per value: this loop is most of the Python time of a batch.
    return "".join([
        "\t".join(["\\N" if v is None else _escape(v) if v.__class__ is str
                   else ("t" if v else "f") if v.__class__ is bool else str(v) for v in r.values]) + "\n"
        for r in rows]).encode()


class _CopyStream:
    """COPY data made while PostgreSQL parses what was already sent: psycopg2 calls read()
    until it gets b"", and libpq puts each chunk on the socket at once. Making the whole text
    first left PostgreSQL idle for that time (about 3 us a row for an order): streamed in chunks
    of 64 rows, batch-1000 upserts went from 52k to 63k orders/s (best of 8 runs each, one session)."""

    __slots__ = ("_rows", "_at", "_chunk")

    def __init__(self, rows: list[Row], chunk: int):
        self._rows, self._at, self._chunk = rows, 0, chunk

    def read(self, size: int = -1) -> bytes:
        at = self._at
        self._at = at + self._chunk
        return copy_text(self._rows[at:at + self._chunk]) if at < len(self._rows) else b""


COPY_CHUNK_ROWS = 64   # 32: the same; 128: slower (PostgreSQL waits for the first chunk longer)


def _strip_nul(obj):
    """PostgreSQL text and jsonb cannot hold NUL; a dead letter must still be storable."""
    if isinstance(obj, str):
        return obj.replace("\x00", "\\u0000")
    if isinstance(obj, list):
        return [_strip_nul(x) for x in obj]
    if isinstance(obj, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in obj.items()}
    return obj


def _payload(record) -> str:
    if isinstance(record, Row):
        try:
            record = orjson.loads(record.raw)
        except orjson.JSONDecodeError:
            record = record.raw
    return orjson.dumps(_strip_nul(record), default=str).decode()


@dataclass
class WriteResult:
    written: dict[str, int] = field(default_factory=dict)   # rows committed per table
    dead: list[BadRecord] = field(default_factory=list)     # rows PostgreSQL refused (now dead letters)
    dead_letters: int = 0                                    # dead letter rows inserted
    row_by_row: bool = False
    seconds: float = 0.0


class PostgresSink:
    def __init__(self, dsn: str, statement_timeout_ms: int = 5_000, connect_timeout_s: int = 3):
        self.dsn = dsn
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout_s = connect_timeout_s
        self.conn = None

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def connect(self) -> None:
        """Connect and check the schema; raises DatabaseDown or SchemaNotReady."""
        self.close()
        try:
            conn = psycopg2.connect(self.dsn, connect_timeout=self.connect_timeout_s,
                                    application_name="wsgw-persister", keepalives=1, keepalives_idle=10,
                                    keepalives_interval=5, keepalives_count=3,
                                    options=f"-c statement_timeout={self.statement_timeout_ms}")
        except psycopg2.Error as exc:
            raise DatabaseDown(_first_line(exc)) from None
        try:
            with conn.cursor() as cur:
                for table in TABLES:
                    cur.execute(f"SELECT {', '.join(COLUMNS[table])}, written_at FROM {table} LIMIT 0")
                cur.execute(f"SELECT {', '.join(SUBSCRIPTION_COLUMNS)} FROM subscriptions LIMIT 0")
                cur.execute(f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM dead_letters LIMIT 0")
                for table in TABLES:
                    _create_stage(cur, table)
                    cur.execute(f"PREPARE upsert_{table} AS " + upsert_sql(
                        table, f"SELECT {', '.join(COLUMNS[table])} FROM stage_{table}"))
            conn.commit()
        except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn) as exc:
            conn.close()
            raise SchemaNotReady(_first_line(exc)) from None
        except psycopg2.Error as exc:
            conn.close()
            raise DatabaseDown(_first_line(exc)) from None
        self.conn = conn

    def ping(self) -> None:
        """A round trip on the idle connection; raises DatabaseDown when it is gone."""
        if not self.connected:
            raise DatabaseDown("not connected")
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT 1")
            self.conn.rollback()
        except psycopg2.Error as exc:
            self.close()
            raise DatabaseDown(_first_line(exc)) from None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
        self.conn = None

    def write(self, batch: Batch) -> WriteResult:
        """Write one batch in one transaction; bad rows become dead letters."""
        if not self.connected:
            raise DatabaseDown("not connected")
        started = time.perf_counter()
        try:
            try:
                result = self._write_fast(batch)
            except _ROW_TOO_BIG:
                self.conn.rollback()
                result = self._write_row_by_row(batch)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                raise
            except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn):
                raise
            except (psycopg2.Error, ValueError):
                self.conn.rollback()
                result = self._write_row_by_row(batch)
        except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn) as exc:
            self.close()
            raise SchemaNotReady(_first_line(exc)) from None
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            self.close()
            raise DatabaseDown(_first_line(exc)) from None
        result.seconds = time.perf_counter() - started
        return result

    # --- the two ways of writing a batch -------------------------------------
    def _write_fast(self, batch: Batch) -> WriteResult:
        by_table: dict[str, list[Row]] = {}
        for row in batch.rows:
            by_table.setdefault(row.table, []).append(row)
        with self.conn.cursor() as cur:
            for table, rows in by_table.items():
                staged = [r for r in rows if len(r.raw) <= STAGE_MAX_RAW]
                if len(staged) < len(rows):
                    for row in rows:
                        if len(row.raw) > STAGE_MAX_RAW:
                            cur.execute(_values_upsert(row), row.values)
                if staged:
                    cur.copy_expert(f"COPY stage_{table} ({', '.join(COLUMNS[table])}) FROM STDIN",
                                    _CopyStream(staged, COPY_CHUNK_ROWS))
                    cur.execute(f"EXECUTE upsert_{table}")
            self._write_subscriptions(cur, batch)
            dead = self._insert_dead(cur, batch.dead)
        self.conn.commit()
        return WriteResult(written={t: len(r) for t, r in by_table.items()}, dead_letters=dead)

    def _write_row_by_row(self, batch: Batch) -> WriteResult:
        result = WriteResult(row_by_row=True)
        with self.conn.cursor() as cur:
            for row in batch.rows:
                cur.execute("SAVEPOINT row")
                try:
                    cur.execute(_values_upsert(row), row.values)
                except _ROW_TOO_BIG as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT row")
                    result.dead.append(BadRecord(row.table, row.event_id, _first_line(exc), row))
                    continue
                except (psycopg2.OperationalError, psycopg2.InterfaceError,
                        psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn):
                    raise
                except (psycopg2.Error, ValueError) as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT row")
                    result.dead.append(BadRecord(row.table, row.event_id, _first_line(exc), row))
                    continue
                cur.execute("RELEASE SAVEPOINT row")
                result.written[row.table] = result.written.get(row.table, 0) + 1
            cur.execute("SAVEPOINT subs")
            try:
                self._write_subscriptions(cur, batch)
            except (psycopg2.OperationalError, psycopg2.InterfaceError,
                    psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn):
                raise
            except (psycopg2.Error, ValueError) as exc:
                cur.execute("ROLLBACK TO SAVEPOINT subs")
                result.dead.append(BadRecord("subscriptions", "", _first_line(exc),
                                             {"sub_status": [asdict(s) for s in batch.sub_status],
                                              "activity": [[*k, v] for k, v in batch.activity.items()]}))
            result.dead_letters = self._insert_dead(cur, batch.dead + result.dead)
        self.conn.commit()
        return result

    # --- subscriptions and dead letters --------------------------------------
    @staticmethod
    def _write_subscriptions(cur, batch: Batch) -> None:
        for s in batch.sub_status:
            cur.execute(_SUB_STATUS_SQL, {"status": s.status, "error": s.error, "at_ms": s.at_ms,
                                          "endpoint": s.endpoint, "topic": s.topic})
        if batch.activity:
            psycopg2.extras.execute_values(
                cur, _ACTIVITY_SQL, [(e, t, ms) for (e, t), ms in batch.activity.items()], page_size=1000)

    @staticmethod
    def _insert_dead(cur, dead: list[BadRecord]) -> int:
        if not dead:
            return 0
        psycopg2.extras.execute_values(
            cur, _DEAD_SQL, [(_strip_nul(d.event_id), d.table, _strip_nul(d.error), _payload(d.record))
                             for d in dead], page_size=1000)
        return len(dead)


def _create_stage(cur, table: str) -> None:
    """The temporary staging table of ``table``: its columns and types, emptied at every commit.

    Without a TOAST table: PostgreSQL truncates every ON COMMIT DELETE ROWS table at each
    commit of a transaction that touched a temporary table, and each TOAST table adds a file
    to truncate and an index to rebuild, four times per commit (perf: 22% of the backend's CPU
    at batch 100; COMMIT of 100 orders went from 1.3 to 0.4 ms). PostgreSQL 15 cannot declare a column's
    storage in CREATE TABLE, but it decides on the TOAST table after the whole ALTER TABLE:
    columns added and set to STORAGE PLAIN in the same statement get none.
    """
    cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (table,))
    types = dict(cur.fetchall())
    cur.execute(f"CREATE TEMP TABLE stage_{table} () ON COMMIT DELETE ROWS")
    cur.execute(f"ALTER TABLE stage_{table} " + ", ".join(
        f"ADD COLUMN {c} {types[c]}, ALTER COLUMN {c} SET STORAGE PLAIN" for c in COLUMNS[table]))


def _values_upsert(row: Row) -> str:
    return upsert_sql(row.table, "VALUES (" + ", ".join(["%s"] * len(row.values)) + ")")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
