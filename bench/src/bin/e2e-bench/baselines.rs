//! The baselines of the same rows, measured in the same run: one raw binary COPY, the fair limit
//! (concurrent raw COPY streams committing every 1000 rows) and the multi-row INSERT.

use std::time::Duration;

use bench::baseline;
use shared::queue::QueuedEvent;
use testkit::TestDb;

/// The baselines' rates, rows/s.
#[derive(Default)]
pub struct Baselines {
    pub raw: Option<f64>,
    pub insert: Option<f64>,
    /// Per stream count: the fair limit.
    pub fair: Vec<(usize, f64)>,
}

impl Baselines {
    /// The fair limit with `streams` streams, when it was measured.
    pub fn fair_with(&self, streams: usize) -> Option<f64> {
        self.fair.iter().find(|f| f.0 == streams).map(|f| f.1)
    }

    /// The best fair limit measured.
    pub fn fair_best(&self) -> Option<f64> {
        self.fair
            .iter()
            .map(|f| f.1)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))))
    }
}

/// Reads the stored rows back from `client` and measures each baseline on them, each in a
/// database of its own.
pub async fn measure(
    client: &tokio_postgres::Client,
    fair_streams: &[usize],
) -> anyhow::Result<Baselines> {
    eprintln!("Baselines on the same rows...");
    let events = read_back(client).await?;
    let raw_db = TestDb::migrated().await;
    let raw = baseline::raw_copy(&raw_db.client().await, &events).await?;
    let fair = baseline::fair_limits(&events, fair_streams, 1000).await?;
    let ins_db = TestDb::migrated().await;
    let ins = baseline::multi_row_insert(&ins_db.client().await, &events).await?;
    let rate = |d: Duration| events.len() as f64 / d.as_secs_f64();
    Ok(Baselines {
        raw: Some(rate(raw)),
        insert: Some(rate(ins)),
        fair: fair.into_iter().map(|(n, d)| (n, rate(d))).collect(),
    })
}

async fn read_back(client: &tokio_postgres::Client) -> anyhow::Result<Vec<QueuedEvent>> {
    let rows = client
        .query(
            "SELECT event_id, app_id, event_name, occurred_at, received_at, user_id, session_id, metadata::text \
             FROM analytics_events",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| QueuedEvent {
            event_id: r.get(0),
            app_id: r.get(1),
            event_name: r.get(2),
            occurred_at_us: r
                .get::<_, chrono::DateTime<chrono::Utc>>(3)
                .timestamp_micros(),
            received_at_us: r
                .get::<_, chrono::DateTime<chrono::Utc>>(4)
                .timestamp_micros(),
            user_id: r.get(5),
            session_id: r.get(6),
            metadata: r.get(7),
            client_id: false,
        })
        .collect())
}
