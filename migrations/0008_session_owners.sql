-- Which user a session's events belong to, so that an erasure proves a session gone without
-- reading the day's events (docs/privacy.md).
--
-- An erasure takes a user's sessions out of the summary's unique counts only where no remaining
-- event of that day and event name carries them. Proving that by reading every event of the day
-- costs a range of the app's index per (day, event name, session). Most sessions belong to one
-- user: `summary_members.owner` is that user when every event of the (app, day, event name)
-- carrying the session has that same user id, and NULL when the events have several users, no
-- user, or the row is older than this migration (unknown). An erasure of user X then proves a
-- session owned by X gone by one probe of the user index (X's events that remain, landed after
-- the deletions); a session with no owner is still proved by reading the day's range.
--
-- * The insert trigger records, beside each pending row's distinct sessions, each session's
--   owner among the statement's rows (`owners`, aligned with `sessions`; NULL on rows written
--   before this migration, read as "no owner").
-- * The fold and the recomputation of dirty days keep the owner: a member's owner becomes NULL as
--   soon as any fold brings an event of that session with another user or none, and never comes
--   back (only a recomputation of the day, from the events themselves, sets it again).

ALTER TABLE summary_members ADD COLUMN owner text;
ALTER TABLE summary_pending ADD COLUMN owners text[];

CREATE OR REPLACE FUNCTION sluice_summary_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
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
