//! The queue between the gateway and the writers: Redis Streams, one per shard.
//!
//! Layout, per shard `N` of `STREAM_SHARDS`, with `P` the `STREAM_PREFIX`:
//! - `{P:N}:events`: the stream. Each entry holds up to [`EVENTS_PER_ENTRY`] events of one app
//!   as zstd-compressed MessagePack (`v` = format version, `n` = event count, `d` = payload), so
//!   one request costs one entry, not one entry per event. Events of one request repeat most of
//!   their bytes (field names, SDK context), so an entry takes a fifth to a tenth of its
//!   MessagePack size: Redis spends less CPU per event and holds that many more queued events
//!   in the same memory. A payload under 1 KiB (a single event) stays plain MessagePack; the
//!   reader tells the two apart by zstd's magic number, so entries of format 1 (plain
//!   MessagePack, before compression) are still read.
//! - `{P:N}:depth`: the number of events in the stream not yet written (incremented with the add,
//!   decremented with the acknowledgement, atomically, by the scripts below). The gateway's
//!   backpressure and the writer's `sluice_queue_lag_events` read it.
//!
//! The hash tag `{P:N}` puts a shard's keys in one Redis Cluster slot (the scripts touch both),
//! while different shards land on different slots and so can live on different nodes.
//! Streams are never trimmed with MAXLEN (that drops unconsumed events); the writer deletes an
//! entry (XDEL) in the same script that acknowledges it, so memory follows the backlog.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Events per stream entry, at most.
pub const EVENTS_PER_ENTRY: usize = 100;

/// Payload format version, the `v` field of an entry: 2 is zstd-compressed MessagePack.
pub const FORMAT_VERSION: &str = "2";

/// Every format version a reader decodes: 1 (plain MessagePack) from before compression, 2.
pub const READABLE_VERSIONS: &[&str] = &["1", "2"];

/// zstd level of entry payloads: level 1 compresses at about a gigabyte a second per core, and
/// a Segment batch of 100 to about a ninth of its size.
const ZSTD_LEVEL: i32 = 1;

/// A payload never decompresses to more than this (far past any entry the gateway writes:
/// 100 events of at most a few hundred KiB each).
const MAX_DECOMPRESSED_BYTES: u64 = 256 * 1024 * 1024;

/// A zstd frame starts with these bytes; a MessagePack array never does.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("cannot encode events as MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("not MessagePack events: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("zstd: {0}")]
    Zstd(#[from] std::io::Error),
    #[error("the payload does not say its decompressed size, or says more than {MAX_DECOMPRESSED_BYTES} bytes")]
    Size,
}

/// The consumer group every writer joins.
pub const GROUP: &str = "sluice-writers";

/// One validated event as queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedEvent {
    pub event_id: Uuid,
    pub app_id: String,
    pub event_name: String,
    /// Event time, microseconds since the Unix epoch (UTC).
    pub occurred_at_us: i64,
    /// When the gateway received it, microseconds since the Unix epoch (UTC).
    pub received_at_us: i64,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    /// Compact JSON text of an object; `None` for no metadata.
    pub metadata: Option<String>,
    /// The client chose `event_id` (and so may retry with it): the writer keeps a dedupe key for
    /// it. Ids the gateway assigned are new by construction.
    #[serde(default)]
    pub client_id: bool,
}

/// Key names of one pipeline (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    shards: u16,
}

impl Keys {
    pub fn new(prefix: &str, shards: u16) -> Self {
        Self {
            prefix: prefix.to_owned(),
            shards: shards.max(1),
        }
    }

    pub fn shards(&self) -> u16 {
        self.shards
    }

    pub fn stream(&self, shard: u16) -> String {
        format!("{{{}:{shard}}}:events", self.prefix)
    }

    pub fn depth(&self, shard: u16) -> String {
        format!("{{{}:{shard}}}:depth", self.prefix)
    }

    /// The once-only token of one push to `shard` (same slot as the stream).
    pub fn push_token(&self, shard: u16, token: &str) -> String {
        format!("{{{}:{shard}}}:push:{token}", self.prefix)
    }

