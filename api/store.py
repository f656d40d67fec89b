"""Subscription rows in PostgreSQL (the source of truth ingest converges to).

Single statements run in autocommit; the delete path runs in the caller's transaction
(SELECT ... FOR UPDATE, then one UPDATE). The partial unique index
``subscriptions_live_topic`` keeps one live row per (endpoint, topic).
"""
from __future__ import annotations

from dataclasses import dataclass

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
    """Create the live row for ``topic`` or add ``requester`` to the existing one, in one
    statement (the partial unique index arbitrates concurrent first requests).

    A failed row requested again goes back to pending so ingest retries it.
    """
    with _cur(conn) as cur:
        cur.execute(
            f"""INSERT INTO subscriptions AS s (channel, endpoint, category, symbol, depth, interval, topic,
                                                status, requesters, trace_id)
                VALUES (%(channel)s, %(endpoint)s, %(category)s, %(symbol)s, %(depth)s, %(interval)s, %(topic)s,
                        'pending', ARRAY[%(who)s]::text[], %(trace)s)
                ON CONFLICT (endpoint, topic) WHERE status <> 'removed' DO UPDATE SET
                  requesters = ARRAY(SELECT DISTINCT r FROM unnest(s.requesters || %(who)s::text) AS r ORDER BY r),
                  status = CASE WHEN s.status = 'failed' THEN 'pending' ELSE s.status END,
                  last_error = CASE WHEN s.status = 'failed' THEN NULL ELSE s.last_error END,
                  trace_id = CASE WHEN s.status = 'failed' THEN %(trace)s ELSE s.trace_id END,
                  updated_at = CASE WHEN s.status = 'failed' OR NOT (%(who)s = ANY(s.requesters))
                                    THEN now() ELSE s.updated_at END
                RETURNING {COLUMNS}, (xmax = 0) AS created""",
            {"channel": topic.channel, "endpoint": topic.endpoint, "category": topic.category,
             "symbol": topic.symbol, "depth": topic.depth, "interval": topic.interval, "topic": topic.name,
             "who": requester, "trace": trace_id})
        row = cur.fetchone()
    created = bool(row.pop("created"))
    return Upsert(row, created=created, needs_add=True)


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
