"""Subscription rows in PostgreSQL (the source of truth ingest converges to).

Each function runs in the caller's transaction; the caller commits. Rows for one
(endpoint, topic) are serialised with SELECT ... FOR UPDATE, and the partial unique
index ``subscriptions_live_topic`` settles two first requests racing each other.
"""
from __future__ import annotations

from dataclasses import dataclass

import psycopg2.errors
import psycopg2.extras

from common.topics import Topic

COLUMNS = ("id, channel, category, symbol, depth, interval, topic, endpoint, status, last_error, "
           "requesters, created_at, updated_at, last_event_at")


@dataclass(frozen=True)
class Upsert:
    row: dict
    created: bool
    needs_add: bool


def _cur(conn):
    return conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)


def request_topic(conn, topic: Topic, requester: str, trace_id: str) -> Upsert:
    """Create the live row for ``topic`` or add ``requester`` to the existing one.

    A failed row requested again goes back to pending so ingest retries it.
    """
    with _cur(conn) as cur:
        for _attempt in range(3):
            cur.execute(f"SELECT {COLUMNS} FROM subscriptions WHERE endpoint = %s AND topic = %s "
                        "AND status <> 'removed' FOR UPDATE", (topic.endpoint, topic.name))
            row = cur.fetchone()
            if row is not None:
                cur.execute(
                    f"""UPDATE subscriptions SET
                          requesters = ARRAY(SELECT DISTINCT r FROM unnest(requesters || %(who)s::text) AS r ORDER BY r),
                          status = CASE WHEN status = 'failed' THEN 'pending' ELSE status END,
                          last_error = CASE WHEN status = 'failed' THEN NULL ELSE last_error END,
                          trace_id = CASE WHEN status = 'failed' THEN %(trace)s ELSE trace_id END,
                          updated_at = CASE WHEN status = 'failed' OR NOT (%(who)s = ANY(requesters))
                                            THEN now() ELSE updated_at END
                        WHERE id = %(id)s RETURNING {COLUMNS}""",
                    {"who": requester, "trace": trace_id, "id": row["id"]})
                return Upsert(cur.fetchone(), created=False, needs_add=True)
            cur.execute("SAVEPOINT sub_insert")
            try:
                cur.execute(
                    f"""INSERT INTO subscriptions (channel, endpoint, category, symbol, depth, interval,
                                                   topic, status, requesters, trace_id)
                        VALUES (%s, %s, %s, %s, %s, %s, %s, 'pending', ARRAY[%s]::text[], %s)
                        RETURNING {COLUMNS}""",
                    (topic.channel, topic.endpoint, topic.category, topic.symbol, topic.depth,
                     topic.interval, topic.name, requester, trace_id))
            except psycopg2.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT sub_insert")   # a concurrent first request won
                continue
            return Upsert(cur.fetchone(), created=True, needs_add=True)
    raise RuntimeError("subscription row kept changing under us")


def get(conn, sub_id, for_update: bool = False) -> dict | None:
    with _cur(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM subscriptions WHERE id = %s" + (" FOR UPDATE" if for_update else ""),
                    (str(sub_id),))
        return cur.fetchone()


def set_requesters(conn, sub_id, requesters: list[str]) -> dict:
    with _cur(conn) as cur:
        cur.execute(f"UPDATE subscriptions SET requesters = %s, updated_at = now() WHERE id = %s "
                    f"RETURNING {COLUMNS}", (sorted(requesters), str(sub_id)))
        return cur.fetchone()


def mark_removed(conn, sub_id, trace_id: str) -> dict:
    with _cur(conn) as cur:
        cur.execute(f"""UPDATE subscriptions SET status = 'removed', requesters = '{{}}', removed_at = now(),
                               updated_at = now(), status_at = now(), trace_id = %s
                        WHERE id = %s RETURNING {COLUMNS}""", (trace_id, str(sub_id)))
        return cur.fetchone()


def mark_failed(conn, sub_id, error: str) -> dict | None:
    """ingest refused the topic: record why (only if the row is still live)."""
    with _cur(conn) as cur:
        cur.execute(f"""UPDATE subscriptions SET status = 'failed', last_error = %s, updated_at = now(),
                               status_at = now()
                        WHERE id = %s AND status <> 'removed' RETURNING {COLUMNS}""", (error, str(sub_id)))
        return cur.fetchone()


def _where(filters: dict) -> tuple[str, list]:
    clauses, args = [], []
    for column in ("status", "channel", "category", "symbol"):
        value = filters.get(column)
        if value is not None:
            clauses.append(f"{column} = %s")
            args.append(value)
    if filters.get("status") is None:
        clauses.append("status <> 'removed'")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def list_page(conn, filters: dict, limit: int, offset: int) -> tuple[list[dict], int]:
    where, args = _where(filters)
    with _cur(conn) as cur:
        cur.execute(f"SELECT {COLUMNS}, count(*) OVER () AS total FROM subscriptions{where} "
                    "ORDER BY created_at, id LIMIT %s OFFSET %s", (*args, limit, offset))
        rows = cur.fetchall()
        if rows:
            total = rows[0]["total"]
        else:
            cur.execute(f"SELECT count(*) AS total FROM subscriptions{where}", args)
            total = cur.fetchone()["total"]
    for row in rows:
        row.pop("total", None)
    return rows, total


def live_rows(conn) -> list[dict]:
    with _cur(conn) as cur:
        cur.execute("SELECT id, endpoint, topic, channel, depth, status, last_event_at FROM subscriptions "
                    "WHERE status <> 'removed' ORDER BY endpoint, topic")
        return cur.fetchall()
