-- The batch writer records its own pending summary rows.
--
-- The insert trigger of 0006 (and 0008) turns every statement's rows into summary_pending rows
-- inside PostgreSQL: the transition table copies every row, metadata included, and the distinct
-- ids are sorted there, which cost the writer's drain about 13%. The writer holds each batch in
-- memory already: it computes the same rows (per app, UTC day of `occurred_at` and event name:
-- the count, the distinct user ids, the distinct sessions and each one's owner, as 0008 defines
-- it) from exactly the events its COPY stores, and copies them into summary_pending in the same
-- transaction. It says so with `set_config('sluice.summary_pending', 'written', true)`, local
-- to that transaction, and the trigger's WHEN condition then leaves the statement alone.
--
-- Every other insert into analytics_events (the quarantine move, an operator's backfill) is
-- summarized by the trigger as before. A transaction that sets the flag without writing the
-- rows itself would leave its events out of the summary: only the writer sets it.

DROP TRIGGER analytics_events_summary_insert ON analytics_events;
CREATE TRIGGER analytics_events_summary_insert AFTER INSERT ON analytics_events
  REFERENCING NEW TABLE AS sluice_new_rows
  FOR EACH STATEMENT
  WHEN (current_setting('sluice.summary_pending', true) IS DISTINCT FROM 'written')
  EXECUTE FUNCTION sluice_summary_inserted();
