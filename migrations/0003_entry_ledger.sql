-- The writer's ledger of committed stream entries. A first delivery of an entry cannot have been
-- written before, so its events with gateway-assigned ids need no per-event dedupe key: the
-- entry's key here (one row per entry, not per event), written in the same transaction as its
-- events, is enough to recognise a later redelivery. Events whose id came from the client still
-- get a row in event_dedupe, to catch client retries. Pruned like event_dedupe.
CREATE TABLE entry_ledger (
    entry_key   uuid        PRIMARY KEY,
    first_seen  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX entry_ledger_first_seen_brin ON entry_ledger USING brin (first_seen);
