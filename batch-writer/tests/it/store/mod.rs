//! The store's exactly-once rules, deterministically: a redelivered entry (suspect) that was
//! committed whole, or in parts, is not written again; dedupe keys; the pending summary rows.

mod dedupe;
mod ledger;
mod summary;

fn entry_key(shard: u16, id: &str) -> Option<uuid::Uuid> {
    shared::queue::entry_ledger_key(0, shard, id)
}
