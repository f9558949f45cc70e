//! Batching: entries grouped into batches of at most `BATCH_SIZE` events, each closed
//! `BATCH_LINGER_MS` after its first entry.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::reader::Entry;

/// A group of entries written in one transaction (or, after a data error, in parts).
#[derive(Debug)]
pub struct Batch {
    pub entries: Vec<Entry>,
    pub events: usize,
    pub opened: Instant,
}

/// Groups entries into batches of at most `size` events, closed `linger` after their first entry.
pub async fn batcher(
    mut rx: mpsc::Receiver<Entry>,
    tx: mpsc::Sender<Batch>,
    size: usize,
    linger: Duration,
) {
    let mut current: Option<Batch> = None;
    loop {
        let deadline = current.as_ref().map(|b| b.opened + linger);
        let next = match deadline {
            Some(at) => tokio::select! {
                e = rx.recv() => e,
                _ = tokio::time::sleep_until(at.into()) => {
                    if !send(&tx, current.take()).await { return; }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(entry) = next else {
            send(&tx, current.take()).await;
            return;
        };
        if !add(&tx, &mut current, entry, size).await {
            return;
        }
    }
}

/// Sends `batch`, if any, to the writers; false when they are gone.
async fn send(tx: &mpsc::Sender<Batch>, batch: Option<Batch>) -> bool {
    match batch {
        Some(b) => tx.send(b).await.is_ok(),
        None => true,
    }
}

/// Adds `entry` to the open batch (opening one if needed), sending the batch first when the entry
/// would take it over `size` events, and after when it is full. False when the writers are gone.
async fn add(
    tx: &mpsc::Sender<Batch>,
    current: &mut Option<Batch>,
    entry: Entry,
    size: usize,
) -> bool {
    let n = entry.event_count();
    if current.as_ref().is_some_and(|b| b.events + n > size) && !send(tx, current.take()).await {
        return false;
    }
    let b = current.get_or_insert_with(|| Batch {
        entries: Vec::new(),
        events: 0,
        opened: Instant::now(),
    });
    b.entries.push(entry);
    b.events += n;
    if b.events >= size {
        return send(tx, current.take()).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::queue::QueuedEvent;

    fn entry(n: usize) -> Entry {
        let e = QueuedEvent {
            event_id: uuid::Uuid::now_v7(),
            app_id: "a".into(),
            event_name: "e".into(),
            occurred_at_us: 0,
            received_at_us: 0,
            user_id: None,
            session_id: None,
            metadata: None,
            client_id: false,
        };
        Entry {
            shard: 0,
            id: "1-0".into(),
            deliveries: 1,
            declared: n,
            content: Ok(vec![e; n]),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_by_size() {
        let (etx, erx) = mpsc::channel(100);
        let (btx, mut brx) = mpsc::channel(100);
        tokio::spawn(batcher(erx, btx, 10, Duration::from_secs(3600)));
        for _ in 0..7 {
            etx.send(entry(3)).await.expect("send");
        }
        // 3+3+3 = 9, the fourth would pass 10: the batch closes at 9, then 9 again.
        assert_eq!(brx.recv().await.map(|b| b.events), Some(9));
        assert_eq!(brx.recv().await.map(|b| b.events), Some(9));
        etx.send(entry(10)).await.expect("send");
        assert_eq!(brx.recv().await.map(|b| b.events), Some(3));
        assert_eq!(
            brx.recv().await.map(|b| b.events),
            Some(10),
            "a full entry closes at once"
        );
        drop(etx);
        assert!(brx.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_after_the_linger_time() {
        let (etx, erx) = mpsc::channel(100);
        let (btx, mut brx) = mpsc::channel(100);
        tokio::spawn(batcher(erx, btx, 1000, Duration::from_millis(200)));
        let started = tokio::time::Instant::now();
        etx.send(entry(5)).await.expect("send");
        tokio::time::sleep(Duration::from_millis(150)).await;
        etx.send(entry(5)).await.expect("send");
        let b = brx.recv().await.expect("batch");
        assert_eq!(b.events, 10);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_millis(250),
            "{waited:?}"
        );
        // The channel closing flushes what is open.
        etx.send(entry(1)).await.expect("send");
        drop(etx);
        assert_eq!(brx.recv().await.map(|b| b.events), Some(1));
    }
}
