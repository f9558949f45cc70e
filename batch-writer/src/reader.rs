//! Reading one stream shard through the consumer group: new entries (`XREADGROUP ... >`), and
//! entries idle too long in any consumer's pending list (`XAUTOCLAIM`), with their delivery
//! counts. Replies are parsed from the raw `Value` (cheaper than redis-rs' typed stream replies).
//!
//! Blocking reads use a connection of their own whose response timeout is above the BLOCK time:
//! a client-side timeout shorter than BLOCK strands delivered entries as pending.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;
use shared::queue::{self, QueuedEvent, GROUP};
use shared::redis_conn::RedisConn;
use shared::secret::Secret;

/// One stream entry handed to the batcher.
#[derive(Debug)]
pub struct Entry {
    pub shard: u16,
    pub id: String,
    /// How many times the group has delivered it, this time included.
    pub deliveries: u32,
    /// The event count the gateway wrote beside the payload (`n`).
    pub declared: usize,
    /// The events, or the raw payload and why it could not be decoded.
    pub content: Result<Vec<QueuedEvent>, (Vec<u8>, String)>,
}

impl Entry {
    /// Events it stands for in the depth count.
    pub fn event_count(&self) -> usize {
        match &self.content {
            Ok(events) => events.len(),
            Err(_) => self.declared,
        }
    }
}

/// The blocking-read connection of one shard.
pub struct Reader {
    pub shard: u16,
    pub stream: String,
    pub consumer: String,
    conn: RedisConn,
    block: Duration,
}

impl Reader {
    pub async fn connect(
        url: &Secret,
        shard: u16,
        stream: String,
        consumer: String,
        block: Duration,
    ) -> redis::RedisResult<Self> {
        let mut conn =
            shared::redis_conn::connect_dedicated(url, block + Duration::from_secs(5)).await?;
        ensure_group(&mut conn, &stream).await?;
        Ok(Self {
            shard,
            stream,
            consumer,
            conn,
            block,
        })
    }

    /// Up to `count` new entries, waiting at most the BLOCK time for the first.
    pub async fn read_new(&mut self, count: usize) -> redis::RedisResult<Vec<Entry>> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut self.conn)
            .await?;
        let mut entries = Vec::new();
        if let Value::Array(streams) = reply {
            for s in streams {
                if let Value::Array(mut parts) = s {
                    if parts.len() == 2 {
                        parse_entries(parts.swap_remove(1), self.shard, &mut entries);
                    }
                }
            }
        }
        for e in &mut entries {
            e.deliveries = 1;
        }
        Ok(entries)
    }

    /// Claims up to `count` entries idle for at least `min_idle` in any consumer's pending list,
    /// with their delivery counts. Entries deleted while pending are reported as lost.
    pub async fn claim(
        &mut self,
        min_idle: Duration,
        count: usize,
    ) -> redis::RedisResult<Vec<Entry>> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn)
            .await?;
        let mut entries = self.claimed(reply);
        if entries.is_empty() {
            return Ok(entries);
        }
        let counts = self.delivery_counts(&entries).await?;
        for e in &mut entries {
            // A claimed entry was delivered before, whatever XPENDING says (or does not say):
            // it must be treated as a redelivery, or a copy written by its first reader would be
            // written again.
            e.deliveries = counts.get(&e.id).copied().unwrap_or(2).max(2);
        }
        Ok(entries)
    }

    /// The entries of an `XAUTOCLAIM` reply; entries deleted while pending are logged as lost.
    fn claimed(&self, reply: Value) -> Vec<Entry> {
        let mut entries = Vec::new();
        let Value::Array(mut parts) = reply else {
            return entries;
        };
        if parts.len() >= 3 {
            if let Value::Array(deleted) = parts.swap_remove(2) {
                if !deleted.is_empty() {
                    tracing::error!(
                        count = deleted.len(),
                        stream = %self.stream,
                        "Entries were deleted from the stream while pending: their events are lost."
                    );
                }
            }
        }
        if parts.len() >= 2 {
            parse_entries(parts.swap_remove(1), self.shard, &mut entries);
        }
        entries
    }

    async fn delivery_counts(
        &mut self,
        entries: &[Entry],
    ) -> redis::RedisResult<HashMap<String, u32>> {
        let first = &entries[0].id;
        let last = &entries[entries.len() - 1].id;
        let reply: Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(first)
            .arg(last)
            // This consumer's own in-flight entries lie in the same id range: ask for enough
            // rows to reach every claimed one.
            .arg(10_000)
            .arg(&self.consumer)
            .query_async(&mut self.conn)
            .await?;
        let mut out = HashMap::new();
        if let Value::Array(rows) = reply {
            for row in rows {
                if let Value::Array(f) = row {
                    if let (Some(id), Some(Value::Int(n))) = (f.first().and_then(text), f.get(3)) {
                        out.insert(id, *n as u32);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Creates the consumer group (reading from the start of the stream, so events queued before the
/// first writer are not skipped), and the stream with it.
pub async fn ensure_group(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
) -> redis::RedisResult<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
        other => other,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Parses `[[id, [field, value, ...]], ...]`.
fn parse_entries(v: Value, shard: u16, out: &mut Vec<Entry>) {
    let Value::Array(items) = v else { return };
    out.extend(
        items
            .into_iter()
            .filter_map(|item| parse_entry(item, shard)),
    );
}

/// One `[id, [field, value, ...]]`; `None` when it is not of that shape.
fn parse_entry(item: Value, shard: u16) -> Option<Entry> {
    let Value::Array(mut pair) = item else {
        return None;
    };
    if pair.len() != 2 {
        return None;
    }
    let fields = match pair.pop() {
        Some(Value::Array(f)) => Fields::of(f),
        _ => Fields::default(),
    };
    let id = pair.first().and_then(text)?;
    Some(Entry {
        shard,
        id,
        deliveries: 1,
        declared: fields.declared,
        content: content(fields.version, fields.payload),
    })
}

/// An entry's fields: `v` (the format version), `n` (the events declared), `d` (the payload).
#[derive(Default)]
struct Fields {
    version: Option<String>,
    declared: usize,
    payload: Option<Vec<u8>>,
}

impl Fields {
    fn of(f: Vec<Value>) -> Self {
        let mut out = Self::default();
        let mut it = f.into_iter();
        while let (Some(k), Some(val)) = (it.next(), it.next()) {
            match (text(&k).as_deref(), val) {
                (Some("v"), v) => out.version = text(&v),
                (Some("n"), v) => out.declared = text(&v).and_then(|s| s.parse().ok()).unwrap_or(0),
                (Some("d"), Value::BulkString(b)) => out.payload = Some(b),
                _ => {}
            }
        }
        out
    }
}

/// The events of a payload in a readable format, or the payload and why it cannot be read.
fn content(
    version: Option<String>,
    payload: Option<Vec<u8>>,
) -> Result<Vec<QueuedEvent>, (Vec<u8>, String)> {
    match (version.as_deref(), payload) {
        (Some(v), Some(p)) if queue::READABLE_VERSIONS.contains(&v) => match queue::decode(&p) {
            Ok(events) => Ok(events),
            Err(e) => Err((p, format!("undecodable payload: {e}"))),
        },
        (v, p) => Err((
            p.unwrap_or_default(),
            format!("unknown entry format (version {v:?})"),
        )),
    }
}
