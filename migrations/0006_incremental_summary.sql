-- daily_analytics_summary is kept incrementally, so that a refresh costs what arrived since the
-- last one, not the table's history (a materialized view re-reads every retained month).
--
-- * Every statement that inserts into analytics_events (the writers' COPY, the quarantine move)
--   adds, in its own transaction, one summary_pending row per (app, day, event name) it touched:
--   the number of events and the distinct user and session ids among them.
-- * The views job folds the pending rows into the summary in one REPEATABLE READ transaction:
--   the ids not yet in summary_members for that (app, day, event name) are added there and
--   counted, so unique counts stay exact; the rows it folded are the rows it deletes (one
--   snapshot), so a row committed meanwhile waits for the next fold.
-- * Statements that delete or update events mark their (app, day) in summary_dirty; the fold
--   recomputes those days from the partitions. Retention drops whole months and deletes their
--   summary rows itself.
-- * Readers add the pending rows not yet folded (the read API does), so the counts are exact at
--   any moment; the fold only keeps what they read small. Every key starts with app_id, so the
--   tables can be distributed by app_id (Citus) like analytics_events.
DROP MATERIALIZED VIEW daily_analytics_summary;

CREATE TABLE daily_analytics_summary (
    app_id          text   NOT NULL,
    day             date   NOT NULL,
    event_name      text   NOT NULL,
    events          bigint NOT NULL,
    unique_users    bigint NOT NULL,
    unique_sessions bigint NOT NULL,
    PRIMARY KEY (app_id, day, event_name)
);

-- The distinct user ('u') and session ('s') ids of each (app, day, event name).
CREATE TABLE summary_members (
    app_id     text   NOT NULL,
    day        date   NOT NULL,
    event_name text   NOT NULL,
    kind       "char" NOT NULL,
    member     text   NOT NULL,
    PRIMARY KEY (app_id, day, event_name, kind, member)
);

-- Inserted events not yet folded into the summary. No unique key: writers never wait on each
-- other here.
CREATE TABLE summary_pending (
    app_id     text   NOT NULL,
    day        date   NOT NULL,
    event_name text   NOT NULL,
    events     bigint NOT NULL,
    users      text[] NOT NULL,
    sessions   text[] NOT NULL
);
CREATE INDEX summary_pending_app_day_idx ON summary_pending (app_id, day);

-- Days whose events were deleted or updated: recomputed whole by the next fold.
CREATE TABLE summary_dirty (
    app_id text NOT NULL,
    day    date NOT NULL
);

CREATE FUNCTION sluice_summary_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO summary_pending (app_id, day, event_name, events, users, sessions)
  SELECT app_id, (occurred_at AT TIME ZONE 'UTC')::date, event_name, count(*),
         coalesce(array_agg(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL), '{}'),
         coalesce(array_agg(DISTINCT session_id) FILTER (WHERE session_id IS NOT NULL), '{}')
    FROM sluice_new_rows
   GROUP BY 1, 2, 3;
  RETURN NULL;
END $$;

CREATE FUNCTION sluice_summary_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO summary_dirty (app_id, day)
  SELECT DISTINCT app_id, (occurred_at AT TIME ZONE 'UTC')::date FROM sluice_old_rows;
  RETURN NULL;
END $$;

CREATE FUNCTION sluice_summary_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO summary_dirty (app_id, day)
  SELECT app_id, (occurred_at AT TIME ZONE 'UTC')::date FROM sluice_old_rows
  UNION
  SELECT app_id, (occurred_at AT TIME ZONE 'UTC')::date FROM sluice_new_rows;
  RETURN NULL;
END $$;

CREATE TRIGGER analytics_events_summary_insert AFTER INSERT ON analytics_events
  REFERENCING NEW TABLE AS sluice_new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION sluice_summary_inserted();
CREATE TRIGGER analytics_events_summary_delete AFTER DELETE ON analytics_events
  REFERENCING OLD TABLE AS sluice_old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION sluice_summary_deleted();
CREATE TRIGGER analytics_events_summary_update AFTER UPDATE ON analytics_events
  REFERENCING OLD TABLE AS sluice_old_rows NEW TABLE AS sluice_new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION sluice_summary_updated();

-- The events already stored (an upgraded installation): summarized once, here.
INSERT INTO summary_members (app_id, day, event_name, kind, member)
SELECT DISTINCT app_id, (occurred_at AT TIME ZONE 'UTC')::date, event_name, 'u', user_id
  FROM analytics_events WHERE user_id IS NOT NULL
UNION ALL
SELECT DISTINCT app_id, (occurred_at AT TIME ZONE 'UTC')::date, event_name, 's', session_id
  FROM analytics_events WHERE session_id IS NOT NULL;
INSERT INTO daily_analytics_summary
SELECT app_id, (occurred_at AT TIME ZONE 'UTC')::date, event_name, count(*),
       count(DISTINCT user_id), count(DISTINCT session_id)
  FROM analytics_events
 GROUP BY 1, 2, 3;
