//! Erasure requests carried out against the real PostgreSQL, tick by tick: what a request
//! removes, how it proceeds, and the sessions in the summary. This module holds the fixtures the
//! three share.

mod progress;
mod removal;
mod sessions;

use std::time::Duration;

use chrono::{DateTime, Utc};
use maintenance_worker::clock::Clock;
use maintenance_worker::erasure::{self, ErasureCtx, Progress, State};
use maintenance_worker::jobs::JobCtx;
use shared::db::Pools;
use shared::queue::QueuedEvent;
use shared::schema::partitions::Month;
use testkit::TestDb;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn job_ctx(db: &TestDb) -> JobCtx {
    JobCtx {
        db: Pools::new(&db.config()).expect("pools").write,
        clock: Clock::System,
        retention_months: 12,
        premake_months: 6,
        dedupe_window: Duration::from_secs(24 * 3600),
    }
}

fn ctx(db: &TestDb) -> ErasureCtx {
    ErasureCtx::new(job_ctx(db), CancellationToken::new())
}

async fn setup(c: &Client) {
    c.batch_execute("INSERT INTO apps (app_id, name) VALUES ('app', 'App'), ('other', 'Other')")
        .await
        .expect("apps");
}

async fn event(c: &Client, app: &str, user: &str, name: &str, at: DateTime<Utc>) {
    c.execute(
        "INSERT INTO analytics_events (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
         VALUES (gen_random_uuid(), $1, $2, $3, now(), $4, 's-' || $4)",
        &[&app, &name, &at, &user],
    )
    .await
    .expect("event");
}

async fn quarantined(c: &Client, app: &str, user: &str, at: DateTime<Utc>) {
    c.execute(
        "INSERT INTO events_quarantine (event_id, app_id, event_name, occurred_at, received_at, user_id) \
         VALUES (gen_random_uuid(), $1, 'view', $2, now(), $3)",
        &[&app, &at, &user],
    )
    .await
    .expect("quarantine");
}

fn queued(app: &str, user: &str) -> QueuedEvent {
    QueuedEvent {
        event_id: Uuid::new_v4(),
        app_id: app.to_owned(),
        event_name: "view".to_owned(),
        occurred_at_us: Utc::now().timestamp_micros(),
        received_at_us: Utc::now().timestamp_micros(),
        user_id: Some(user.to_owned()),
        session_id: None,
        metadata: None,
        client_id: false,
    }
}

/// A dead letter of one event, as the writer stores it; returns its id.
async fn dead_letter(c: &Client, app: &str, user: &str) -> i64 {
    let e = queued(app, user);
    let payload = shared::queue::encode(std::slice::from_ref(&e)).expect("encode");
    raw_dead_letter(c, Some((e.event_id, app)), &payload).await
}

async fn raw_dead_letter(c: &Client, event: Option<(Uuid, &str)>, payload: &[u8]) -> i64 {
    let (event_id, app) = (event.map(|e| e.0), event.map(|e| e.1));
    c.query_one(
        "INSERT INTO dead_letters (event_id, app_id, payload, error, stream, entry_id, deliveries) \
         VALUES ($1, $2, $3, 'refused', 'stream', gen_random_uuid()::text, 5) RETURNING id",
        &[&event_id, &app, &payload],
    )
    .await
    .expect("dead letter")
    .get(0)
}

/// Records an erasure request of `users` of `app` as the gateway does; returns its id.
async fn request(c: &Client, app: &str, users: &[&str]) -> Uuid {
    let id = Uuid::new_v4();
    c.execute(
        "INSERT INTO erasures (erasure_id, app_id, suppress, users) VALUES ($1, $2, false, $3)",
        &[&id, &app, &(users.len() as i32)],
    )
    .await
    .expect("erasure");
    for u in users {
        let digest = shared::privacy::user_digest(app, u).to_vec();
        c.execute(
            "INSERT INTO erasure_users (erasure_id, user_hash, user_id) VALUES ($1, $2, $3)",
            &[&id, &digest, u],
        )
        .await
        .expect("erasure user");
    }
    id
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

async fn removed(c: &Client, id: Uuid) -> serde_json::Value {
    c.query_one("SELECT removed FROM erasures WHERE erasure_id = $1", &[&id])
        .await
        .expect("removed")
        .get(0)
}

/// Ticks until the request is done or failed, sleeping while it waits.
async fn run_to_end(ctx: &ErasureCtx) -> Progress {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = erasure::tick(ctx)
            .await
            .expect("tick")
            .expect("an open request");
        if matches!(p.state, State::Done | State::Failed) {
            return p;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck at {p:?}");
        if p.waiting {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn mid_month(n: i32) -> DateTime<Utc> {
    Month::of(Utc::now()).plus(n).start() + chrono::Duration::days(9) + chrono::Duration::hours(7)
}
