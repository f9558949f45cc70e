-- Erasure requests and suppression (docs/privacy.md).
--
-- * A user is named by a digest: SHA-256 of the UTF-8 bytes of app_id, the byte 0x1f, user_id
--   (`shared::privacy::user_digest`; in SQL `sha256(convert_to(app_id || chr(31) || user_id,
--   'UTF8'))`). The suppression list holds digests only; an erasure holds the clear ids only
--   while it runs (they are needed to find the rows) and forgets them when it is done.
-- * The gateway records a request (and its suppressions) in one transaction; the maintenance
--   worker's leader carries requests out one at a time, in bounded batches, each batch
--   committing its deletions together with the counts it adds to `removed`, so a request that
--   is resumed after a crash never counts a row twice.
-- * `privacy_epochs` is what gateways follow (notified, and re-read as a safety net): a change
--   of `suppressions` makes them re-read the app's suppression list, a change of
--   `erasures_done` retires the app's cached read answers.

ALTER TABLE api_keys DROP CONSTRAINT api_keys_kind_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_kind_check CHECK (kind IN ('ingest', 'read', 'admin'));

CREATE TABLE erasures (
    erasure_id   uuid        PRIMARY KEY,
    app_id       text        NOT NULL REFERENCES apps (app_id) ON DELETE CASCADE,
    suppress     boolean     NOT NULL,
    users        integer     NOT NULL CHECK (users BETWEEN 1 AND 1000),
    status       text        NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'running', 'done', 'failed')),
    -- Where a running request is: 'queue' (waiting for what was queued before it to be
    -- written), 'delete', 'summary', 'cache'.
    phase        text,
    -- When the request entered its phase: the 'cache' phase waits from it, so gateways see the
    -- bump of `privacy_epochs.erasures_done` before anyone sees the request done.
    phase_at     timestamptz,
    requested_at timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    -- Rows removed so far, per place: {"events": N, "quarantine": N, "dead_letters": N,
    -- "summary_members": N}.
    removed      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- The last dead letter the 'delete' phase examined: dead letters are read in id order,
    -- once, since those that mention none of the users stay (and would be read again).
    dead_letters_after bigint NOT NULL DEFAULT 0,
    -- The days (UTC) of the events the 'delete' phase removed: where the users' summary members
    -- can be.
    days         date[]      NOT NULL DEFAULT '{}',
    -- The primary's WAL position after the summary fold: gateways' read replicas must have
    -- replayed it before the cache generation moves.
    fold_lsn     pg_lsn,
    attempts     integer     NOT NULL DEFAULT 0,
    error        text
);
CREATE INDEX erasures_app_idx ON erasures (app_id, requested_at);
CREATE INDEX erasures_open_idx ON erasures (requested_at) WHERE status IN ('pending', 'running');

-- The queue's low-water mark in PostgreSQL's clock: now() minus the age of the oldest entry
-- still queued (its age by Redis's clock), so a Redis clock running ahead or behind does not
-- move it. Erasures wait for it. (`queue_low_water` stays in Redis's clock: it is compared with
-- stream entry ids.)
ALTER TABLE stream_pipelines ADD COLUMN queue_low_water_db timestamptz;

CREATE TABLE erasure_users (
    erasure_id uuid  NOT NULL REFERENCES erasures (erasure_id) ON DELETE CASCADE,
    user_hash  bytea NOT NULL CHECK (length(user_hash) = 32),
    -- Cleared when the request is done.
    user_id    text,
    PRIMARY KEY (erasure_id, user_hash)
);

CREATE TABLE suppressed_users (
    app_id     text        NOT NULL REFERENCES apps (app_id) ON DELETE CASCADE,
    user_hash  bytea       NOT NULL CHECK (length(user_hash) = 32),
    erasure_id uuid        REFERENCES erasures (erasure_id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, user_hash)
);

CREATE TABLE privacy_epochs (
    app_id        text   PRIMARY KEY REFERENCES apps (app_id) ON DELETE CASCADE,
    suppressions  bigint NOT NULL DEFAULT 0,
    erasures_done bigint NOT NULL DEFAULT 0
);

-- Every change of an app's epochs is pushed to the gateways, which LISTEN on their key-change
-- session and re-read the epochs (their periodic re-read stays as the safety net).
CREATE FUNCTION sluice_notify_privacy_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('sluice_privacy', NEW.app_id);
  RETURN NULL;
END $$;

CREATE TRIGGER privacy_epochs_notify AFTER INSERT OR UPDATE ON privacy_epochs
  FOR EACH ROW EXECUTE FUNCTION sluice_notify_privacy_change();

-- Events an erasure deleted, per statement and (app, day, event name): the erasure takes them out
-- of the summary itself (its count, its ids no other event of that day and name has), so its cost
-- follows the erased users' rows instead of recomputing whole days of the app. A delete made with
-- `sluice.erasure_id` set (the erasure's batches) is recorded here instead of marking its days
-- dirty.
CREATE TABLE summary_erased (
    erasure_id uuid   NOT NULL,
    app_id     text   NOT NULL,
    day        date   NOT NULL,
    event_name text   NOT NULL,
    events     bigint NOT NULL,
    users      text[] NOT NULL,
    sessions   text[] NOT NULL
);
CREATE INDEX summary_erased_erasure_idx ON summary_erased (erasure_id);

CREATE OR REPLACE FUNCTION sluice_summary_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  erasure text := nullif(current_setting('sluice.erasure_id', true), '');
BEGIN
  IF erasure IS NULL THEN
    INSERT INTO summary_dirty (app_id, day)
    SELECT DISTINCT app_id, (occurred_at AT TIME ZONE 'UTC')::date FROM sluice_old_rows;
  ELSE
    INSERT INTO summary_erased (erasure_id, app_id, day, event_name, events, users, sessions)
    SELECT erasure::uuid, app_id, (occurred_at AT TIME ZONE 'UTC')::date, event_name, count(*),
           coalesce(array_agg(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL), '{}'),
           coalesce(array_agg(DISTINCT session_id) FILTER (WHERE session_id IS NOT NULL), '{}')
      FROM sluice_old_rows
     GROUP BY 2, 3, 4;
  END IF;
  RETURN NULL;
END $$;

-- "This app's rows of this user", cheap: an 8-byte key per event (a hash of app and user id)
-- instead of two collated text columns; queries recheck app_id and user_id. Created on the parent
-- only, so this migration never builds it over existing rows while holding the lock that blocks
-- writers: partitions created from now on get it with their other indexes, and the maintenance
-- worker's partitions job builds it CONCURRENTLY on each partition that existed before (an
-- upgraded installation) and attaches it.
CREATE INDEX analytics_events_user_idx ON ONLY analytics_events
    (hashtextextended(app_id || chr(31) || user_id, 0)) WHERE user_id IS NOT NULL;
