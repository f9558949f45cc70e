//! The dead-letter table: events PostgreSQL refused `MAX_DELIVERIES` times, and entries that
//! cannot be decoded, kept with their error until an operator lists and replays them.

use serde::Serialize;
use shared::db::{Db, DbError};
use shared::queue::{self, Keys, QueuedEvent};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// One dead letter as `dead-letter list` shows it.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub event_id: Option<Uuid>,
    pub app_id: Option<String>,
    pub error: String,
    pub stream: String,
    pub entry_id: String,
    pub deliveries: i32,
    pub dead_at: chrono::DateTime<chrono::Utc>,
    /// The event as JSON, when the payload decodes.
    pub event: Option<serde_json::Value>,
}

const INSERT_EVENT: &str = "INSERT INTO dead_letters \
    (event_id, app_id, payload, error, stream, entry_id, deliveries) \
    VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";

const LEDGER_PARTS: &str = "INSERT INTO entry_ledger (entry_key, whole) VALUES ($1, false) \
    ON CONFLICT (entry_key) DO NOTHING";

/// Stores one refused event, once: a second delivery of its entry (its writer died before the
/// acknowledgement) finds it there and adds nothing. In the same transaction the entry gets a
/// "parts" ledger row (if it has none): its other events may have been written, or none, and a
/// later delivery of the entry (a Redis restored from an older copy) must check each event
/// against its dedupe key rather than take the fast path, so that it and a replay of this dead
/// letter store the event once between them.
pub async fn store_event(
    db: &Db,
    event: &QueuedEvent,
    error: &str,
    stream: &str,
    entry: (&str, Uuid),
    deliveries: u32,
) -> Result<(), DbError> {
    let payload = payload(event)?;
    let (entry_id, entry_key) = entry;
    let (event_id, app_id) = (event.event_id, event.app_id.clone());
    let (error, stream, entry_id) = (error.to_owned(), stream.to_owned(), entry_id.to_owned());
    let deliveries = deliveries as i32;
    db.transaction("store dead letter", move |tx| {
        Box::pin(async move {
            let row: [&(dyn ToSql + Sync); 7] = [
                &event_id,
                &app_id,
                &payload,
                &error,
                &stream,
                &entry_id,
                &deliveries,
            ];
            tx.execute(INSERT_EVENT, &row)
                .await
                .map_err(DbError::query("store dead letter"))?;
            tx.execute(LEDGER_PARTS, &[&entry_key])
                .await
                .map_err(DbError::query("record dead-lettered entry"))?;
            Ok(())
        })
    })
    .await
}

/// One event as a dead letter's payload.
fn payload(event: &QueuedEvent) -> Result<Vec<u8>, DbError> {
    queue::encode(std::slice::from_ref(event)).map_err(|e| DbError::Other {
        op: "encode dead letter",
        message: e.to_string(),
    })
}

/// Stores an entry that cannot be decoded, as it was, once per stream entry.
pub async fn store_raw(
    db: &Db,
    payload: &[u8],
    error: &str,
    stream: &str,
    entry_id: &str,
    deliveries: u32,
) -> Result<(), DbError> {
    db.execute(
        "store dead letter",
        "INSERT INTO dead_letters (payload, error, stream, entry_id, deliveries) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        &[&payload, &error, &stream, &entry_id, &(deliveries as i32)],
    )
    .await?;
    Ok(())
}

pub async fn list(db: &Db) -> Result<Vec<DeadLetter>, DbError> {
    let rows = db
        .query(
            "list dead letters",
            "SELECT id, event_id, app_id, error, stream, entry_id, deliveries, dead_at, payload \
             FROM dead_letters ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let payload: Vec<u8> = r.get(8);
            DeadLetter {
                id: r.get(0),
                event_id: r.get(1),
                app_id: r.get(2),
                error: r.get(3),
                stream: r.get(4),
                entry_id: r.get(5),
                deliveries: r.get(6),
                dead_at: r.get(7),
                event: queue::decode(&payload)
                    .ok()
                    .and_then(|mut v| v.pop())
                    .and_then(|e| serde_json::to_value(e).ok()),
            }
        })
        .collect())
}

/// Puts dead letters back on the queue (all of them, or the given ids) and removes them from the
/// table; entries that never decoded stay. Returns how many events were re-queued.
///
/// Idempotent per dead letter: each row is taken under a row lock (a concurrent replay skips
/// it), pushed, and deleted in that transaction. A replay killed between the push and the commit
/// leaves the row to be replayed again; the replayed events carry a dedupe key (they are marked
/// as client-chosen ids), so the second copy is dropped by the writer as long as it comes within
/// `DEDUPE_WINDOW_HOURS` of the first.
pub async fn replay(
    db: &Db,
    redis: &mut shared::redis_conn::RedisConn,
    keys: &Keys,
    ids: Option<&[i64]>,
) -> anyhow::Result<usize> {
    let all: Vec<i64> = match ids {
        None => {
            db.query(
                "read dead letters",
                "SELECT id FROM dead_letters WHERE event_id IS NOT NULL ORDER BY id",
                &[],
            )
            .await?
        }
        Some(ids) => {
            db.query(
                "read dead letters",
                "SELECT id FROM dead_letters WHERE event_id IS NOT NULL AND id = ANY($1) ORDER BY id",
                &[&ids],
            )
            .await?
        }
    }
    .iter()
    .map(|r| r.get(0))
    .collect();
    let script = redis::Script::new(queue::PUSH_SCRIPT);
    let mut replayed = 0;
    for id in all {
        replayed += replay_one(db, redis, keys, &script, id).await?;
    }
    Ok(replayed)
}

