-- depends: 0003_write_throughput
-- The API lists subscriptions in pages ordered by (created_at, id), live rows by default.
-- Without an index every page sorted every matching row: measured with prepared
-- statements, PostgreSQL CPU per page 200 -> 100 us at 400 subscriptions, 2.7 -> 0.75 ms at
-- 10,000. Filters on a live status (pending, active, failed) imply the predicate and use it
-- too. created_at and id never change, so ingest's status and last-event updates stay HOT.
CREATE INDEX subscriptions_page ON subscriptions (created_at, id) WHERE status <> 'removed';
