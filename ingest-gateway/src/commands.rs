//! The one-shot commands (`apps`, `keys`, `users erase`, `erasures list`, `cache`): their command
//! line and what each does and prints. JSON goes to stdout, one object a line; notes to stderr.

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;
use shared::db::{Db, Pools};

use crate::cache::Cache;
use crate::{apps, privacy, GatewayConfig};

#[derive(Subcommand)]
pub enum Command {
    /// Manage apps.
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Erase users' events (and optionally suppress their future ones).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Follow erasure requests.
    Erasures {
        #[command(subcommand)]
        command: ErasuresCommand,
    },
    /// Inspect or clear the read API's cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Print today's hits, misses, hit ratio, cached answers and the cache Redis's memory (JSON).
    Stats,
    /// Delete cached answers: every app's, or one app's.
    Invalidate {
        #[arg(long)]
        app: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Request the erasure of these users' events in the app (1 to 1,000 ids); prints the
    /// request as JSON. The maintenance worker carries it out; follow it with `erasures list`.
    Erase {
        #[arg(long)]
        app: String,
        /// Also drop the app's later events of these users at the gateway.
        #[arg(long)]
        suppress: bool,
        #[arg(required = true)]
        user_ids: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum ErasuresCommand {
    /// An app's erasure requests, one JSON object a line, oldest first.
    List {
        #[arg(long)]
        app: String,
    },
}

#[derive(Subcommand)]
pub enum AppsCommand {
    /// Create an app; prints {"app_id", "name", "ingest_key", "read_key"} as JSON.
    Create {
        #[arg(long)]
        name: String,
    },
    /// List the apps, one JSON object a line: app_id, name, rate limit, created, live keys.
    List,
}

/// The kinds of key `keys create` makes.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Ingest,
    Read,
    Admin,
}

impl From<Kind> for apps::KeyKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Ingest => apps::KeyKind::Ingest,
            Kind::Read => apps::KeyKind::Read,
            Kind::Admin => apps::KeyKind::Admin,
        }
    }
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Revoke a key (it stops working on every gateway within a second).
    Revoke { key: String },
    /// Add a key to an app and print it (shown this once). For rotation: create, deploy,
    /// revoke the old one.
    Create {
        #[arg(long)]
        app: String,
        #[arg(long, value_enum)]
        kind: Kind,
    },
    /// List an app's keys, one JSON object a line: prefix, kind, created, revoked (never the key).
    List {
        #[arg(long)]
        app: String,
    },
}

/// Runs one command: the cache's on the cache Redis, the others on one connection to the
/// primary.
pub async fn run(config: &GatewayConfig, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Cache { command } => cache(config, command).await,
        Command::Apps { command } => apps(&primary(config).await?, command).await,
        Command::Keys { command } => keys(&primary(config).await?, command).await,
        Command::Users { command } => users(&primary(config).await?, command).await,
        Command::Erasures { command } => erasures(&primary(config).await?, command).await,
    }
}

/// One connection to the primary (not the daemon's pools), the schema checked.
async fn primary(config: &GatewayConfig) -> anyhow::Result<Db> {
    let mut db = config.db.clone();
    db.primary.pool_min = 0;
    db.primary.pool_max = 1;
    let db = Pools::new(&db)?.write;
    shared::daemon::check_schema(&db).await?;
    Ok(db)
}

/// Prints each item as one line of JSON.
fn print_lines<T: Serialize>(items: impl IntoIterator<Item = T>) -> anyhow::Result<()> {
    for item in items {
        println!("{}", serde_json::to_string(&item)?);
    }
    Ok(())
}

async fn apps(db: &Db, command: AppsCommand) -> anyhow::Result<()> {
    match command {
        AppsCommand::Create { name } => print_lines([apps::create_app(db, &name).await?]),
        AppsCommand::List => print_lines(apps::list_apps(db).await?),
    }
}

async fn keys(db: &Db, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Revoke { key } => {
            apps::revoke_key(db, &key).await?;
            eprintln!("Key revoked.");
            Ok(())
        }
        KeysCommand::Create { app, kind } => {
            print_lines([apps::create_key(db, &app, kind.into()).await?])
        }
        KeysCommand::List { app } => print_lines(apps::list_keys(db, &app).await?),
    }
}

async fn users(db: &Db, command: UsersCommand) -> anyhow::Result<()> {
    let UsersCommand::Erase {
        app,
        suppress,
        user_ids,
    } = command;
    anyhow::ensure!(apps::app_exists(db, &app).await?, "no app {app:?}");
    let ids = privacy::check_user_ids(&user_ids).map_err(anyhow::Error::msg)?;
    let (erasure, _) = privacy::create_erasure(db, &app, &ids, suppress).await?;
    print_lines([erasure])
}

async fn erasures(db: &Db, command: ErasuresCommand) -> anyhow::Result<()> {
    let ErasuresCommand::List { app } = command;
    print_lines(privacy::list_erasures(db, &app).await?)
}

/// The cache commands, on the cache Redis alone.
async fn cache(config: &GatewayConfig, command: CacheCommand) -> anyhow::Result<()> {
    let cache = Cache::new(
        config.redis.cache_url.clone(),
        &config.stream_prefix,
        Duration::from_secs(5),
    );
    anyhow::ensure!(cache.connect().await, "the cache Redis is unreachable");
    match command {
        CacheCommand::Stats => print_lines([cache
            .stats()
            .await
            .context("cannot read cache statistics")?]),
        CacheCommand::Invalidate { app } => invalidate(&cache, app.as_deref()).await,
    }
}

/// Deletes the cached answers of one app, or of all.
async fn invalidate(cache: &Cache, app: Option<&str>) -> anyhow::Result<()> {
    let n = cache
        .invalidate_prefix(&cache.answers_prefix(app))
        .await
        .context("cannot reach the cache")?;
    eprintln!("Deleted {n} cached answers.");
    Ok(())
}
