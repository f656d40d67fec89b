"""Reading the desired subscriptions from PostgreSQL (the API writes them there first).

Called in a worker thread, so a slow or absent database never stalls the sockets.
"""
from __future__ import annotations

import psycopg2

from common.substatus import HELD, sql_list
from common.topics import Topic, TopicError, build_topic

QUERY = f"""
SELECT id::text, channel, endpoint, category, symbol, depth, interval, topic, status, coalesce(trace_id, '')
FROM subscriptions WHERE status IN ({sql_list(HELD)})
"""


def load_desired(database_url: str) -> tuple[dict[str, tuple[Topic, str, str]], list[tuple[str, str]]]:
    """Returns ({key: (topic, trace_id, status)}, [(row id, why invalid)])."""
    conn = psycopg2.connect(database_url, connect_timeout=5, application_name="ws-gateway-ingest")
    try:
        with conn.cursor() as cur:
            cur.execute(QUERY)
            rows = cur.fetchall()
    finally:
        conn.close()
    desired, invalid = {}, []
    for sid, channel, endpoint, category, symbol, depth, interval, name, status, trace_id in rows:
        try:
            topic = build_topic(channel, category, symbol, depth, interval)
        except TopicError as exc:
            invalid.append((sid, str(exc)))
            continue
        if topic.endpoint != endpoint or topic.name != name:
            invalid.append((sid, f"stored topic {endpoint}:{name} does not match its fields ({topic.key})"))
            continue
        desired[topic.key] = (topic, trace_id, status)
    return desired, invalid
