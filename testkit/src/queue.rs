//! What is queued in a pipeline's streams, as tests, benchmarks and the fault suite read it: the
//! events the depth counters hold and the entries the streams hold, each summed over the shards.

use redis::aio::ConnectionLike;
use shared::queue::Keys;

/// Events queued and not yet written, per the depth counters (`MGET` of every shard's counter;
/// a missing counter counts 0). On a Redis Cluster the client splits the `MGET` by slot.
pub async fn queued_events<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> redis::RedisResult<i64> {
    let depths: Vec<Option<i64>> = redis::cmd("MGET")
        .arg(keys.all_depths())
        .query_async(conn)
        .await?;
    Ok(depths.into_iter().flatten().sum())
}

/// Entries in the streams (`XLEN` of every shard), summed: entries not yet acknowledged and
/// deleted by a writer.
pub async fn stream_entries<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> redis::RedisResult<i64> {
    let mut entries = 0;
    for stream in keys.all_streams() {
        entries += redis::cmd("XLEN")
            .arg(&stream)
            .query_async::<i64>(conn)
            .await?;
    }
    Ok(entries)
}
