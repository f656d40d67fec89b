-- depends: 0002_account_state
-- Write throughput: every index costs each upsert, and an in-place update of a row
-- whose indexed columns do not change is cheap only if its page has room (a HOT update: no
-- index entry, a smaller WAL record). Measured with bench/persister_bench.py; the API's order
-- queries with EXPLAIN ANALYZE on 200,000 orders (persister/README.md).
--
-- Orders keep their three indexes. Without orders_updated the unfiltered list (the API counts
-- every matching order, then sorts) took 85 ms instead of 51 at 200,000 orders, for about
-- 0.5 us of the ~16 us of PostgreSQL CPU an upsert costs. HOT updates for orders would need
-- updated_time out of every index and a fillfactor on a table that only grows.

-- Nothing reads executions by category and time (the API has no executions endpoint); the
-- lookup that remains is the fills of one order (executions_order).
DROP INDEX executions_time;

-- Balances and positions are small (one row per coin, per position) and updated in place;
-- their keys never change, so with room on the page every update is HOT. Half-empty pages
-- cost a few kB here. Applies to pages filled from now on.
ALTER TABLE balances SET (fillfactor = 50);
ALTER TABLE positions SET (fillfactor = 50);
