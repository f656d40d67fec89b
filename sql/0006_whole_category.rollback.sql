ALTER TABLE subscriptions DROP COLUMN IF EXISTS refused_topics, DROP COLUMN IF EXISTS symbol_count;
