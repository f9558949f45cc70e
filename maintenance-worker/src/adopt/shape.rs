//! The original design's `analytics_events`: which of its columns exist and of what type, and
//! the SQL that reads its rows as rows of the partitioned table. Pure: nothing here talks to
//! PostgreSQL, so every shape is unit-tested.

use super::AdoptError;

/// The original table once it is moved aside.
pub const ORIGINAL: &str = "analytics_events_original";

/// The namespace of the event ids derived from the original integer ids: the same old id gives
/// the same `event_id` in every run, so the move can be checked (and a resumed one never
/// doubles rows without the verification seeing it).
pub const EVENT_ID: &str = "md5('sluice-adopt:' || o.id::text)::uuid";

/// The columns found in the original table, as SQL expressions over `o` (the original row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// `timestamp` is `timestamp without time zone`: its values are read as UTC.
    naive_time: bool,
    user_id: Option<&'static str>,
    session_id: Option<&'static str>,
    metadata: Option<&'static str>,
    /// `received_at` or `created_at`, the time the original service stored the row.
    received: Option<(&'static str, bool)>,
}

/// Column name and `format_type` of each column of the original table.
pub type Columns = [(String, String)];

fn find<'a>(columns: &'a Columns, name: &str) -> Option<&'a str> {
    columns
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.as_str())
}

fn time_type(column: &'static str, ty: &str) -> Result<bool, AdoptError> {
    match ty {
        "timestamp with time zone" => Ok(false),
        "timestamp without time zone" => Ok(true),
        _ => Err(AdoptError::Shape(format!(
            "column {column} is {ty}, expected a timestamp"
        ))),
    }
}

impl Shape {
    /// The shape of a table with these columns, or what makes it not the original design's.
    pub fn of(columns: &Columns) -> Result<Self, AdoptError> {
        for required in ["id", "app_id", "event_name", "timestamp"] {
            if find(columns, required).is_none() {
                return Err(AdoptError::Shape(format!(
                    "it has no column {required} (the original design has id, app_id, event_name and timestamp)"
                )));
            }
        }
        let id = find(columns, "id").unwrap_or_default();
        if !matches!(id, "integer" | "bigint" | "smallint") {
            return Err(AdoptError::Shape(format!(
                "column id is {id}, expected an integer: new event ids are derived from it"
            )));
        }
        let naive_time = time_type("timestamp", find(columns, "timestamp").unwrap_or_default())?;
        let metadata = match find(columns, "metadata") {
            None => None,
            Some("jsonb") => Some("o.metadata"),
            Some("json") => Some("o.metadata::jsonb"),
            Some(other) => {
                return Err(AdoptError::Shape(format!(
                    "column metadata is {other}, expected json or jsonb"
                )))
            }
        };
        let received = Self::received(columns)?;
        Ok(Self {
            naive_time,
            user_id: find(columns, "user_id").map(|_| "o.user_id::text"),
            session_id: find(columns, "session_id").map(|_| "o.session_id::text"),
            metadata,
            received,
        })
    }

    fn received(columns: &Columns) -> Result<Option<(&'static str, bool)>, AdoptError> {
        for name in ["received_at", "created_at"] {
            if let Some(ty) = find(columns, name) {
                let column = if name == "received_at" {
                    "o.received_at"
                } else {
                    "o.created_at"
                };
                return Ok(Some((column, time_type(name, ty)?)));
            }
        }
        Ok(None)
    }

    /// A `timestamptz` parameter as a value comparable with the original `timestamp` column.
    fn param(&self, n: u8) -> String {
        if self.naive_time {
            format!("(${n}::timestamptz AT TIME ZONE 'UTC')")
        } else {
            format!("${n}::timestamptz")
        }
    }