/// The (app, user) digest of an event's user, if it names one.
fn user_of(e: &QueuedEvent) -> Option<[u8; 32]> {
    e.user_id
        .as_deref()
        .map(|u| shared::privacy::user_digest(&e.app_id, u))
}

/// The digests among `events`' users that an open erasure request names or the suppression
/// list holds: their events are never put back on the queue (docs/privacy.md).
async fn erased_users(
    tx: &tokio_postgres::Transaction<'_>,
    events: &[QueuedEvent],
) -> Result<Vec<Option<[u8; 32]>>, DbError> {
    let digests: Vec<Vec<u8>> = events
        .iter()
        .filter_map(user_of)
        .map(|d| d.to_vec())
        .collect();
    if digests.is_empty() {
        return Ok(Vec::new());
    }
    let rows = tx
        .query(
            "SELECT u.user_hash FROM erasure_users u JOIN erasures e USING (erasure_id) \
             WHERE e.status IN ('pending', 'running') AND u.user_hash = ANY($1) \
             UNION SELECT user_hash FROM suppressed_users WHERE user_hash = ANY($1)",
            &[&digests],
        )
        .await
        .map_err(DbError::query("check erased users"))?;
    Ok(rows
        .iter()
        .map(|r| <[u8; 32]>::try_from(r.get::<_, Vec<u8>>(0).as_slice()).ok())
        .collect())
}

/// Replays dead letter `id` if no other replay holds it; returns the events re-queued.
async fn replay_one(
    db: &Db,
    redis: &mut shared::redis_conn::RedisConn,
    keys: &Keys,
    script: &redis::Script,
    id: i64,
) -> anyhow::Result<usize> {
    let mut client = db.get("replay dead letter").await?;
    let tx = db.begin(&mut client, "begin replay").await?;
    // Ended here either way, never by its drop (see `Db::finish`).
    match replay_in(&tx, redis, keys, script, id).await {
        Ok(n) => {
            db.commit(tx, "commit replay").await?;
            Ok(n)
        }
        Err(e) => {
            Db::rollback(tx).await;
            Err(e)
        }
    }
}

/// [`replay_one`] inside its transaction.
async fn replay_in(
    tx: &tokio_postgres::Transaction<'_>,
    redis: &mut shared::redis_conn::RedisConn,
    keys: &Keys,
    script: &redis::Script,
    id: i64,
) -> anyhow::Result<usize> {
    let Some(payload) = lock(tx, id).await? else {
        return Ok(0);
    };
    let events = replayable(tx, payload).await?;
    if events.is_empty() {
        // Every event is of a user being erased or suppressed: the erasure removes the row.
        tracing::info!(
            id,
            "Dead letter withheld: its user is being erased or is suppressed."
        );
        return Ok(0);
    }
    push(redis, keys, script, id, &events).await?;
    tx.execute("DELETE FROM dead_letters WHERE id = $1", &[&id])
        .await
        .map_err(DbError::query("delete dead letter"))?;
    Ok(events.len())
}

/// Dead letter `id`'s payload, locked for this transaction; `None` when another replay holds it
/// or it is gone.
async fn lock(tx: &tokio_postgres::Transaction<'_>, id: i64) -> Result<Option<Vec<u8>>, DbError> {
    let row = tx
        .query_opt(
            "SELECT payload FROM dead_letters WHERE id = $1 FOR UPDATE SKIP LOCKED",
            &[&id],
        )
        .await
        .map_err(DbError::query("lock dead letter"))?;
    Ok(row.map(|r| r.get(0)))
}

/// The events of a dead letter's payload to put back on the queue: those of users under erasure
/// or suppressed are withheld, the others marked for dedupe.
async fn replayable(
    tx: &tokio_postgres::Transaction<'_>,
    payload: Vec<u8>,
) -> anyhow::Result<Vec<QueuedEvent>> {
    let mut events = queue::decode(&payload)?;
    let erased = erased_users(tx, &events).await?;
    events.retain(|e| !erased.contains(&user_of(e)));
    for e in &mut events {
        e.client_id = true;
    }
    Ok(events)
}

/// Pushes dead letter `id`'s `events` onto the queue as one entry.
async fn push(
    redis: &mut shared::redis_conn::RedisConn,
    keys: &Keys,
    script: &redis::Script,
    id: i64,
    events: &[QueuedEvent],
) -> anyhow::Result<()> {
    let payload = queue::encode(events)?;
    // The id decides the shard, so the replay is spread like the original traffic.
    let shard = (id as u64 % keys.shards() as u64) as u16;
    // The dead letter's id makes the push once-only (a cluster client may resend it).
    let token = format!("dead-letter-{id}");
    let token = redis.is_cluster().then_some(token.as_str());
    let _: Vec<String> =
        queue::push_invocation(script, keys, shard, token, [(events.len(), &payload[..])])
            .invoke_async(redis)
            .await?;
    Ok(())
}
