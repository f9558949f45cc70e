-- Sluice schema, version 1: apps and keys, the partitioned event table, quarantine and the
-- daily summary. Partitions themselves are created by the migration runner and the maintenance
-- worker (their bounds depend on the clock and on RETENTION_MONTHS / PARTITION_PREMAKE_MONTHS).

CREATE TABLE apps (
    app_id                   text PRIMARY KEY,
    name                     text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- Per-app override of RATE_LIMIT_EVENTS_PER_SEC; NULL means the global setting, 0 means off.
    rate_limit_events_per_sec integer CHECK (rate_limit_events_per_sec >= 0),
    created_at               timestamptz NOT NULL DEFAULT now()
);

-- Keys are stored as SHA-256 digests of the key; the clear key is shown once, at creation.
CREATE TABLE api_keys (
    key_hash    bytea PRIMARY KEY CHECK (length(key_hash) = 32),
    app_id      text NOT NULL REFERENCES apps (app_id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('ingest', 'read')),
    -- The first characters of the key, enough for an operator to tell keys apart.
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_app_idx ON api_keys (app_id);

-- Range-partitioned by month (UTC) on the event time. There is deliberately no DEFAULT
-- partition: it would block creating partitions whose range holds rows in it, and
-- DETACH PARTITION ... CONCURRENTLY. Events without a partition go to events_quarantine.
CREATE TABLE analytics_events (
    event_id     uuid        NOT NULL,
    app_id       text        NOT NULL,
    event_name   text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    user_id      text,
    session_id   text,
    metadata     jsonb       NOT NULL DEFAULT '{}'::jsonb
) PARTITION BY RANGE (occurred_at);

-- Per-app time-range queries, and per-app per-event-name time-range queries.
CREATE INDEX analytics_events_app_time_idx ON analytics_events (app_id, occurred_at);
CREATE INDEX analytics_events_app_name_time_idx ON analytics_events (app_id, event_name, occurred_at);
-- Containment queries on metadata; jsonb_path_ops ingests about 1.65x faster than jsonb_ops.
CREATE INDEX analytics_events_metadata_idx ON analytics_events USING gin (metadata jsonb_path_ops);
-- Prefix search on event names (LIKE 'checkout_%').
CREATE INDEX analytics_events_name_prefix_idx ON analytics_events (event_name text_pattern_ops);

-- Events whose month has no partition, kept until the maintenance worker moves them.
CREATE TABLE events_quarantine (
    event_id       uuid        NOT NULL,
    app_id         text        NOT NULL,
    event_name     text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    user_id        text,
    session_id     text,
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, app_id)
);
CREATE INDEX events_quarantine_time_idx ON events_quarantine (occurred_at);

-- Per app, day (UTC) and event name. The unique index on plain columns lets
-- REFRESH MATERIALIZED VIEW CONCURRENTLY run without blocking readers.
CREATE MATERIALIZED VIEW daily_analytics_summary AS
SELECT app_id,
       (occurred_at AT TIME ZONE 'UTC')::date AS day,
       event_name,
       count(*)::bigint                      AS events,
       count(DISTINCT user_id)::bigint       AS unique_users,
       count(DISTINCT session_id)::bigint    AS unique_sessions
FROM analytics_events
GROUP BY 1, 2, 3
WITH DATA;
CREATE UNIQUE INDEX daily_analytics_summary_key ON daily_analytics_summary (app_id, day, event_name);

-- When each materialized view was last refreshed, so the read API knows which days the view
-- covers and reads newer ones from the live table.
CREATE TABLE view_refreshes (
    view_name     text PRIMARY KEY,
    refreshed_at  timestamptz NOT NULL,
    -- The refresh covers events with occurred_at before this instant.
    covers_before timestamptz NOT NULL
);
INSERT INTO view_refreshes VALUES ('daily_analytics_summary', now(), now());
