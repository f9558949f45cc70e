//! A large erasure survives a SIGKILL of every daemon: the writer while the events it must see
//! are still queued, the gateway that took the request, and the maintenance worker in the middle
//! of its deletion batches. The request still completes, its `removed` counts are exactly the rows
//! that were there, and nothing of the user is left while everyone else's rows are all there.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use shared::queue::Keys;
use shared::schema::partitions::{self, Month};
use testkit::{redis_cleanup, wait_for, Daemon, Stack, StackBuilder, TestDb};
use tokio_postgres::Client;
use uuid::Uuid;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
const SHARDS: u16 = 2;
const VICTIM: &str = "victim";
const BYSTANDER: &str = "bystander";
/// About 30 batches of `BATCH_ROWS` (5,000), so the worker can be caught between two of them.
const VICTIM_HISTORY: i64 = 150_000;
const BYSTANDER_HISTORY: i64 = 20_000;
const SECOND_APP_HISTORY: i64 = 1_000;
const QUARANTINED: i64 = 50;
const POSTED: usize = 200;
const NAMES: [&str; 3] = ["view", "click", "buy"];
/// The days of each month the history lands on, as days after the 1st.
const DAYS: [i64; 4] = [1, 8, 15, 22];

/// One row of `daily_analytics_summary`: day, event name, events, unique users and sessions.
type SummaryRow = (NaiveDate, String, i64, i64, i64);

/// The test's database, and the daemons' variables and binaries (each daemon is started on its
/// own: [`World::start`]).
struct World {
    /// Held for its drop, which drops the database.
    _db: TestDb,
    c: Client,
    stack: Stack,
}

impl World {
    async fn new(prefix: &str) -> Self {
        let db = TestDb::migrated().await;
        let c = db.client().await;
        let stack = StackBuilder::new(db.env_vars(), REDIS_URL, prefix)
            .pools(6, 1, 2, 1)
            .var("STREAM_SHARDS", SHARDS.to_string())
            .var("QUEUE_HIGH_WATER", "10000000")
            .var("CLAIM_IDLE_MS", "2000")
            .var("BATCH_LINGER_MS", "100")
            .var("LEADER_RETRY_MS", "500")
            // The scheduled fold every second: the erasure holds it off while it deletes, so
            // the summary members it counts are exact all the same.
            .var("SCHEDULE_REFRESH_VIEWS", "* * * * * *")
            .build()
            .expect("daemons built");
        Self { _db: db, c, stack }
    }

    /// Runs a command of a daemon binary; its JSON output, one value a line.
    fn cli(&self, bin: &str, args: &[&str]) -> Vec<Value> {
        let out = self.stack.command(bin, args).expect("run a command");
        out.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    async fn start(&self, bin: &str) -> Daemon {
        let mut env = self.stack.env.clone();
        if bin == "batch-writer" {
            env.push(("WRITER_CONSUMER_NAME".into(), "w0".into()));
        }
        let d = Daemon::start(&self.stack.bin(bin), &env).await;
        assert!(d.wait_ready(Duration::from_secs(30)).await, "{}", d.logs());
        d
    }

    async fn count(&self, sql: &str, app: &str) -> i64 {
        self.c.query_one(sql, &[&app]).await.expect(sql).get(0)
    }

    /// The request's status, phase and `removed`.
    async fn erasure(&self, id: Uuid) -> (String, Option<String>, Value) {
        let r = self
            .c
            .query_one(
                "SELECT status, phase, removed FROM erasures WHERE erasure_id = $1",
                &[&id],
            )
            .await
            .expect("erasure row");
        (r.get(0), r.get(1), r.get(2))
    }

    async fn summary(&self, app: &str) -> Vec<SummaryRow> {
        summary_rows(
            &self.c,
            "SELECT day, event_name, events, unique_users, unique_sessions \
             FROM daily_analytics_summary WHERE app_id = $1 ORDER BY 1, 2",
            app,
        )
        .await
    }
}

/// Deletes the test's Redis keys however the test ends.
struct RedisPrefix(String);

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let prefix = self.0.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(redis_cleanup(REDIS_URL, &prefix));
            }
        })
        .join();
    }
}

mod checks;
mod history;
mod kills;

use checks::*;
use history::*;
use kills::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_daemon_killed_once_during_a_large_erasure_it_completes_with_exact_counts() {
    let prefix = format!("erasure-{}", Uuid::new_v4().simple());
    let _redis = RedisPrefix(prefix.clone());
    let w = World::new(&prefix).await;
    let now = Month::of(Utc::now());
    let months = [now.plus(-2), now.plus(-1), now];
    let existing = partitions::existing(&w.c).await.expect("partitions");
    assert!(months.iter().all(|m| existing.contains(m)), "{existing:?}");
    assert!(!existing.contains(&now.plus(8)) && !existing.contains(&now.plus(9)));
    let b = prepare(&w, &months).await;

    let (_, victim_events) = posted(VICTIM, now.plus(-1));
    let (bystander_ids, bystander_events) = posted(BYSTANDER, now.plus(-1));
    let (id, d) = erase_with_kills(&w, &b, [victim_events, bystander_events]).await;
    let done = wait_for(Duration::from_secs(120), || async {
        let (status, _, removed) = w.erasure(id).await;
        (status == "done" || status == "failed").then_some((status, removed))
    })
    .await;
    let logs = d.logs();
    let Some((status, removed)) = done else {
        panic!("not done: {:?}\n{logs}", w.erasure(id).await);
    };
    assert_eq!(status, "done", "{removed}\n{logs}");
    let expected = json!({
        "events": VICTIM_HISTORY + POSTED as i64,
        "quarantine": QUARANTINED,
        "dead_letters": 1,
        "summary_members": months.len() * DAYS.len() * NAMES.len(),
    });
    assert_eq!(removed, expected, "{logs}");
    let url = format!("http://{}/v1/privacy/erasures/{id}", w.stack.gateway_addr);
    let r = call(Method::GET, &url, &b.admin, None).await;
    let reply = r.as_ref().filter(|r| r.0 == 200).map(|r| &r.1);
    let reply = reply.unwrap_or_else(|| panic!("erasure status: {r:?}\n{logs}"));
    assert_eq!(
        (&reply["status"], &reply["removed"]),
        (&json!("done"), &expected)
    );

    assert_victim_gone(&w, &b, id, &logs).await;
    assert_others_kept(&w, &b, &bystander_ids, &logs).await;
    assert_eq!(queued_entries(&prefix).await, 0, "the queue drained");
    assert_summary(&w, &b).await;
    drop(d);
}
