//! The load of a fault run, and the books it keeps: every event carries a sequence number of its
//! own (in `session_id`), so what the gateway acknowledged can be compared with what PostgreSQL
//! holds, event by event. The load walks every exactly-once path:
//! - one event in three carries a client-chosen `event_id`;
//! - client retries: acknowledged events with a client id are sent again with the same id and
//!   another `timestamp` (one in four in the previous month, another partition), and the
//!   client-id events of a request that got no 202 are sent again as a client would;
//! - poison events (`event_name` [`POISON`]), which PostgreSQL refuses while the run's poison
//!   switch is on (see `Stack::poison`), so batches split, events are dead-lettered and replayed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Datelike;
use testkit::HttpSender;
use tokio_util::sync::CancellationToken;

/// The event name PostgreSQL refuses while a run's poison switch is on.
pub const POISON: &str = "fault_poison";

/// One request in this many carries a poison event: every batch holding one is split, so more
/// would measure splitting rather than the faults.
pub const POISON_EVERY: u64 = 300;

/// One event as the load sends it: its sequence number and, when the client chose one, its id.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    id: Option<uuid::Uuid>,
    poison: bool,
}

/// Acknowledged sequence numbers and request outcomes.
#[derive(Default)]
pub struct Books {
    next: AtomicU64,
    acked: Mutex<Vec<u64>>,
    /// Events with a client id: acknowledged ones (to retry later) and unacknowledged ones (to
    /// send again, as a client whose request failed would).
    retry_acked: Mutex<Vec<Sent>>,
    retry_failed: Mutex<Vec<Sent>>,
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
    pub retries_sent: AtomicU64,
    pub poison_sent: AtomicU64,
}

impl Books {
    pub fn acked(&self) -> Vec<u64> {
        let mut v = self.acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The gateway as a client sees it.
#[derive(Clone)]
pub struct Sender {
    http: HttpSender,
    pub books: Arc<Books>,
}

impl Sender {
    pub fn new(gateway_addr: &str, key: &str) -> Self {
        Self {
            http: HttpSender::new(
                format!("http://{gateway_addr}/v1/events"),
                format!("Bearer {key}"),
                64,
            ),
            books: Arc::new(Books::default()),
        }
    }

    /// Sends `n` new events in one request (one in [`POISON_EVERY`] requests carries a poison
    /// event when `poison` is set); when the gateway answered 202 for all of them, their sequence numbers
    /// are booked as acknowledged and the first is returned.
    pub async fn send(&self, n: usize) -> Option<u64> {
        self.send_new(n, false).await
    }

    async fn send_new(&self, n: usize, poison: bool) -> Option<u64> {
        let first = self.books.next.fetch_add(n as u64, Ordering::Relaxed);
        let with_poison = poison && first % (POISON_EVERY * n as u64) < n as u64 && n > 1;
        let batch: Vec<Sent> = (first..first + n as u64)
            .map(|seq| Sent {
                seq,
                id: (seq % 3 == 0).then(uuid::Uuid::new_v4),
                poison: with_poison && seq == first,
            })
            .collect();
        if with_poison {
            self.books.poison_sent.fetch_add(1, Ordering::Relaxed);
        }
        self.post(&batch, None).await.then_some(first)
    }

    /// Sends `batch` with `timestamp` (none: the gateway's receive time); books the outcome.
    async fn post(&self, batch: &[Sent], timestamp: Option<&str>) -> bool {
        let events: Vec<serde_json::Value> = batch
            .iter()
            .map(|e| {
                let mut v = serde_json::json!({
                    "event_name": if e.poison { POISON } else { "fault_probe" },
                    "session_id": format!("s{}", e.seq),
                    "user_id": format!("u{}", e.seq % 97),
                    "metadata": {"seq": e.seq},
                });
                if let Some(id) = e.id {
                    v["event_id"] = serde_json::json!(id);
                }
                if let Some(t) = timestamp {
                    v["timestamp"] = serde_json::json!(t);
                }
                v
            })
            .collect();
        let body = serde_json::to_vec(&events).unwrap_or_default();
        let reply = self.http.post(Bytes::from(body)).await;
        let accepted = match reply {
            Some((202, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["accepted"].as_u64())
                .is_some_and(|a| a == batch.len() as u64),
            _ => false,
        };
        let with_id = batch.iter().filter(|e| e.id.is_some()).copied();
        if accepted {
            self.books
                .acked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(batch.iter().map(|e| e.seq));
            let mut r = self
                .books
                .retry_acked
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if r.len() < 10_000 {
                r.extend(with_id);
            }
            self.books.requests_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut r = self
                .books
                .retry_failed
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            r.extend(with_id);
            self.books.requests_failed.fetch_add(1, Ordering::Relaxed);
        }
        accepted
    }

    /// A client retry: events with a client id sent again, the same ids and sequence numbers,
    /// with another timestamp: first those whose request failed, else acknowledged ones. One
    /// retry in four is dated in the previous month (another partition).
    pub async fn retry(&self, n: usize, round: u64) -> bool {
        let failed: Vec<Sent> = {
            let mut f = self
                .books
                .retry_failed
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let k = f.len().min(n);
            f.drain(..k).collect()
        };
        let batch = if failed.is_empty() {
            let mut a = self
                .books
                .retry_acked
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let k = a.len().min(n);
            a.drain(..k).collect()
        } else {
            failed
        };
        if batch.is_empty() {
            return false;
        }
        let now = chrono::Utc::now();
        let at = if round.is_multiple_of(4) {
            // The last hour of the previous month.
            let first = now.date_naive().with_day(1).unwrap_or(now.date_naive());
            first
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc())
                .unwrap_or(now)
                - chrono::Duration::minutes(30)
        } else {
            now - chrono::Duration::seconds(90)
        };
        self.books
            .retries_sent
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.post(&batch, Some(&at.to_rfc3339())).await
    }
}

/// A steady load: `connections` senders, each sending `batch` events then pausing `pause`, with
/// poison events mixed in when `poison`, and one client-retry request every tenth request.
pub struct Load {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(
        sender: &Sender,
        connections: usize,
        batch: usize,
        pause: Duration,
        poison: bool,
    ) -> Self {
        let stop = CancellationToken::new();
        let tasks = (0..connections)
            .map(|_| {
                let (s, stop) = (sender.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut round = 0u64;
                    while !stop.is_cancelled() {
                        round += 1;
                        if round.is_multiple_of(10) {
                            s.retry(batch / 2, round / 10).await;
                        } else if s.send_new(batch, poison).await.is_none() {
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

/// Reads every stored sequence number (partitions and quarantine) and compares.
pub async fn audit(db: &tokio_postgres::Client, acked: &[u64]) -> anyhow::Result<Audit> {
    let rows = db
        .query(
            "SELECT session_id, count(*) FROM ( \
               SELECT session_id, event_name FROM analytics_events \
               UNION ALL SELECT session_id, event_name FROM events_quarantine) e \
             WHERE event_name IN ('fault_probe', 'fault_poison') GROUP BY session_id",
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
