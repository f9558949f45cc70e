//! Redis connections: reconnecting, multiplexed (concurrent callers share one pipelined
//! connection), with every wait bounded.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::secret::Secret;

/// Opens a reconnecting multiplexed connection. `response_timeout` bounds every command; blocking
/// commands (XREADGROUP BLOCK) need a connection of their own with a timeout above their BLOCK.
pub async fn connect(
    url: &Secret,
    response_timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url.expose())?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(response_timeout.max(Duration::from_millis(500))))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, config).await
}

/// The server's `maxmemory-policy`, or `None` when `CONFIG GET` is not allowed (managed Redis).
pub async fn eviction_policy(conn: &mut ConnectionManager) -> redis::RedisResult<Option<String>> {
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    match reply {
        Ok(v) => Ok(v.get(1).cloned()),
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            Ok(None)
        }
        Err(e) if e.to_string().contains("unknown command") || e.to_string().contains("NOPERM") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