    /// The original row's time as a `timestamptz`.
    pub fn occurred(&self) -> &'static str {
        if self.naive_time {
            "(o.\"timestamp\" AT TIME ZONE 'UTC')"
        } else {
            "o.\"timestamp\""
        }
    }

    /// `$1 <= timestamp < $2`, on the raw column so the index serves it.
    fn in_month(&self) -> String {
        format!(
            "o.\"timestamp\" >= {} AND o.\"timestamp\" < {}",
            self.param(1),
            self.param(2)
        )
    }

    /// Rows the partitioned table can hold (it requires an app and an event name).
    pub const VALID: &'static str = "o.app_id IS NOT NULL AND o.event_name IS NOT NULL";

    /// Rows per month of the original table, and rows without a time: the plan of the move.
    pub fn months_sql(&self) -> String {
        format!(
            "SELECT date_trunc('month', {} AT TIME ZONE 'UTC')::date AS month, count(*)::bigint \
               FROM {ORIGINAL} o WHERE o.\"timestamp\" IS NOT NULL GROUP BY 1 ORDER BY 1",
            self.occurred()
        )
    }

    /// The time the original service stored the row, else the row's own time.
    fn received_at(&self) -> String {
        match self.received {
            Some((column, true)) => {
                format!("coalesce({column} AT TIME ZONE 'UTC', {})", self.occurred())
            }
            Some((column, false)) => format!("coalesce({column}, {})", self.occurred()),
            None => self.occurred().to_string(),
        }
    }

    /// One batch of a month: the next `$5` original rows of the month `[$1, $2)` after
    /// `($3, $4)` (time, id), inserted into `analytics_events`, and the month's progress moved on
    /// in the same statement, so a batch is recorded exactly when its rows are.
    pub fn batch_sql(&self) -> String {
        format!(
            "WITH batch AS ( \
               SELECT o.id::bigint AS id, {occurred} AS ts, o.app_id::text AS app_id, \
                      o.event_name::text AS event_name, {user} AS user_id, {session} AS session_id, \
                      coalesce({metadata}, '{{}}'::jsonb) AS metadata, {received} AS received_at, \
                      {event_id} AS event_id, ({valid}) AS valid \
                 FROM {ORIGINAL} o \
                WHERE {in_month} AND (o.\"timestamp\", o.id) > ({after}, $4) \
                ORDER BY o.\"timestamp\", o.id LIMIT $5), \
             ins AS ( \
               INSERT INTO analytics_events \
                 (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id, metadata) \
               SELECT event_id, app_id, event_name, ts, received_at, user_id, session_id, metadata \
                 FROM batch WHERE valid RETURNING 1), \
             last AS (SELECT ts, id FROM batch ORDER BY ts DESC, id DESC LIMIT 1) \
             UPDATE sluice_adopt_months m \
                SET last_ts = last.ts, last_id = last.id, \
                    moved = m.moved + (SELECT count(*) FROM ins), \
                    skipped = m.skipped + (SELECT count(*) FROM batch) - (SELECT count(*) FROM ins) \
               FROM last WHERE m.month = $6 \
             RETURNING (SELECT count(*) FROM batch)",
            occurred = self.occurred(),
            user = self.user_id.unwrap_or("NULL::text"),
            session = self.session_id.unwrap_or("NULL::text"),
            metadata = self.metadata.unwrap_or("NULL::jsonb"),
            event_id = EVENT_ID,
            valid = Self::VALID,
            in_month = self.in_month(),
            after = self.param(3),
            received = self.received_at(),
        )
    }

    /// The month's original rows that the move must have carried: all, and the valid ones.
    pub fn eligible_sql(&self) -> String {
        format!(
            "SELECT count(*)::bigint, (count(*) FILTER (WHERE {}))::bigint FROM {ORIGINAL} o WHERE {}",
            Self::VALID,
            self.in_month()
        )
    }

    /// The rows of the month in `analytics_events` that carry an id derived from an original
    /// row of the month: all of them, and how many distinct (a difference is a doubled row).
    pub fn found_sql(&self) -> String {
        format!(
            "SELECT count(*)::bigint, count(DISTINCT e.event_id)::bigint FROM analytics_events e \
              WHERE e.occurred_at >= $1::timestamptz AND e.occurred_at < $2::timestamptz \
                AND e.event_id IN (SELECT {EVENT_ID} FROM {ORIGINAL} o WHERE {})",
            self.in_month()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    fn original() -> Vec<(String, String)> {
        cols(&[
            ("id", "bigint"),
            ("app_id", "character varying(64)"),
            ("event_name", "character varying(255)"),
            ("timestamp", "timestamp with time zone"),
            ("user_id", "character varying(255)"),
            ("session_id", "character varying(255)"),
            ("metadata", "jsonb"),
            ("created_at", "timestamp with time zone"),
        ])
    }

    #[test]
    fn the_original_design_is_recognised_with_its_optional_columns() {
        let s = Shape::of(&original()).unwrap();
        assert!(!s.naive_time);
        assert_eq!(s.user_id, Some("o.user_id::text"));
        assert_eq!(s.metadata, Some("o.metadata"));
        assert_eq!(s.received, Some(("o.created_at", false)));
        let sql = s.batch_sql();
        assert!(
            sql.contains("coalesce(o.created_at, o.\"timestamp\") AS received_at"),
            "{sql}"
        );
    }

    #[test]
    fn a_minimal_table_reads_missing_columns_as_null() {
        let s = Shape::of(&cols(&[
            ("id", "integer"),
            ("app_id", "text"),
            ("event_name", "text"),
            ("timestamp", "timestamp without time zone"),
        ]))
        .unwrap();
        let sql = s.batch_sql();
        assert!(sql.contains("NULL::text AS user_id"), "{sql}");
        assert!(sql.contains("coalesce(NULL::jsonb, '{}'::jsonb)"), "{sql}");
        assert!(
            sql.contains("($3::timestamptz AT TIME ZONE 'UTC')"),
            "{sql}"
        );
        assert!(
            sql.contains("(o.\"timestamp\" AT TIME ZONE 'UTC') AS ts"),
            "{sql}"
        );
    }

    #[test]
    fn tables_of_another_shape_are_refused_naming_the_column() {
        let mut no_id = original();
        no_id.retain(|(n, _)| n != "id");
        let e = Shape::of(&no_id).unwrap_err().to_string();
        assert!(e.contains("no column id"), "{e}");

        let mut uuid_id = original();
        uuid_id[0].1 = "uuid".into();
        let e = Shape::of(&uuid_id).unwrap_err().to_string();
        assert!(e.contains("column id is uuid"), "{e}");

        let mut text_time = original();
        text_time[3].1 = "text".into();
        let e = Shape::of(&text_time).unwrap_err().to_string();
        assert!(e.contains("column timestamp is text"), "{e}");

        let mut text_meta = original();
        text_meta[6].1 = "text".into();
        let e = Shape::of(&text_meta).unwrap_err().to_string();
        assert!(e.contains("column metadata is text"), "{e}");
    }
}
