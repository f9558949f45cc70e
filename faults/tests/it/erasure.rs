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

async fn summary_rows(c: &Client, sql: &str, app: &str) -> Vec<SummaryRow> {
    c.query(sql, &[&app])
        .await
        .expect(sql)
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// One HTTP request to the gateway with a bearer key: status and JSON body.
async fn call(method: Method, url: &str, key: &str, body: Option<Value>) -> Option<(u16, Value)> {
    let client = HttpClient::builder(TokioExecutor::new()).build_http();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// The UTC midnights of [`DAYS`] in each month of `months`.
fn days_of(months: &[Month]) -> Vec<DateTime<Utc>> {
    months
        .iter()
        .flat_map(|m| DAYS.map(|d| m.start() + chrono::Duration::days(d)))
        .collect()
}

/// `n` events of `user` in `app`, spread over `days` (through each day), the [`NAMES`] and eight
/// sessions of the user's own, in one server-side statement.
async fn load(c: &Client, app: &str, user: &str, n: i64, days: &[DateTime<Utc>]) {
    let names = NAMES.map(str::to_owned).to_vec();
    c.execute(
        "INSERT INTO analytics_events \
           (event_id, app_id, event_name, occurred_at, received_at, user_id, session_id) \
         SELECT gen_random_uuid(), $1, n[1 + (g / cardinality(d)) % cardinality(n)], \
                d[1 + g % cardinality(d)] + make_interval(secs => g % 86400), now(), $2, \
                $2 || '-s' || (g / (cardinality(d) * cardinality(n))) % 8 \
           FROM (SELECT $3::timestamptz[] AS d, $4::text[] AS n) p, \
                generate_series(0, $5::bigint - 1) g",
        &[&app, &user, &days, &names, &n],
    )
    .await
    .expect("load history");
}

/// `n` quarantined events of `user` in `app` at `at`.
async fn quarantine(c: &Client, app: &str, user: &str, n: i64, at: DateTime<Utc>) {
    c.execute(
        "INSERT INTO events_quarantine \
           (event_id, app_id, event_name, occurred_at, received_at, user_id) \
         SELECT gen_random_uuid(), $1, 'view', t + make_interval(mins => g::int), now(), $2 \
           FROM (SELECT $3::timestamptz AS t) p, generate_series(1, $4::bigint) g",
        &[&app, &user, &at, &n],
    )
    .await
    .expect("quarantine");
}

/// A dead letter of one event of `user` in `app`, as the writer stores it.
async fn dead_letter(c: &Client, app: &str, user: &str) {
    let e = testkit::view_event(app, user);
    let payload = shared::queue::encode(std::slice::from_ref(&e)).expect("encode");
    c.execute(
        "INSERT INTO dead_letters (event_id, app_id, payload, error, stream, entry_id, deliveries) \
         VALUES ($1, $2, $3, 'refused', 'stream', gen_random_uuid()::text, 3)",
        &[&e.event_id, &app, &payload],
    )
    .await
    .expect("dead letter");
}

/// [`POSTED`] events of `user` with ids of their own, on the history's days and names of `month`.
fn posted(user: &str, month: Month) -> (Vec<Uuid>, Value) {
    let days = days_of(&[month]);
    let ids: Vec<Uuid> = (0..POSTED).map(|_| Uuid::new_v4()).collect();
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let at = days[i % days.len()] + chrono::Duration::minutes(i as i64 + 60);
            json!({
                "event_id": id,
                "event_name": NAMES[(i / days.len()) % NAMES.len()],
                "timestamp": at.to_rfc3339(),
                "user_id": user,
                "session_id": format!("{user}-s{}", i % 8),
            })
        })
        .collect();
    (ids, Value::Array(events))
}

/// The apps and keys, and what was stored before the daemons started.
struct Before {
    app: String,
    app2: String,
    admin: String,
    ingest: String,
    bystander: [i64; 3],
    second: [i64; 3],
    summary: Vec<SummaryRow>,
    summary2: Vec<SummaryRow>,
}

