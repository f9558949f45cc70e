//! Walking the cache's keys with SCAN (never KEYS), on the node that holds them: invalidation by
//! prefix, and the count of cached answers.

use shared::redis_conn::RedisConn;

use super::Cache;

impl Cache {
    /// Deletes every cache key under `prefix` (which must lie inside [`Cache::prefix`]), with
    /// SCAN and UNLINK in batches; the number deleted.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Option<u64> {
        let mut conn = self.conn.get()?.clone();
        let pattern = format!("{}*", escape_glob(prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys) = tokio::time::timeout(
                self.timeout * 5,
                self.scan_page(&mut conn, cursor, &pattern),
            )
            .await
            .ok()??;
            deleted += unlink(&mut conn, &keys).await?;
            cursor = next;
            if cursor == 0 {
                return Some(deleted);
            }
        }
    }

    /// One SCAN page of the keys matching `pattern`, on the node holding the cache's keys: the
    /// next cursor and the keys.
    async fn scan_page(
        &self,
        conn: &mut RedisConn,
        cursor: u64,
        pattern: &str,
    ) -> Option<(u64, Vec<String>)> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        conn.query_at_key(&scan, &self.prefix).await.ok()
    }

    /// How many answers are cached (keys under `{prefix}:v1:`).
    pub(super) async fn count_answers(&self, conn: &mut RedisConn) -> Option<u64> {
        let pattern = format!("{}:v1:*", escape_glob(&self.prefix));
        let (mut keys, mut cursor) = (0, 0);
        loop {
            let (next, batch) = self.scan_page(conn, cursor, &pattern).await?;
            keys += batch.len() as u64;
            cursor = next;
            if cursor == 0 {
                return Some(keys);
            }
        }
    }
}

/// Deletes `keys` (no call when there are none); the number deleted.
async fn unlink(conn: &mut RedisConn, keys: &[String]) -> Option<u64> {
    if keys.is_empty() {
        return Some(0);
    }
    redis::cmd("UNLINK").arg(keys).query_async(conn).await.ok()
}

/// Escapes Redis glob characters so a prefix matches itself only.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(escape_glob("sluice:cache:app_1"), "sluice:cache:app_1");
    }
}
