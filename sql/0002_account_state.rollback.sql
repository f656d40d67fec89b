DROP TABLE dead_letters;
DROP TABLE positions;
DROP TABLE executions;
DROP TABLE orders;
DROP TABLE balances;
