-- The batch writer records its own pending summary rows.
--
-- The insert trigger of 0006 (and 0008) turns every statement's rows into summary_pending rows
-- inside PostgreSQL: the transition table copies every row, metadata included, and the distinct
-- ids are sorted there, which cost the writer's drain about 13%. The writer holds each batch in
-- memory already: it computes the same rows (per app, UTC day of `occurred_at` and event name:
-- the count, the distinct user ids, the distinct sessions and each one's owner, as 0008 defines
-- it) from exactly the events its COPY stores, and copies them into summary_pending in the same
-- transaction. It says so with `set_config('sluice.summary_pending', 'written', true)`, local
-- to that transaction, and the trigger then leaves the statement alone.
--
-- Every other insert into analytics_events (the quarantine move, an operator's backfill) is
-- summarized by the trigger as before. A transaction that sets the flag without writing the
-- rows itself would leave its events out of the summary: only the writer sets it.

CREATE OR REPLACE FUNCTION sluice_summary_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('sluice.summary_pending', true) = 'written' THEN
    RETURN NULL;
  END IF;
  INSERT INTO summary_pending (app_id, day, event_name, events, users, sessions, owners)
  SELECT g.app_id, g.day, g.event_name, g.events, g.users,
         coalesce(s.sessions, '{}'), coalesce(s.owners, '{}')
    FROM (SELECT app_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, event_name,
                 count(*) AS events,
                 coalesce(array_agg(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL), '{}')
                   AS users
            FROM sluice_new_rows
           GROUP BY 1, 2, 3) g
    LEFT JOIN (
          SELECT app_id, day, event_name, array_agg(session_id) AS sessions,
                 array_agg(owner) AS owners
            FROM (SELECT app_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, event_name,
                         session_id,
                         CASE WHEN count(user_id) = count(*)
                               AND min(user_id COLLATE "C") = max(user_id COLLATE "C")
                              THEN min(user_id COLLATE "C") END AS owner
                    FROM sluice_new_rows
                   WHERE session_id IS NOT NULL
                   GROUP BY 1, 2, 3, 4) x
           GROUP BY 1, 2, 3) s
      ON s.app_id = g.app_id AND s.day = g.day AND s.event_name = g.event_name;
  RETURN NULL;
END $$;
