-- Exactly-once bookkeeping made exact, and prunable on its own schedule.

-- Every pipeline (STREAM_PREFIX) writing into this database gets a small number, part of its
-- stream entries' ledger keys, so two pipelines sharing a database never take each other's
-- entries for done. The first pipeline registered gets 0, which keeps the ledger keys an
-- installation wrote before this migration valid. `queue_low_water` is a lower bound, reported
-- by the pipeline's writers, on the stream-entry time of anything still queued in that pipeline:
-- entries older than it can no longer be delivered, so their bookkeeping may go.
CREATE TABLE stream_pipelines (
    pipeline_id      smallint    PRIMARY KEY CHECK (pipeline_id >= 0),
    stream_prefix    text        NOT NULL UNIQUE,
    registered_at    timestamptz NOT NULL DEFAULT now(),
    queue_low_water  timestamptz,
    low_water_at     timestamptz
);

-- A ledger row either proves the entry written whole (`whole`), or records that parts of it were
-- written by a split batch, each event with its own dedupe key. Either way a later delivery of
-- the entry on the fast path (no per-event keys) collides with the row and is rechecked.
ALTER TABLE entry_ledger ADD COLUMN whole boolean NOT NULL DEFAULT true;

-- Dedupe keys on the full event id and app, exact: the former 16-byte digest kept 8 bytes of the
-- id and 64 bits of hash. The former table is kept read-only as event_dedupe_legacy, looked up
-- beside the new one until its rows age out of the window (the prune job empties it).
ALTER TABLE event_dedupe RENAME TO event_dedupe_legacy;
ALTER INDEX event_dedupe_first_seen_brin RENAME TO event_dedupe_legacy_first_seen_brin;
ALTER TABLE event_dedupe_legacy RENAME CONSTRAINT event_dedupe_pkey TO event_dedupe_legacy_pkey;
CREATE TABLE event_dedupe (
    event_id    uuid        NOT NULL,
    app_id      text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, app_id)
);
CREATE INDEX event_dedupe_first_seen_brin ON event_dedupe USING brin (first_seen);

-- The same event never sits in dead_letters twice (a writer that dies between storing a dead
-- letter and acknowledging its entry stores it again on the next delivery); an entry that
-- cannot be decoded is kept once per stream entry. A replay takes the row under a lock.
DELETE FROM dead_letters d USING dead_letters o
 WHERE d.event_id IS NOT NULL AND o.event_id = d.event_id AND o.app_id = d.app_id AND o.id < d.id;
DELETE FROM dead_letters d USING dead_letters o
 WHERE d.event_id IS NULL AND o.event_id IS NULL AND o.stream = d.stream
   AND o.entry_id = d.entry_id AND o.id < d.id;
CREATE UNIQUE INDEX dead_letters_event_key ON dead_letters (app_id, event_id)
    WHERE event_id IS NOT NULL;
CREATE UNIQUE INDEX dead_letters_raw_key ON dead_letters (stream, entry_id)
    WHERE event_id IS NULL;