    /// The rate-limit counter of `app` for the second `epoch_sec`.
    pub fn rate(&self, app: &str, epoch_sec: i64) -> String {
        format!("{}:rate:{app}:{epoch_sec}", self.prefix)
    }

    pub fn all_streams(&self) -> Vec<String> {
        (0..self.shards).map(|s| self.stream(s)).collect()
    }

    pub fn all_depths(&self) -> Vec<String> {
        (0..self.shards).map(|s| self.depth(s)).collect()
    }
}

/// The ledger key of a stream entry `ms-seq` of `shard` in pipeline `pipeline` (its number in
/// `stream_pipelines`): pipeline (2 bytes), milliseconds (6), sequence (6), shard (2), so one
/// pipeline's keys form one range, ordered by entry time. Pipeline 0's keys are those written
/// before pipelines had numbers. `None` when a part does not fit (a millisecond count past the
/// year 10889, a sequence past 2^48): such an entry is treated as possibly seen before.
pub fn ledger_key(pipeline: u16, shard: u16, ms: u64, seq: u64) -> Option<Uuid> {
    const LIMIT: u64 = 1 << 48;
    if ms >= LIMIT || seq >= LIMIT {
        return None;
    }
    let mut key = [0u8; 16];
    key[..2].copy_from_slice(&pipeline.to_be_bytes());
    key[2..8].copy_from_slice(&ms.to_be_bytes()[2..]);
    key[8..14].copy_from_slice(&seq.to_be_bytes()[2..]);
    key[14..].copy_from_slice(&shard.to_be_bytes());
    Some(Uuid::from_bytes(key))
}

/// [`ledger_key`] of a stream entry id `ms-seq`; `None` for an id not of that form.
pub fn entry_ledger_key(pipeline: u16, shard: u16, id: &str) -> Option<Uuid> {
    let (ms, seq) = id.split_once('-')?;
    ledger_key(pipeline, shard, ms.parse().ok()?, seq.parse().ok()?)
}

