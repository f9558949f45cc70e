-- App ids and event names compare byte by byte (COLLATE "C") wherever they are keys.
--
-- Every event inserts its app id and event name into three b-tree indexes of analytics_events
-- ((app_id, occurred_at), (app_id, event_name, occurred_at), the hot-data index) and every batch
-- inserts its summary_pending rows into (app_id, day); the fold and the read API then search the
-- summary tables' keys by the same columns. Under a libc collation (the database default, often
-- C.UTF-8 or en_US.UTF-8) PostgreSQL 15 compares each pair of keys through strcoll: in a writer's
-- drain `_bt_compare` and `varstr_cmp` are the hottest symbols of the whole machine. Under "C"
-- it is one memcmp.
--
-- What changes for a reader: equality is the same (these collations are deterministic); order is
-- by bytes, which for UTF-8 is code point order, the order C.UTF-8 already gave. Prefix search
-- (`event_name LIKE 'checkout%'`) keeps its text_pattern_ops index, and with "C" the composite
-- (app_id, event_name, occurred_at) index can serve an app's prefix search too.
--
-- Every table whose app_id and event_name meet in the fold's joins changes together, so a join
-- never mixes a "C" column with a default one (which would compare under "C" and leave the other
-- side's index unused). apps, keys, erasures and dead letters keep the default: they are looked
-- up by a parameter, never joined with these columns.
--
-- Cost on an installation with data: the tables are not rewritten (the values are the same
-- bytes), but every index on these columns is rebuilt while the migration holds the tables'
-- ACCESS EXCLUSIVE lock: ingest and the read API wait until it commits. docs/operations.md
-- ("Upgrading") gives the time per million events.

ALTER TABLE analytics_events
    ALTER COLUMN app_id TYPE text COLLATE "C",
    ALTER COLUMN event_name TYPE text COLLATE "C";
ALTER TABLE events_quarantine
    ALTER COLUMN app_id TYPE text COLLATE "C",
    ALTER COLUMN event_name TYPE text COLLATE "C";
ALTER TABLE summary_pending
    ALTER COLUMN app_id TYPE text COLLATE "C",
    ALTER COLUMN event_name TYPE text COLLATE "C";
ALTER TABLE summary_dirty
    ALTER COLUMN app_id TYPE text COLLATE "C";
ALTER TABLE summary_erased
    ALTER COLUMN app_id TYPE text COLLATE "C",
    ALTER COLUMN event_name TYPE text COLLATE "C";
ALTER TABLE daily_analytics_summary
    ALTER COLUMN app_id TYPE text COLLATE "C",
    ALTER COLUMN event_name TYPE text COLLATE "C";
ALTER TABLE summary_members
    ALTER COLUMN app_id TYPE text COLLATE "C",
    ALTER COLUMN event_name TYPE text COLLATE "C";
