//! Redis connections: reconnecting, multiplexed (concurrent callers share one pipelined
//! connection), with every wait bounded; to one Redis server or to a Redis Cluster.
//!
//! A Redis URL setting (`REDIS_URL`, `CACHE_REDIS_URL`) holding one URL means one server; a
//! comma-separated list of URLs means a Redis Cluster with those seed nodes
//! (`redis://n1:6379,redis://n2:6379,redis://n3:6379`). Every key the daemons use carries a hash
//! tag, so the commands and scripts that touch several keys touch one slot.
//!
//! In cluster mode the client resends a command whose connection dropped. A resent write may have
//! run already, so the gateway's push script carries a token that makes it run at most once (see
//! [`crate::queue::PUSH_SCRIPT`]); every other write the daemons make is idempotent.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::secret::Secret;

/// The seed URLs of a setting: one for a single server, several for a cluster.
pub fn urls(setting: &str) -> Vec<&str> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether a Redis URL setting names a cluster (a list of seed URLs).
pub fn is_cluster(setting: &str) -> bool {
    urls(setting).len() > 1
}

/// A connection to one Redis server or to a Redis Cluster; cheap to clone (clones share the
/// connection).
#[derive(Clone)]
pub enum RedisConn {
    /// One server, reconnecting by itself after a failure.
    Managed(ConnectionManager),
    /// One server, a plain multiplexed connection (for blocking reads: the owner reconnects).
    Plain(MultiplexedConnection),
    /// A Redis Cluster: each command goes to the node owning its key's slot.
    Cluster(ClusterConnection),
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs a keyless command on the node that owns `key`'s slot (computed here, no round trip;
    /// on a single server, just runs it). For SCAN, INFO and the like on a cluster whose
    /// interesting keys share one hash tag.
    pub async fn query_at_key<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        key: &str,
    ) -> RedisResult<T> {
        match self {
            Self::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_redis_value(v).map_err(Into::into)
            }
            other => cmd.query_async(other).await,
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(c) => c.get_db(),
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

fn cluster_client(setting: &str, response_timeout: Duration) -> RedisResult<ClusterClient> {
    ClusterClient::builder(urls(setting))
        .response_timeout(response_timeout)
        .connection_timeout(response_timeout.max(Duration::from_millis(500)))
        // Resends are few and quick: a caller's own timeout should see the final answer.
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(1000)
        .build()
}

/// Opens a reconnecting multiplexed connection. `response_timeout` bounds every command; blocking
/// commands (XREADGROUP BLOCK) need a connection of their own ([`connect_dedicated`]).
pub async fn connect(url: &Secret, response_timeout: Duration) -> RedisResult<RedisConn> {
    let setting = url.expose();
    if is_cluster(setting) {
        let client = cluster_client(setting, response_timeout)?;
        return Ok(RedisConn::Cluster(client.get_async_connection().await?));
    }
    let client = redis::Client::open(setting)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(response_timeout.max(Duration::from_millis(500))))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    Ok(RedisConn::Managed(
        ConnectionManager::new_with_config(client, config).await?,
    ))
}

/// Opens a connection for one caller's blocking commands, with a response timeout above their
/// BLOCK time (a client-side timeout shorter than BLOCK strands delivered entries as pending).
/// It does not reconnect by itself: the owner opens a new one after an error.
pub async fn connect_dedicated(url: &Secret, response_timeout: Duration) -> RedisResult<RedisConn> {
    let setting = url.expose();
    if is_cluster(setting) {
        let client = cluster_client(setting, response_timeout)?;
        return Ok(RedisConn::Cluster(client.get_async_connection().await?));
    }
    let client = redis::Client::open(setting)?;
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    Ok(RedisConn::Plain(
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await?,
    ))
}

/// The server's `maxmemory-policy`, or `None` when `CONFIG GET` is not allowed (managed Redis).
/// On a cluster, the policy of one node (they are configured alike).
pub async fn eviction_policy(conn: &mut RedisConn) -> RedisResult<Option<String>> {
    let reply: RedisResult<Vec<String>> = redis::cmd("CONFIG")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_urls_is_a_cluster() {
        assert!(!is_cluster("redis://localhost:6379/"));
        assert!(is_cluster("redis://a:7000, redis://b:7001,redis://c:7002"));
        assert_eq!(urls("redis://a:1,,redis://b:2 ").len(), 2);
    }
}
