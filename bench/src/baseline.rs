//! The baselines the writer is compared with, on the same rows: one raw binary COPY in one
//! transaction; the fair limit, N concurrent raw binary COPY streams committing every 1000 rows
//! (the writer's streams and commit size, nothing else); and the original design's multi-row
//! INSERT of 1000 rows a statement. All run without the summary trigger (migration 0006): it is
//! Sluice's own work, which the limit PostgreSQL sets does not include.

use std::time::{Duration, Instant};

use batch_writer::rows::{self, COPY_COLUMNS, COPY_TYPES};
use futures::pin_mut;
use shared::queue::QueuedEvent;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Turns the summary trigger off in this database (benchmarks' baselines, and the writer's run
/// when measuring what the trigger costs).
pub async fn without_summary_trigger(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "ALTER TABLE analytics_events DISABLE TRIGGER analytics_events_summary_insert",
        )
        .await?;
    Ok(())
}

/// Binary COPY of every event in one statement; returns the elapsed time.
pub async fn raw_copy(client: &Client, events: &[QueuedEvent]) -> anyhow::Result<Duration> {
    without_summary_trigger(client).await?;
    let started = Instant::now();
    let sink = client
        .copy_in(&format!(
            "COPY analytics_events {COPY_COLUMNS} FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    pin_mut!(writer);
    let refs: Vec<&QueuedEvent> = events.iter().collect();
    rows::write_rows(writer.as_mut(), &refs).await?;
    writer.finish().await?;
    Ok(started.elapsed())
}

/// The fair limit: `streams` connections, each taking the next `commit_rows` events and
/// storing them with one binary COPY, its own transaction (committed durably, as the writer's
/// are), until every event is stored; returns the elapsed time. `clients` are the streams'
/// connections, all to the same database.
pub async fn raw_copy_streams(
    clients: &[Client],
    events: &[QueuedEvent],
    commit_rows: usize,
) -> anyhow::Result<Duration> {
    if let Some(first) = clients.first() {
        without_summary_trigger(first).await?;
    }
    let chunks: Vec<&[QueuedEvent]> = events.chunks(commit_rows.max(1)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    futures::future::try_join_all(clients.iter().map(|c| copy_stream(c, &chunks, &next))).await?;
    Ok(started.elapsed())
}

/// One stream of the fair limit: takes the next chunk until none is left.
async fn copy_stream(
    client: &Client,
    chunks: &[&[QueuedEvent]],
    next: &std::sync::atomic::AtomicUsize,
) -> anyhow::Result<()> {
    let statement = format!("COPY analytics_events {COPY_COLUMNS} FROM STDIN (FORMAT binary)");
    while let Some(chunk) = chunks.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
        let sink = client.copy_in(&statement).await?;
        let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
        pin_mut!(writer);
        let refs: Vec<&QueuedEvent> = chunk.iter().collect();
        rows::write_rows(writer.as_mut(), &refs).await?;
        writer.finish().await?;
    }
    Ok(())
}

/// The fair limit for each stream count in `streams`, each into a fresh database of its own:
/// `(streams, elapsed)`, in the order given.
pub async fn fair_limits(
    events: &[QueuedEvent],
    streams: &[usize],
    commit_rows: usize,
) -> anyhow::Result<Vec<(usize, Duration)>> {
    let mut out = Vec::new();
    for &n in streams {
        let db = testkit::TestDb::migrated().await;
        let mut clients = Vec::new();
        for _ in 0..n.max(1) {
            clients.push(db.client().await);
        }
        out.push((n, raw_copy_streams(&clients, events, commit_rows).await?));
    }
    Ok(out)
}

/// Multi-row INSERT, 1000 rows a statement, each its own transaction (the original design's
/// batchInsert); returns the elapsed time.
pub async fn multi_row_insert(client: &Client, events: &[QueuedEvent]) -> anyhow::Result<Duration> {
    without_summary_trigger(client).await?;
    let started = Instant::now();
    let mut prepared = std::collections::HashMap::new();
    for chunk in events.chunks(1000) {
        let n = chunk.len();
        if let std::collections::hash_map::Entry::Vacant(slot) = prepared.entry(n) {
            let values: Vec<String> = (0..n)
                .map(|i| {
                    let b = i * 8;
                    format!(
                        "(${},${},${},${},${},${},${},${}::text::jsonb)",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7,
                        b + 8
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO analytics_events {COPY_COLUMNS} VALUES {}",
                values.join(",")
            );
            slot.insert(client.prepare(&sql).await?);
        }
        let times: Vec<_> = chunk
            .iter()
            .map(|e| (rows::time(e.occurred_at_us), rows::time(e.received_at_us)))
            .collect();
        let meta: Vec<&str> = chunk
            .iter()
            .map(|e| e.metadata.as_deref().unwrap_or("{}"))
            .collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(n * 8);
        for (i, e) in chunk.iter().enumerate() {
            params.push(&e.event_id);
            params.push(&e.app_id);
            params.push(&e.event_name);
            params.push(&times[i].0);
            params.push(&times[i].1);
            params.push(&e.user_id);
            params.push(&e.session_id);
            params.push(&meta[i]);
        }
        client.execute(&prepared[&n], &params).await?;
    }
    Ok(started.elapsed())
}