/// Two apps and an admin key of the first, their history ([`load_history`]), then one fold, so
/// the summary holds the history.
async fn prepare(w: &World, months: &[Month]) -> Before {
    let app = &w.cli("ingest-gateway", &["apps", "create", "--name", "x"])[0];
    let other = &w.cli("ingest-gateway", &["apps", "create", "--name", "y"])[0];
    let text = |v: &Value, k: &str| v[k].as_str().expect(k).to_owned();
    let (a1, a2) = (text(app, "app_id"), text(other, "app_id"));
    let admin = &w.cli(
        "ingest-gateway",
        &["keys", "create", "--app", &a1, "--kind", "admin"],
    )[0];
    load_history(w, &a1, &a2, months).await;
    w.cli(
        "maintenance-worker",
        &["run-once", "--no-create-partitions", "--no-analyze"],
    );
    let members = (months.len() * DAYS.len() * NAMES.len()) as i64;
    let victim = rows_of(w, &a1, VICTIM).await;
    assert_eq!(victim, [VICTIM_HISTORY, QUARANTINED, members]);
    let summary = w.summary(&a1).await;
    assert!(summary.iter().all(|r| r.3 == 2), "{summary:?}");
    Before {
        bystander: rows_of(w, &a1, BYSTANDER).await,
        second: rows_of(w, &a2, VICTIM).await,
        summary,
        summary2: w.summary(&a2).await,
        admin: text(admin, "key"),
        ingest: text(app, "ingest_key"),
        app: a1,
        app2: a2,
    }
}

/// The victim's history, the bystander's on the same days, the victim of the second app;
/// quarantined rows and one dead letter of each.
async fn load_history(w: &World, a1: &str, a2: &str, months: &[Month]) {
    let days = days_of(months);
    load(&w.c, a1, VICTIM, VICTIM_HISTORY, &days).await;
    load(&w.c, a1, BYSTANDER, BYSTANDER_HISTORY, &days).await;
    load(&w.c, a2, VICTIM, SECOND_APP_HISTORY, &days).await;
    // Months without a partition (the daemon makes them 6 months ahead): the partitions job
    // cannot move these rows into `analytics_events`, so the quarantine pass finds all 50.
    let now = Month::of(Utc::now());
    for (plus, n) in [(8, QUARANTINED / 2), (9, QUARANTINED - QUARANTINED / 2)] {
        quarantine(&w.c, a1, VICTIM, n, now.plus(plus).start()).await;
    }
    quarantine(&w.c, a1, BYSTANDER, 5, now.plus(9).start()).await;
    quarantine(&w.c, a2, VICTIM, 5, now.plus(9).start()).await;
    for (a, u) in [(a1, VICTIM), (a1, BYSTANDER), (a2, VICTIM)] {
        dead_letter(&w.c, a, u).await;
    }
}

const EVENTS_OF: &str = "SELECT count(*) FROM analytics_events WHERE app_id = $1 AND user_id = ";
const QUARANTINE_OF: &str =
    "SELECT count(*) FROM events_quarantine WHERE app_id = $1 AND user_id = ";
const MEMBERS_OF: &str =
    "SELECT count(*) FROM summary_members WHERE app_id = $1 AND kind = 'u' AND member = ";

/// The rows of `user` (one of the constants) in `app`: events, quarantined, summary members.
async fn rows_of(w: &World, app: &str, user: &str) -> [i64; 3] {
    let mut out = [0; 3];
    for (i, sql) in [EVENTS_OF, QUARANTINE_OF, MEMBERS_OF].iter().enumerate() {
        out[i] = w.count(&format!("{sql}'{user}'"), app).await;
    }
    out
}

/// Dead letters left that name `user` of `app`, decoded.
async fn dead_letters_of(w: &World, app: &str, user: &str) -> usize {
    let rows =
        w.c.query("SELECT payload FROM dead_letters", &[])
            .await
            .expect("dead letters");
    rows.iter()
        .filter(|r| {
            shared::queue::decode(r.get(0)).is_ok_and(|events| {
                events
                    .iter()
                    .any(|e| e.app_id == app && e.user_id.as_deref() == Some(user))
            })
        })
        .count()
}

