-- depends: 0002_account_state
-- Write throughput (issue 5): every index costs each upsert, and an in-place update of a row
-- whose indexed columns do not change is cheap only if its page has room (a HOT update: no
-- index entry, a smaller WAL record). Measured with bench/persister_bench.py; the plans of the
-- API's queries with EXPLAIN ANALYZE on 200,000 orders (persister/README.md).

-- The API's order queries count every matching row (count(*) OVER ()), so an index in
-- updated_time order cannot stop early: it only replaced a sort, and with a symbol filter the
-- planner walked it instead of orders_symbol (20 ms instead of 4). The status and symbol
-- filters keep orders_status and orders_symbol.
DROP INDEX orders_updated;

-- Nothing reads executions by category and time (the API has no executions endpoint); the
-- lookup that remains is the fills of one order (executions_order).
DROP INDEX executions_time;

-- Balances and positions are small (one row per coin, per position) and updated in place;
-- their keys never change, so with room on the page every update is HOT. Half-empty pages
-- cost a few kB here. Applies to pages filled from now on.
ALTER TABLE balances SET (fillfactor = 50);
ALTER TABLE positions SET (fillfactor = 50);
