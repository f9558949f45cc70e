//! Acknowledging: `XACK`, `XDEL` and the queue depth counter in one script per shard, once a
//! batch's entries are committed or dead-lettered.

use std::collections::HashMap;
use std::time::Duration;

use shared::queue;
use shared::retry::Backoff;

use super::Ctx;
use crate::reader::Entry;

/// Acknowledges, deletes and uncounts entries, per shard, retrying until done or shutdown gives up
/// (an entry left unacknowledged is redelivered, and dedupe absorbs it).
pub(super) async fn ack(ctx: &Ctx, entries: &[&Entry]) {
    let mut by_shard: HashMap<u16, Vec<&Entry>> = HashMap::new();
    for e in entries {
        by_shard.entry(e.shard).or_default().push(e);
    }
    for (shard, list) in by_shard {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let mut inv = ctx.ack.key(ctx.keys.stream(shard));
            inv.key(ctx.keys.depth(shard)).arg(queue::GROUP);
            for e in &list {
                inv.arg(&e.id).arg(e.declared);
            }
            let mut conn = ctx.redis.clone();
            match inv.invoke_async::<i64>(&mut conn).await {
                Ok(_) => break,
                Err(e) if ctx.give_up() => {
                    tracing::warn!(error = %e, "Cannot acknowledge at shutdown; entries will be redelivered and deduplicated.");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Acknowledgement failed; retrying.");
                    ctx.backoff(&mut backoff).await;
                }
            }
        }
    }
}