/// The milliseconds part of a stream entry id.
pub fn entry_millis(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// Payloads shorter than this stay plain MessagePack: a single event gains little from
/// compression and would pay for it.
const COMPRESS_FROM_BYTES: usize = 1024;

thread_local! {
    /// One zstd context per thread, reused: making one costs more than compressing a request.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Encodes a group of events as one entry payload (format [`FORMAT_VERSION`]): zstd-compressed
/// MessagePack, or plain MessagePack when it is short.
pub fn encode(events: &[QueuedEvent]) -> Result<Vec<u8>, PayloadError> {
    let plain = rmp_serde::to_vec(events)?;
    if plain.len() < COMPRESS_FROM_BYTES {
        return Ok(plain);
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let c = match &mut *c {
            Some(c) => c,
            slot => slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
        };
        Ok(c.compress(&plain)?)
    })
}

/// Decodes an entry payload of either format (a zstd frame, else plain MessagePack).
pub fn decode(bytes: &[u8]) -> Result<Vec<QueuedEvent>, PayloadError> {
    if !bytes.starts_with(&ZSTD_MAGIC) {
        return Ok(rmp_serde::from_slice(bytes)?);
    }
    let size = zstd::zstd_safe::get_frame_content_size(bytes)
        .ok()
        .flatten()
        .filter(|&n| n <= MAX_DECOMPRESSED_BYTES)
        .ok_or(PayloadError::Size)?;
    let plain = DECOMPRESSOR.with(|d| -> Result<Vec<u8>, PayloadError> {
        let mut d = d.borrow_mut();
        let d = match &mut *d {
            Some(d) => d,
            slot => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        Ok(d.decompress(bytes, size as usize)?)
    })?;
    Ok(rmp_serde::from_slice(&plain)?)
}

/// Adds entries to one shard and counts their events, atomically (all or none).
/// KEYS: stream, depth, and optionally a push token (see [`Keys::push_token`]).
/// ARGV: version, token lifetime in ms, then pairs of (event count, payload).
/// Returns the entry ids, or nothing when the token was already used: a Redis Cluster client
/// resends a command whose connection dropped, and the first send may have run.
pub const PUSH_SCRIPT: &str = r"
if KEYS[3] and not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[2]) then
  return {}
end
local ids = {}
local total = 0
for i = 3, #ARGV, 2 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'v', ARGV[1], 'n', ARGV[i], 'd', ARGV[i + 1])
  total = total + tonumber(ARGV[i])
end
redis.call('INCRBY', KEYS[2], total)
return ids
";

/// How long a push token lives: far longer than a cluster client's resends take.
pub const PUSH_TOKEN_TTL_MS: u64 = 60_000;

/// The invocation of [`PUSH_SCRIPT`] (loaded in `script`) adding `entries` (event count,
/// payload) to `shard`, made once-only by `token` when given (needed on a Redis Cluster).
pub fn push_invocation<'s, 'p>(
    script: &'s redis::Script,
    keys: &Keys,
    shard: u16,
    token: Option<&str>,
    entries: impl IntoIterator<Item = (usize, &'p [u8])>,
) -> redis::ScriptInvocation<'s> {
    let mut inv = script.key(keys.stream(shard));
    inv.key(keys.depth(shard));
    if let Some(t) = token {
        inv.key(keys.push_token(shard, t));
    }
    inv.arg(FORMAT_VERSION).arg(PUSH_TOKEN_TTL_MS);
    for (n, payload) in entries {
        inv.arg(n).arg(payload);
    }
    inv
}

/// Acknowledges and deletes entries of one shard, and takes their events off the depth count,
/// atomically. Only entries still pending for the group count, so a repeated acknowledgement
/// (after a claim) never counts twice.
/// KEYS: stream, depth. ARGV: group, then pairs of (entry id, event count).
/// Returns the number of entries acknowledged.
pub const ACK_SCRIPT: &str = r"
local acked = 0
local events = 0
for i = 2, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    acked = acked + 1
    events = events + tonumber(ARGV[i + 1])
  end
  redis.call('XDEL', KEYS[1], ARGV[i])
end
if events > 0 then
  local left = redis.call('DECRBY', KEYS[2], events)
  if left < 0 then redis.call('SET', KEYS[2], 0) end
end
return acked
";

/// Deletes the group's consumers that hold no pending entry and have been idle longer than a
/// threshold: writers that died or were scaled away (each run of a writer may use a new consumer
/// name). Atomic, so a consumer cannot be given an entry between the check and the deletion.
/// KEYS: stream. ARGV: group, idle threshold in ms, a consumer never to delete (the caller).
/// Returns the number deleted.
pub const REAP_SCRIPT: &str = r"
local deleted = 0
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[3] and tonumber(f['pending']) == 0 and tonumber(f['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    deleted = deleted + 1
  end
end
return deleted
";

/// Counts `n` events against a per-second limit; refuses (returns -1) instead of counting when the
/// count would pass `limit`. KEYS: counter. ARGV: n, limit. Returns the new count or -1.
pub const RATE_SCRIPT: &str = r"
local n = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current + n > limit then return -1 end
local v = redis.call('INCRBY', KEYS[1], n)
if v == n then redis.call('EXPIRE', KEYS[1], 2) end
return v
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag_per_shard() {
        let k = Keys::new("sluice", 4);
        assert_eq!(k.stream(3), "{sluice:3}:events");
        assert_eq!(k.depth(3), "{sluice:3}:depth");
        assert_eq!(k.all_streams().len(), 4);
        assert_eq!(Keys::new("x", 0).shards(), 1);
    }

    #[test]
    fn payloads_round_trip() {
        let e = QueuedEvent {
            event_id: Uuid::now_v7(),
            app_id: "app".into(),
            event_name: "signup".into(),
            occurred_at_us: 1_700_000_000_000_000,
            received_at_us: 1_700_000_000_000_001,
            user_id: Some("u".into()),
            session_id: None,
            metadata: Some(r#"{"a":1}"#.into()),
            client_id: true,
        };
        let one = encode(std::slice::from_ref(&e)).expect("encode");
        assert!(!one.starts_with(&ZSTD_MAGIC), "a short payload stays plain");
        assert_eq!(decode(&one).expect("decode"), vec![e.clone()]);
        let many = vec![e.clone(); 20];
        let bytes = encode(&many).expect("encode");
        assert!(bytes.starts_with(&ZSTD_MAGIC), "a long one is compressed");
        assert_eq!(decode(&bytes).expect("decode"), many);
        let bytes = encode(&[e.clone(), e.clone()]).expect("encode");
        assert_eq!(decode(&bytes).expect("decode"), vec![e.clone(), e.clone()]);
        assert!(decode(b"\x01garbage").is_err());
        // Format 1 (plain MessagePack), still in a stream after an upgrade, reads as before.
        let plain = rmp_serde::to_vec(std::slice::from_ref(&e)).expect("msgpack");
        assert_eq!(decode(&plain).expect("decode"), vec![e.clone()]);
        // A broken frame is an error, never a panic.
        let mut broken = bytes.clone();
        broken.truncate(bytes.len() / 2);
        assert!(decode(&broken).is_err());
        assert!(decode(&ZSTD_MAGIC).is_err());
        // A frame that does not say its size (streamed) is refused before anything is allocated.
        let streamed = zstd::stream::encode_all(&plain[..], 1).expect("zstd");
        assert!(matches!(decode(&streamed), Err(PayloadError::Size)));
    }

    #[test]
    fn repetitive_batches_compress_several_times() {
        let events: Vec<QueuedEvent> = (0..100)
            .map(|i| QueuedEvent {
                event_id: Uuid::now_v7(),
                app_id: "0b9a4c52-7f64-4f0e-9d8e-3a1c2b5d6e7f".into(),
                event_name: "Order Completed".into(),
                occurred_at_us: 1_700_000_000_000_000 + i,
                received_at_us: 1_700_000_000_000_000,
                user_id: Some(format!("user_{i}")),
                session_id: Some(format!("sess_{i}")),
                metadata: Some(format!(
                    r#"{{"context":{{"library":{{"name":"@segment/analytics-node","version":"3.1.0"}}}},"properties":{{"plan":"pro","n":{i}}},"type":"track"}}"#
                )),
                client_id: true,
            })
            .collect();
        let plain = rmp_serde::to_vec(&events).expect("msgpack").len();
        let packed = encode(&events).expect("encode").len();
        assert!(packed * 4 < plain, "{packed} of {plain} bytes");
    }

    #[test]
    fn ledger_keys_are_ordered_per_pipeline_and_distinct_across_pipelines_and_shards() {
        let a = entry_ledger_key(0, 0, "1700000000000-0").expect("key");
        let b = entry_ledger_key(0, 0, "1700000000000-1").expect("key");
        let c = entry_ledger_key(0, 0, "1700000000001-0").expect("key");
        assert!(a < b && b < c);
        assert_ne!(a, entry_ledger_key(0, 1, "1700000000000-0").expect("key"));
        let other = entry_ledger_key(1, 0, "1700000000000-0").expect("key");
        assert_ne!(a, other);
        assert!(other > entry_ledger_key(0, 9, "99999999999999-9").expect("key"));
        assert_eq!(entry_ledger_key(0, 0, "nope"), None);
        assert_eq!(entry_ledger_key(0, 0, "1-x"), None);
        assert_eq!(ledger_key(0, 0, 1 << 48, 0), None);
        assert_eq!(ledger_key(0, 0, 0, 1 << 48), None);
        assert_eq!(entry_millis("1700000000000-3"), Some(1_700_000_000_000));
    }

    #[test]
    fn pipeline_zero_keeps_the_keys_written_before_pipelines_had_numbers() {
        // The former layout: milliseconds as 8 bytes, sequence 6, shard 2.
        let (ms, seq, shard) = (1_700_000_000_123u64, 7u64, 3u16);
        let mut old = [0u8; 16];
        old[..8].copy_from_slice(&ms.to_be_bytes());
        old[8..14].copy_from_slice(&seq.to_be_bytes()[2..]);
        old[14..].copy_from_slice(&shard.to_be_bytes());
        assert_eq!(ledger_key(0, shard, ms, seq), Some(Uuid::from_bytes(old)));
    }
}
