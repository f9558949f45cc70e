//! The load of a fault run, and the books it keeps: every event carries a sequence number of its
//! own (in `session_id`), so what the gateway acknowledged can be compared with what PostgreSQL
//! holds, event by event. One event in three also carries a client-chosen `event_id`, so both the
//! gateway-assigned and the client-retry paths of exactly-once are exercised.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

/// Acknowledged sequence numbers and request outcomes.
#[derive(Default)]
pub struct Books {
    next: AtomicU64,
    acked: Mutex<Vec<u64>>,
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
}

impl Books {
    pub fn acked(&self) -> Vec<u64> {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The gateway as a client sees it.
#[derive(Clone)]
pub struct Sender {
    url: String,
    key: String,
    client: Client<HttpConnector, Full<Bytes>>,
    pub books: Arc<Books>,
}

impl Sender {
    pub fn new(gateway_addr: &str, key: &str) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(HttpConnector::new());
        Self {
            url: format!("http://{gateway_addr}/v1/events"),
            key: key.to_owned(),
            client,
            books: Arc::new(Books::default()),
        }
    }

    /// Sends `n` new events in one request; when the gateway answered 202 for all of them, their
    /// sequence numbers are booked as acknowledged and the first is returned.
    pub async fn send(&self, n: usize) -> Option<u64> {
        let first = self.books.next.fetch_add(n as u64, Ordering::Relaxed);
        let seqs: Vec<u64> = (first..first + n as u64).collect();
        let events: Vec<serde_json::Value> = seqs
            .iter()
            .map(|s| {
                let mut e = serde_json::json!({
                    "event_name": "fault_probe",
                    "session_id": format!("s{s}"),
                    "user_id": format!("u{}", s % 97),
                    "metadata": {"seq": s},
                });
                if s % 3 == 0 {
                    e["event_id"] = serde_json::json!(uuid::Uuid::new_v4());
                }
                e
            })
            .collect();
        let body = serde_json::to_vec(&events).unwrap_or_default();
        let Ok(req) = http::Request::post(&self.url)
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
        else {
            return None;
        };
        let reply = tokio::time::timeout(Duration::from_secs(10), async {
            let resp = self.client.request(req).await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        })
        .await;
        let accepted = match reply {
            Ok(Some((202, body))) => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["accepted"].as_u64())
                .is_some_and(|a| a == n as u64),
            _ => false,
        };
        if accepted {
            self.books
                .acked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(seqs);
            self.books.requests_ok.fetch_add(1, Ordering::Relaxed);
            Some(first)
        } else {
            self.books.requests_failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A steady load: `connections` senders, each sending `batch` events then pausing `pause`.
pub struct Load {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(sender: &Sender, connections: usize, batch: usize, pause: Duration) -> Self {
        let stop = CancellationToken::new();
        let tasks = (0..connections)
            .map(|_| {
                let (s, stop) = (sender.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        if s.send(batch).await.is_none() {
                            // A refused request: back off a little, as a real client would.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Self { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Acknowledged events compared with the rows stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    pub acknowledged: u64,
    /// Acknowledged events present (once or more).
    pub stored: u64,
    pub lost: u64,
    /// Extra copies of any event, acknowledged or not.
    pub doubled: u64,
}

/// Reads every stored sequence number and compares.
pub async fn audit(db: &tokio_postgres::Client, acked: &[u64]) -> anyhow::Result<Audit> {
    let rows = db
        .query(
            "SELECT session_id, count(*) FROM analytics_events \
             WHERE event_name = 'fault_probe' GROUP BY session_id",
            &[],
        )
        .await?;
    let mut counts: HashMap<u64, i64> = HashMap::with_capacity(rows.len());
    for r in rows {
        let s: Option<String> = r.get(0);
        if let Some(seq) = s.and_then(|s| s.strip_prefix('s')?.parse().ok()) {
            counts.insert(seq, r.get(1));
        }
    }
    let stored = acked.iter().filter(|s| counts.contains_key(s)).count() as u64;
    Ok(Audit {
        acknowledged: acked.len() as u64,
        stored,
        lost: acked.len() as u64 - stored,
        doubled: counts.values().map(|c| (c - 1).max(0) as u64).sum(),
    })
}

/// Sends one probe event until the gateway takes it, then waits until it is stored; the time
/// this took, or `None` after `limit`. `db` opens a connection (one per look: the server may have
/// just restarted).
pub async fn recovery<F, Fut>(sender: &Sender, db: F, limit: Duration) -> Option<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<tokio_postgres::Client>>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        let Some(seq) = sender.send(1).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let key = format!("s{seq}");
        while start.elapsed() < limit {
            if let Ok(c) = db().await {
                let row = c
                    .query_opt(
                        "SELECT 1 FROM analytics_events WHERE session_id = $1",
                        &[&key],
                    )
                    .await;
                if let Ok(Some(_)) = row {
                    return Some(start.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    None
}
