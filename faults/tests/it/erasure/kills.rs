//! The daemons started and killed around the erasure, and the HTTP calls it takes.

use super::*;

pub(super) async fn summary_rows(c: &Client, sql: &str, app: &str) -> Vec<SummaryRow> {
    c.query(sql, &[&app])
        .await
        .expect(sql)
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// One HTTP request to the gateway with a bearer key: status and JSON body.
pub(super) async fn call(
    method: Method,
    url: &str,
    key: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
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

/// Entries left in the pipeline's streams.
pub(super) async fn queued_entries(prefix: &str) -> i64 {
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
pub(super) struct Daemons {
    pub(super) running: Vec<(&'static str, Daemon)>,
    pub(super) gone: String,
}

impl Daemons {
    pub(super) async fn start(&mut self, w: &World, bin: &'static str) {
        self.running.push((bin, w.start(bin).await));
    }

    /// SIGKILLs the daemon of `bin` (by dropping it), keeping its log.
    pub(super) fn kill(&mut self, bin: &str) {
        let i = self.running.iter().position(|(b, _)| *b == bin);
        let (_, d) = self.running.remove(i.expect("running"));
        self.gone += &format!("\n--- {bin}, killed:\n{}", d.logs());
    }

    pub(super) fn logs(&self) -> String {
        let running: Vec<String> = self.running.iter().map(|(_, d)| d.logs()).collect();
        format!("{}\n--- running:\n{}", self.gone, running.join("\n"))
    }
}

/// Posts one request; its status and JSON body.
pub(super) async fn post(w: &World, path: &str, key: &str, body: Value) -> Option<(u16, Value)> {
    let url = format!("http://{}{path}", w.stack.gateway_addr);
    call(Method::POST, &url, key, Some(body)).await
}

/// Waits for the request to be in `phase` with `removed.events` in `events`; its count then.
pub(super) async fn reaches(
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
pub(super) async fn erase_with_kills(w: &World, b: &Before, posted: [Value; 2]) -> (Uuid, Daemons) {
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
