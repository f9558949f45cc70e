//! Backups and restores (`docs/operations.md`, "Backups and restores"): the pipeline's
//! PostgreSQL lost for good under load (stopped as a crash would, its data directory removed)
//! while the gateway keeps taking events into the queue Redis, then restored on the same port
//! from a base backup taken under load; the daemons reconnect by themselves.
//!
//! - With the WAL streamed synchronously (`pg_receivewal --synchronous`, named in
//!   `synchronous_standby_names`), the restore replays every commit a writer acknowledged, the
//!   queue still holds everything else: nothing lost, nothing doubled.
//! - From the base backup alone, exactly the events committed after the backup ended are lost:
//!   their entries were deleted from the queue when the writers acknowledged them, so nothing
//!   can refill them. Everything not yet stored at the loss is stored once after the restore.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use faults::load::{audit, Load, Sender};
use faults::stack::Stack;
use testkit::backup::BaseBackup;
use testkit::{redis_cleanup, wait_for, OwnPostgres};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

const REDIS: &str = "redis://127.0.0.1:6379/";

/// The stored copies of each load event, by sequence number (partitions and quarantine).
async fn stored(db: &Client) -> HashMap<u64, i64> {
    let rows = db
        .query(
            "SELECT session_id, count(*) FROM ( \
               SELECT session_id, event_name FROM analytics_events \
               UNION ALL SELECT session_id, event_name FROM events_quarantine) e \
             WHERE event_name = 'fault_probe' GROUP BY session_id",
            &[],
        )
        .await
        .expect("stored events");
    rows.iter()
        .filter_map(|r| {
            let s: String = r.get(0);
            Some((s.strip_prefix('s')?.parse().ok()?, r.get(1)))
        })
        .collect()
}

