//! The ingest gateway: accepts events over HTTP and queues them on Redis Streams; serves the
//! read API; manages apps and keys.
//!
//! - [`config`]: environment to [`GatewayConfig`].
//! - [`server`]: the accept loop, connection limits and graceful shutdown.
//! - [`routes`]: which handler answers which request, CORS, and the state they share.
//! - [`ingest`]: `POST /v1/events`.
//! - [`sdk`]: the Segment/RudderStack, PostHog and Jitsu SDKs' formats on the same port.
//! - [`body`]: reading bodies within size and time limits, gzip, deflate, zstd.
//! - [`validate`]: decoding and validating events (pure).
//! - [`auth`]: API keys from an in-memory cache of digests.
//! - [`queue`]: pushing onto the stream shards, backpressure, rate limits.
//! - [`stats`]: the read API (daily stats, top events).
//! - [`cache`]: the read API's Redis cache.
//! - [`error`]: every client error with its status and code.
//! - [`reply`]: JSON responses.
//! - [`page`]: `GET /`, the page that shows an app's events (static, served from the binary).
//! - [`privacy`]: erasure requests and the suppression list.
//! - [`apps`]: apps and API keys (`apps create`, `keys revoke`).
//! - [`commands`]: the one-shot commands of the binary.

pub mod apps;
pub mod auth;
pub mod body;
pub mod cache;
pub mod commands;
pub mod config;
pub mod error;
pub mod ingest;
pub mod page;
pub mod privacy;
pub mod queue;
pub mod reply;
pub mod routes;
pub mod sdk;
pub mod server;
pub mod stats;
pub mod validate;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use shared::daemon::{self, Ops, Startup};
use shared::db::Pools;
use shared::metrics::Daemon;
use shared::queue::Keys;
use shared::tasks::Tasks;

pub use config::GatewayConfig;

use routes::AppState;

/// Runs the gateway until `shutdown` is cancelled. Refuses to start when the queue's Redis is
/// reachable but evicts keys; starts (not ready, answering 503) when Redis is unreachable.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let startup = Startup::default();
    let background = CancellationToken::new();
    let tasks = Tasks::new(background.clone());
    let ops = Ops::start(
        Daemon::Gateway,
        ops_listener,
        startup.ready_check(),
        shutdown.clone(),
        &tasks,
    );
    let Some(state) = start(config, &startup, &shutdown, &tasks, &background).await? else {
        ops.stop().await;
        return Ok(());
    };
    startup.started(routes::ready_check(state.clone()));
    daemon::spawn_upkeep(&state.pools.write, &tasks);
    daemon::spawn_upkeep(&state.pools.read, &tasks);
    tracing::info!(addr = %listener.local_addr()?, "Gateway listening.");
    server::serve(listener, state, shutdown).await;
    background.cancel();
    tracing::info!("Gateway stopped.");
    ops.stop().await;
    Ok(())
}

/// Everything before the first request: the pools, the keys and suppression lists, the queue,
/// and the background tasks. `None` when shutdown came first.
async fn start(
    config: GatewayConfig,
    startup: &Startup,
    shutdown: &CancellationToken,
    tasks: &Tasks,
    background: &CancellationToken,
) -> anyhow::Result<Option<Arc<AppState>>> {
    // The pool on the primary ("write") is opened on first use: key lookups and reloads.
    let pools = Pools::new(&config.db)?;
    daemon::check_direct(&config.db).await?;
    let cache = cache::Cache::new(
        config.redis.cache_url.clone(),
        &config.stream_prefix,
        config.cache_timeout,
    );
    let privacy = Arc::new(privacy::Privacy::new(Some(cache.clone())));
    let Some(keys) = load_keys(&pools, &privacy, startup, shutdown).await? else {
        return Ok(None);
    };
    let queue = connect_queue(&config).await?;
    let state = Arc::new(AppState {
        config,
        pools,
        keys,
        queue,
        cache,
        privacy,
        shutdown: shutdown.clone(),
    });
    spawn_background(&state, tasks, background);
    Ok(Some(state))
}

/// The keys and the suppression lists, read before the first request is served (waiting, not
/// ready, while PostgreSQL refuses); `None` when shutdown came first. Notifications (on the
/// key-change session) and the periodic re-reads keep them.
async fn load_keys(
    pools: &Pools,
    privacy: &privacy::Privacy,
    startup: &Startup,
    shutdown: &CancellationToken,
) -> Result<Option<auth::KeyCache>, daemon::StartError> {
    let load = || async {
        let keys = auth::KeyCache::load(&pools.read).await?;
        privacy.refresh(&pools.write).await?;
        Ok(keys)
    };
    daemon::connect_then(&pools.read, startup, shutdown, load).await
}

/// The queue, connected once if Redis answers (an evicting Redis is an error).
async fn connect_queue(config: &GatewayConfig) -> anyhow::Result<Arc<queue::Queue>> {
    let queue = queue::Queue::new(
        Keys::new(&config.stream_prefix, config.stream_shards),
        config.redis.url.clone(),
        config.redis_timeout,
        config.queue_high_water,
    );
    if !queue.connect().await? {
        tracing::warn!("The queue's Redis is unreachable; answering 503 until it is back.");
    }
    Ok(queue)
}

/// The background tasks that keep the state current: queue depth, key reloads and notifications
/// (on the key-change session), suppression lists, cache connection and gauges.
fn spawn_background(state: &Arc<AppState>, tasks: &Tasks, background: &CancellationToken) {
    let (config, primary) = (&state.config, &state.pools.write);
    state.queue.spawn_watch(tasks);
    // On the primary, like every key read: a replica may still show a key just revoked.
    state
        .keys
        .spawn_refresh(primary.clone(), config.key_refresh, tasks);
    state.cache.spawn_connect(background.clone());
    state.cache.spawn_gauges(config.cache_stats_interval, tasks);
    state
        .privacy
        .spawn_poll(config.privacy_poll, primary.clone(), tasks);
    state.keys.spawn_listen(
        config.db.clone(),
        primary.clone(),
        state.privacy.clone(),
        tasks,
    );
}
