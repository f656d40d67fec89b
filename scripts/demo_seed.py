"""Seed the demo (BYBIT_ENV=sim) with a few subscriptions when none is live, so someone with
no network and no keys sees events flowing at once. Writes PostgreSQL only, like the API:
ingest picks the rows up when it starts."""
from __future__ import annotations

import sys

import psycopg2

from common.config import load_settings
from common.topics import build_topic

DEMO = [("trades", "linear", "BTCUSDT"), ("tickers", "linear", "BTCUSDT"), ("orderbook", "linear", "BTCUSDT", 50)]
# With keys (scripts/run.sh gives the demo the simulator's), the account stream too.
DEMO_PRIVATE = [("order",), ("execution",), ("position",), ("wallet",)]


def main() -> int:
    settings = load_settings()
    conn = psycopg2.connect(settings.database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM subscriptions WHERE status <> 'removed'")
            if cur.fetchone()[0]:
                return 0
            demo = DEMO + (DEMO_PRIVATE if settings.has_private else [])
            for args in demo:
                t = build_topic(*args)
                cur.execute("INSERT INTO subscriptions (channel, endpoint, category, symbol, depth, interval, topic,"
                            " requesters) VALUES (%s,%s,%s,%s,%s,%s,%s, ARRAY['demo'])",
                            (t.channel, t.endpoint, t.category, t.symbol, t.depth, t.interval, t.name))
            print(f"demo: subscribed {', '.join(build_topic(*a).name for a in demo)}")
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
