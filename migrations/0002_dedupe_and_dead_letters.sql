-- Exactly-once bookkeeping of the batch writer, and its dead-letter table.

-- One row per stored event, keyed by a digest of (app_id, event_id) that keeps the first 8 bytes
-- of the event id, so time-ordered ids (UUIDv7) make index inserts append-mostly. Inserted in the
-- same transaction as the event, so a redelivered entry or a client retry with the same event_id
-- (whatever its timestamp) is stored once. Rows older than DEDUPE_WINDOW_HOURS are pruned by the
-- maintenance worker; BRIN keeps that prune cheap at almost no insert cost.
CREATE TABLE event_dedupe (
    dedupe_key  uuid        PRIMARY KEY,
    first_seen  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_dedupe_first_seen_brin ON event_dedupe USING brin (first_seen);

-- Events PostgreSQL refused MAX_DELIVERIES times (or entries that cannot be decoded), with
-- their error; `batch-writer dead-letter list|replay` reads them.
CREATE TABLE dead_letters (
    id          bigserial   PRIMARY KEY,
    event_id    uuid,
    app_id      text,
    -- The event as queued (MessagePack of one event), or the raw entry when it did not decode.
    payload     bytea       NOT NULL,
    error       text        NOT NULL,
    stream      text        NOT NULL,
    entry_id    text        NOT NULL,
    deliveries  integer     NOT NULL,
    dead_at     timestamptz NOT NULL DEFAULT now()
);
