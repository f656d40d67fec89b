ALTER TABLE positions RESET (fillfactor);
ALTER TABLE balances RESET (fillfactor);
CREATE INDEX executions_time ON executions (category, exec_time DESC);