/// Entries left in the pipeline's streams.
async fn queued_entries(prefix: &str) -> i64 {
    let client = redis::Client::open(REDIS_URL).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys = Keys::new(prefix, SHARDS);
    testkit::stream_entries(&mut conn, &keys)
        .await
        .expect("XLEN")
}

/// The daemons running, by binary, and the logs of those killed so far (a killed daemon's log
/// file goes with it).
#[derive(Default)]
struct Daemons {
    running: Vec<(&'static str, Daemon)>,
    gone: String,
}

impl Daemons {
    async fn start(&mut self, w: &World, bin: &'static str) {
        self.running.push((bin, w.start(bin).await));
    }

    /// SIGKILLs the daemon of `bin` (by dropping it), keeping its log.
    fn kill(&mut self, bin: &str) {
        let i = self.running.iter().position(|(b, _)| *b == bin);
        let (_, d) = self.running.remove(i.expect("running"));
        self.gone += &format!("\n--- {bin}, killed:\n{}", d.logs());
    }

    fn logs(&self) -> String {
        let running: Vec<String> = self.running.iter().map(|(_, d)| d.logs()).collect();
        format!("{}\n--- running:\n{}", self.gone, running.join("\n"))
    }
}

/// Posts one request; its status and JSON body.
async fn post(w: &World, path: &str, key: &str, body: Value) -> Option<(u16, Value)> {
    let url = format!("http://{}{path}", w.stack.gateway_addr);
    call(Method::POST, &url, key, Some(body)).await
}

/// Waits for the request to be in `phase` with `removed.events` in `events`; its count then.
async fn reaches(
    w: &World,
    id: Uuid,
    phase: &str,
    events: std::ops::Range<i64>,
    limit: u64,
) -> Option<i64> {
    wait_for(Duration::from_secs(limit), || async {
        let (_, p, removed) = w.erasure(id).await;
        let n = removed["events"].as_i64().unwrap_or(0);
        (p.as_deref() == Some(phase) && events.contains(&n)).then_some(n)
    })
    .await
}

/// Kills the writer, posts the events it must see and then the request, kills the gateway while
/// the request waits for the queue, starts the writer again, and kills the maintenance worker
/// halfway through the deletion. Returns the request and the daemons.
async fn erase_with_kills(w: &World, b: &Before, posted: [Value; 2]) -> (Uuid, Daemons) {
    let mut d = Daemons::default();
    for bin in ["ingest-gateway", "batch-writer", "maintenance-worker"] {
        d.start(w, bin).await;
    }
    // The writer's kill: what is posted now stays queued until it is back.
    d.kill("batch-writer");
    for events in posted {
        let r = post(w, "/v1/events", &b.ingest, events).await;
        let ok = matches!(&r, Some((202, b)) if b["accepted"] == POSTED);
        assert!(ok, "{r:?}\n{}", d.logs());
    }
    let r = post(
        w,
        "/v1/privacy/erasures",
        &b.admin,
        json!({"user_ids": [VICTIM]}),
    )
    .await;
    let id = match &r {
        Some((202, reply)) => reply["erasure_id"].as_str().and_then(|s| s.parse().ok()),
        _ => None,
    };
    let id: Uuid = id.unwrap_or_else(|| panic!("erasure request: {r:?}\n{}", d.logs()));

    // The gateway's kill, while the request waits for the queue (no writer is running).
    let queued = reaches(w, id, "queue", 0..1, 20).await;
    assert!(queued.is_some(), "{:?}\n{}", w.erasure(id).await, d.logs());
    d.kill("ingest-gateway");
    d.start(w, "ingest-gateway").await;
    let (status, phase, removed) = w.erasure(id).await;
    assert_eq!(
        (status.as_str(), phase.as_deref(), &removed["events"]),
        ("running", Some("queue"), &json!(0)),
        "nothing is deleted while what was queued before the request is not stored"
    );
    d.start(w, "batch-writer").await;

    // The maintenance worker's kill, halfway through the deletion (in the second month's
    // partition), most likely with a batch in flight: it rolls back, uncounted.
    let total = VICTIM_HISTORY + POSTED as i64;
    let deleting = reaches(w, id, "delete", total / 2..total, 60).await;
    assert!(
        deleting.is_some(),
        "{:?}\n{}",
        w.erasure(id).await,
        d.logs()
    );
    d.kill("maintenance-worker");
    let (status, phase, removed) = w.erasure(id).await;
    assert_eq!(
        (status.as_str(), phase.as_deref()),
        ("running", Some("delete"))
    );
    assert!(removed["events"].as_i64() < Some(total), "{removed}");
    d.start(w, "maintenance-worker").await;
    (id, d)
}

/// Nothing of the victim of the first app is left anywhere; its clear id is forgotten.
async fn assert_victim_gone(w: &World, b: &Before, id: Uuid, logs: &str) {
    assert_eq!(rows_of(w, &b.app, VICTIM).await, [0, 0, 0], "{logs}");
    assert_eq!(dead_letters_of(w, &b.app, VICTIM).await, 0);
    for sql in [
        "SELECT count(*) FROM summary_pending WHERE app_id = $1 AND 'victim' = ANY(users)",
        "SELECT count(*) FROM summary_members \
         WHERE app_id = $1 AND kind = 's' AND member LIKE 'victim-s%'",
    ] {
        assert_eq!(w.count(sql, &b.app).await, 0, "{sql}");
    }
    let ids =
        w.c.query_one(
            "SELECT count(*), count(user_id) FROM erasure_users WHERE erasure_id = $1",
            &[&id],
        )
        .await
        .expect("erasure users");
    assert_eq!((ids.get::<_, i64>(0), ids.get::<_, i64>(1)), (1, 0));
}

/// Everyone else's rows are all there, the bystander's posted events stored exactly once.
async fn assert_others_kept(w: &World, b: &Before, posted: &[Uuid], logs: &str) {
    assert_eq!(rows_of(w, &b.app2, VICTIM).await, b.second);
    assert_eq!(dead_letters_of(w, &b.app2, VICTIM).await, 1);
    assert_eq!(dead_letters_of(w, &b.app, BYSTANDER).await, 1);
    let mut want = b.bystander;
    want[0] += POSTED as i64;
    assert_eq!(rows_of(w, &b.app, BYSTANDER).await, want, "{logs}");
    let stored =
        w.c.query_one(
            "SELECT count(*), count(DISTINCT event_id) FROM analytics_events \
             WHERE app_id = $1 AND event_id = ANY($2)",
            &[&b.app, &posted],
        )
        .await
        .expect("posted events");
    let stored: (i64, i64) = (stored.get(0), stored.get(1));
    assert_eq!(stored, (POSTED as i64, POSTED as i64), "{logs}");
}

/// The summary is what the events say, with one user fewer on every (day, event name); the
/// second app's is untouched.
async fn assert_summary(w: &World, b: &Before) {
    let summary = w.summary(&b.app).await;
    let recomputed = summary_rows(
        &w.c,
        "SELECT (occurred_at AT TIME ZONE 'UTC')::date, event_name, count(*), \
                count(DISTINCT user_id), count(DISTINCT session_id) \
           FROM analytics_events WHERE app_id = $1 GROUP BY 1, 2 ORDER BY 1, 2",
        &b.app,
    )
    .await;
    assert_eq!(summary, recomputed);
    let users = |rows: &[SummaryRow], less: i64| -> Vec<(NaiveDate, String, i64)> {
        rows.iter()
            .map(|r| (r.0, r.1.clone(), r.3 - less))
            .collect()
    };
    assert_eq!(users(&summary, 0), users(&b.summary, 1));
    assert_eq!(w.summary(&b.app2).await, b.summary2);
}

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
