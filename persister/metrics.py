"""The persister's Prometheus metrics (multiprocess mode: the API's /metrics aggregates).

Gauges use ``livesum``/``livemax`` so a dead persister's last values drop out once
it is marked dead.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter("wsgw_persister_messages_total", "Envelopes received from ingest, by kind", ["kind"])
BAD_INPUT = Counter("wsgw_persister_bad_input_total",
                    "Envelopes or payloads that could not be used, by reason", ["reason"])
ROWS_WRITTEN = Counter("wsgw_persister_rows_written_total",
                       "Rows committed to PostgreSQL (applied or already current), by table", ["table"])
BATCHES = Counter("wsgw_persister_batches_total", "Batches committed, by mode (copy or row_by_row)", ["mode"])
BATCH_SECONDS = Histogram("wsgw_persister_batch_seconds", "Time to write and commit one batch",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))
DEAD_LETTERS = Counter("wsgw_persister_dead_letters_total",
                       "Rows or records that could not be written, by table", ["table"])
PENDING = Gauge("wsgw_persister_pending", "Rows received and not yet written, by table", ["table"],
                multiprocess_mode="livesum")
SPOOLED = Gauge("wsgw_persister_spooled", "Rows waiting in the on-disk spool", multiprocess_mode="livesum")
DB_UP = Gauge("wsgw_persister_db_up", "1 when PostgreSQL is reachable with the schema in place",
              multiprocess_mode="livemax")
DB_OUTAGES = Counter("wsgw_persister_db_outages_total", "Times the database became unavailable")
SCHEMA_WAITS = Counter("wsgw_persister_schema_waits_total",
                       "Connection attempts that found migrations pending")

# Zero series for dead letters and bad input, so dashboards and alerts see 0 rather than no data.
for _table in ("balances", "orders", "executions", "positions"):
    DEAD_LETTERS.labels(_table)
for _reason in ("bad_envelope", "bad_json", "not_private", "unexpected_kind", "bad_rest", "bad_sub_status",
                "bad_activity"):   # persister.intake.BadInput reasons
    BAD_INPUT.labels(_reason)