/// Waits until the server holds at least `n` events.
async fn stored_at_least(stack: &Stack, db: &Client, n: usize) {
    let sql = "SELECT count(*) FROM analytics_events";
    let done = wait_for(Duration::from_secs(90), || async {
        let rows: i64 = db.query_one(sql, &[]).await.ok()?.get(0);
        (rows as usize >= n).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "fewer than {n} stored:\n{}",
        stack.daemons.logs()
    );
}

/// Waits until the gateway has acknowledged `more` events beyond those acknowledged now.
async fn acked_more(stack: &Stack, more: usize) {
    let target = stack.sender.books.acked().len() + more;
    let done = wait_for(Duration::from_secs(90), || async {
        (stack.sender.books.acked().len() >= target).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "the gateway took too few events:\n{}",
        stack.daemons.logs()
    );
}

/// Loses the server with a known content: every insert into the event tables is blocked (the
/// writers' open transactions finish first), what the server holds is read under that lock,
/// and the server is lost with the lock held. The events it held then.
async fn lose_counted(stack: &Stack, pg: &OwnPostgres) -> BTreeSet<u64> {
    let db = stack.db().await.expect("db");
    db.batch_execute("BEGIN; LOCK TABLE analytics_events, events_quarantine IN EXCLUSIVE MODE")
        .await
        .expect("lock");
    let held = stored(&db).await.into_keys().collect();
    pg.lose();
    held
}

/// New events only (no client retries, no poison): what is lost is then exactly what no client
/// sends again.
struct PlainLoad {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PlainLoad {
    fn start(sender: &Sender, connections: usize) -> Self {
        let stop = CancellationToken::new();
        let tasks = (0..connections)
            .map(|_| {
                let (s, stop) = (sender.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        if s.send(20).await.is_none() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// After the restore: the queue drains and every daemon is ready again, none restarted.
async fn drained_and_ready(stack: &Stack) {
    assert!(
        stack.drain(Duration::from_secs(90)).await,
        "the queue did not drain:\n{}",
        stack.daemons.logs()
    );
    let ready = stack.daemons.ready_within(Duration::from_secs(60)).await;
    assert!(ready, "not all ready:\n{}", stack.daemons.logs());
}

/// The pipeline on `pg`, every daemon ready, with a Redis key prefix of its own.
async fn ready_stack(pg: &OwnPostgres, name: &str) -> Stack {
    let prefix = format!("{}-{}", name.replace('_', "-"), std::process::id());
    let stack = Stack::start(pg, REDIS, name, &prefix).await.expect("stack");
    let ready = stack.daemons.ready_within(Duration::from_secs(60)).await;
    assert!(ready, "not all ready:\n{}", stack.daemons.logs());
    stack
}

/// What the server held around its loss.
struct Loss {
    backup: BaseBackup,
    /// Events stored when the backup had ended: all the backup holds, maybe a few more.
    by_backup_end: usize,
    /// Events stored on the server when it was lost.
    at_loss: BTreeSet<u64>,
}

/// Under the running load: a base backup once 2,000 events are stored, 2,000 more stored after
/// it, the server lost, and 2,000 more events taken by the gateway while it is away.
async fn backup_then_lose(stack: &Stack, pg: &OwnPostgres) -> Loss {
    let db = stack.db().await.expect("db");
    stored_at_least(stack, &db, 2_000).await;
    let backup = pg.base_backup("backup").await.expect("base backup");
    let by_backup_end = stored(&db).await.len();
    stored_at_least(stack, &db, by_backup_end + 2_000).await;
    let at_loss = lose_counted(stack, pg).await;
    acked_more(stack, 2_000).await;
    Loss {
        backup,
        by_backup_end,
        at_loss,
    }
}

/// The events a copy of `backup` holds in database `db`.
async fn in_backup(backup: &BaseBackup, db: &str) -> BTreeSet<u64> {
    let copy = OwnPostgres::from_backup(backup).await.expect("backup copy");
    let client = copy.client(db).await.expect("db");
    stored(&client).await.into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_a_base_backup_and_the_synchronous_wal_loses_nothing() {
    let start = Instant::now();
    let (pg, mut wal) = OwnPostgres::start_synchronous_wal()
        .await
        .expect("postgres");
    let stack = ready_stack(&pg, "restore_wal").await;
    let load = Load::start(&stack.sender, 4, 20, Duration::from_millis(10), false);
    let loss = backup_then_lose(&stack, &pg).await;

    wal.stop();
    pg.restore(&loss.backup, Some(&wal.dir))
        .await
        .expect("restore");
    // The restored server keeps `synchronous_standby_names`: commits wait for a new receiver.
    let _wal = pg.receive_wal("wal-after").await.expect("receiver");
    acked_more(&stack, 1_000).await;
    load.stop().await;
    drained_and_ready(&stack).await;

    let acked = stack.sender.books.acked();
    let db = stack.db().await.expect("db");
    let books = audit(&db, &acked).await.expect("audit");
    assert_eq!((books.lost, books.doubled), (0, 0), "{books:?}");
    let after_backup = loss.at_loss.len().saturating_sub(loss.by_backup_end);
    assert!(after_backup > 0, "nothing was committed after the backup");
    println!(
        "base backup + synchronous WAL: {books:?}; at least {after_backup} events committed \
         after the backup ended came back from the WAL; {:.1} s",
        start.elapsed().as_secs_f64()
    );
    redis_cleanup(REDIS, &stack.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_a_base_backup_alone_loses_exactly_what_was_committed_after_it() {
    let start = Instant::now();
    let pg = OwnPostgres::start().await.expect("postgres");
    let stack = ready_stack(&pg, "restore_base").await;
    let load = PlainLoad::start(&stack.sender, 4);
    let loss = backup_then_lose(&stack, &pg).await;

    pg.restore(&loss.backup, None).await.expect("restore");
    acked_more(&stack, 1_000).await;
    load.stop().await;
    drained_and_ready(&stack).await;

    let copies = stored(&stack.db().await.expect("db")).await;
    let in_backup = in_backup(&loss.backup, &stack.db).await;
    let (at_loss, acked) = (&loss.at_loss, stack.sender.books.acked());
    assert!(
        in_backup.is_subset(at_loss),
        "the backup holds events the server did not"
    );
    // Stored on the old server, not in the backup: acknowledged, deleted from the queue.
    let expected: BTreeSet<u64> = acked
        .iter()
        .copied()
        .filter(|s| at_loss.contains(s) && !in_backup.contains(s))
        .collect();
    let lost: BTreeSet<u64> = acked
        .iter()
        .copied()
        .filter(|s| !copies.contains_key(s))
        .collect();
    assert!(
        !expected.is_empty(),
        "nothing was committed after the backup"
    );
    assert_eq!(lost.len(), expected.len());
    assert_eq!(lost, expected);
    let later: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|s| !at_loss.contains(s))
        .collect();
    let once = later.iter().all(|s| copies.get(s) == Some(&1));
    assert!(
        once,
        "an event not stored at the loss is missing or doubled"
    );
    let books = audit(&stack.db().await.expect("db"), &acked)
        .await
        .expect("audit");
    assert_eq!(
        (books.lost, books.doubled),
        (lost.len() as u64, 0),
        "{books:?}"
    );
    println!(
        "base backup alone: {books:?}; lost exactly the {} events committed after the backup \
         ended (of {} on the server at its loss, {} in the backup); the {} acknowledged events \
         not yet stored at the loss were stored once after the restore; {:.1} s",
        lost.len(),
        at_loss.len(),
        in_backup.len(),
        later.len(),
        start.elapsed().as_secs_f64()
    );
    redis_cleanup(REDIS, &stack.prefix).await;
}
