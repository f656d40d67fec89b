-- depends: 0004_subscriptions_page
-- Several gateway instances share this database. Each registers itself with a heartbeat;
-- each unit of work (the private stream, each shard of public topics) is owned by one live
-- instance through a lease row. Times are the database's now(), so instances never compare
-- their own clocks. Session advisory locks are not used: a pooler or a half-open connection
-- keeps or drops them behind the owner's back, while a lease simply expires.
CREATE TABLE gateway_instances (
    instance_id  text PRIMARY KEY,
    token        text NOT NULL,          -- host and run directory of the stack holding the id
    host         text NOT NULL,
    pid          integer,
    api_bind     text,
    shards       integer NOT NULL,       -- every live instance must split the topics the same way
    capacity     integer NOT NULL,       -- public shards it may own
    private      boolean NOT NULL,       -- it has Bybit keys: it may own the private stream
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);

CREATE TABLE gateway_leases (
    unit        text PRIMARY KEY,        -- 'private' or 'shard-<n>of<N>'
    owner       text,                    -- NULL: released (or never owned)
    holder      text,                    -- owner of the latest epoch, kept after a release
    epoch       bigint NOT NULL DEFAULT 0,   -- +1 with every new owner
    acquired_at timestamptz,
    renewed_at  timestamptz,
    expires_at  timestamptz
);

-- Every ownership, for takeover announcements and for checking a late event's epoch.
CREATE TABLE gateway_lease_history (
    unit                 text NOT NULL,
    epoch                bigint NOT NULL,
    owner                text NOT NULL,
    acquired_at          timestamptz NOT NULL,
    previous_owner       text,
    previous_epoch       bigint,
    previous_renewed_at  timestamptz,    -- the old owner's last renewal (or its release)
    previous_expires_at  timestamptz,    -- when the old owner's lease ran out
    PRIMARY KEY (unit, epoch)
);

-- A change of what is wanted (a row becomes or stops being pending/active) is told to every
-- instance listening, so the owner of the topic's shard applies it within a second, whichever
-- instance's API took it. Updates of last_event_at or of pending -> active tell nobody.
CREATE FUNCTION gateway_subscriptions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status IN ('pending', 'active') THEN
            PERFORM pg_notify('wsgw_subscriptions', NEW.endpoint || ':' || NEW.topic);
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        IF OLD.status IN ('pending', 'active') THEN
            PERFORM pg_notify('wsgw_subscriptions', OLD.endpoint || ':' || OLD.topic);
        END IF;
    ELSIF (OLD.status IN ('pending', 'active')) <> (NEW.status IN ('pending', 'active')) THEN
        PERFORM pg_notify('wsgw_subscriptions', NEW.endpoint || ':' || NEW.topic);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER subscriptions_notify AFTER INSERT OR DELETE OR UPDATE OF status ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION gateway_subscriptions_notify();
