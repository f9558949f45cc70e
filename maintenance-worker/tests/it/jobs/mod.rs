//! Every job against the real PostgreSQL, with a moved clock: partitions and retention,
//! statistics and vacuum, the view refresh, the dedupe prune.

mod dedupe;
mod partitioning;
mod statistics;
mod views;

use std::time::Duration;

use maintenance_worker::clock::Clock;
use maintenance_worker::jobs::JobCtx;
use shared::db::Pools;
use shared::schema::partitions::{self, Month};
use testkit::TestDb;

fn ctx(db: &TestDb, clock: Clock) -> JobCtx {
    JobCtx {
        db: Pools::new(&db.config()).expect("pools").write,
        clock,
        retention_months: 12,
        premake_months: 6,
        dedupe_window: Duration::from_secs(24 * 3600),
    }
}

async fn months(db: &TestDb) -> Vec<Month> {
    partitions::existing(&db.client().await)
        .await
        .expect("list")
}
