-- Desired subscriptions (the source of truth ingest restores from) and their Bybit status.
CREATE TABLE subscriptions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    channel       text NOT NULL,
    endpoint      text NOT NULL CHECK (endpoint IN ('spot', 'linear', 'inverse', 'option', 'private')),
    category      text,
    symbol        text,
    depth         integer,
    interval      text,
    topic         text NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'active', 'failed', 'removed')),
    last_error    text,
    requesters    text[] NOT NULL DEFAULT '{}',
    trace_id      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    status_at     timestamptz,
    last_event_at timestamptz,
    removed_at    timestamptz
);
-- One live subscription per topic on an endpoint; removed rows stay as history.
CREATE UNIQUE INDEX subscriptions_live_topic ON subscriptions (endpoint, topic) WHERE status <> 'removed';
CREATE INDEX subscriptions_status ON subscriptions (status);
CREATE INDEX subscriptions_filters ON subscriptions (channel, category, symbol);
