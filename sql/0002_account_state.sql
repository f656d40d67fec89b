-- depends: 0001_subscriptions
-- Latest account state per key, guarded by Bybit's own timestamps so a replayed
-- or late event never overwrites a newer one. Amounts are NUMERIC, never float.
-- `raw` is the Bybit object as received. It is json, not jsonb: json only validates the
-- text, jsonb parses it into a tree, and that parse made batch writes 3-4x slower
-- (about 25k vs 90k rows/s for an order row). ->, ->> and ::jsonb still work on json.

CREATE TABLE balances (
    account_type    text NOT NULL,
    coin            text NOT NULL,
    wallet_balance  numeric,
    equity          numeric,
    usd_value       numeric,
    locked          numeric,
    unrealised_pnl  numeric,
    cum_realised_pnl numeric,
    borrow_amount   numeric,
    exchange_ts     bigint NOT NULL,          -- creationTime of the push (ms) or REST time
    source          text NOT NULL DEFAULT 'ws',
    event_id        text,
    raw             json NOT NULL,
    written_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_type, coin),
    CHECK (coin <> '' AND account_type <> ''),
    CHECK (source IN ('ws', 'rest'))
);
CREATE INDEX balances_coin ON balances (coin);

CREATE TABLE orders (
    order_id        text PRIMARY KEY,
    order_link_id   text,
    category        text NOT NULL,
    symbol          text NOT NULL,
    side            text,
    order_type      text,
    order_status    text NOT NULL,
    is_open         boolean NOT NULL,
    price           numeric,
    qty             numeric,
    avg_price       numeric,
    leaves_qty      numeric,
    cum_exec_qty    numeric,
    cum_exec_value  numeric,
    created_time    bigint,
    updated_time    bigint NOT NULL,
    source          text NOT NULL DEFAULT 'ws',
    event_id        text,
    raw             json NOT NULL,
    written_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (order_id <> ''),
    CHECK (is_open = (order_status IN ('New', 'PartiallyFilled', 'Untriggered', 'Triggered'))),
    CHECK (source IN ('ws', 'rest'))
);
-- The API filters orders by status, symbol and category, alone or together, newest first.
-- Category has four values: alone it is a scan either way, with a symbol the symbol index
-- serves. Every index costs each upsert, so there are no more than these.
CREATE INDEX orders_status ON orders (order_status, updated_time DESC);
CREATE INDEX orders_symbol ON orders (symbol, order_status);
CREATE INDEX orders_updated ON orders (updated_time DESC);

CREATE TABLE executions (
    exec_id         text PRIMARY KEY,
    order_id        text NOT NULL,
    order_link_id   text,
    category        text NOT NULL,
    symbol          text NOT NULL,
    side            text,
    exec_type       text,
    exec_price      numeric,
    exec_qty        numeric,
    exec_value      numeric,
    exec_fee        numeric,
    is_maker        boolean,
    exec_time       bigint NOT NULL,
    seq             bigint,
    source          text NOT NULL DEFAULT 'ws',   -- ws_fast rows are completed by a later ws/rest one
    event_id        text,
    raw             json NOT NULL,
    written_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (exec_id <> ''),
    CHECK (source IN ('ws', 'ws_fast', 'rest'))
);
CREATE INDEX executions_order ON executions (order_id);
CREATE INDEX executions_time ON executions (category, exec_time DESC);

CREATE TABLE positions (
    category        text NOT NULL,
    symbol          text NOT NULL,
    position_idx    integer NOT NULL,
    side            text,
    size            numeric,
    entry_price     numeric,
    mark_price      numeric,
    leverage        numeric,
    unrealised_pnl  numeric,
    cum_realised_pnl numeric,
    liq_price       numeric,
    position_status text,
    updated_time    bigint NOT NULL,
    seq             bigint,
    source          text NOT NULL DEFAULT 'ws',
    event_id        text,
    raw             json NOT NULL,
    written_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (category, symbol, position_idx),
    CHECK (source IN ('ws', 'rest'))
);

-- Rows that could not be written (constraint violations, unparseable objects).
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    event_id    text,
    table_name  text NOT NULL,
    error       text NOT NULL,
    payload     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_created ON dead_letters (created_at DESC);
CREATE INDEX dead_letters_event ON dead_letters (event_id);
