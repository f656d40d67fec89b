"""persister: writes account state (balances, orders, executions, positions) and
subscription status received from ingest to PostgreSQL, in batches."""
