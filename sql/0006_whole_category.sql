-- depends: 0005_instances_leases
-- A whole-category subscription (symbol '*') is one row; ingest expands it into a topic per
-- listed symbol and writes back how many symbols it covers and which of their topics Bybit
-- refused (named, so one bad topic does not fail the whole). NULL for single-topic rows.
ALTER TABLE subscriptions ADD COLUMN symbol_count integer, ADD COLUMN refused_topics text[];
