use clap::{Parser, Subcommand};
use ingest_gateway::{apps, privacy, GatewayConfig};
use shared::config::Env;
use shared::db::Pools;

/// Sluice ingest gateway: POST /v1/events to Redis Streams, and the analytics read API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
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
enum CacheCommand {
    /// Print today's hits, misses, hit ratio, cached answers and the cache Redis's memory (JSON).
    Stats,
    /// Delete cached answers: every app's, or one app's.
    Invalidate {
        #[arg(long)]
        app: Option<String>,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
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
enum ErasuresCommand {
    /// An app's erasure requests, one JSON object a line, oldest first.
    List {
        #[arg(long)]
        app: String,
    },
}

#[derive(Subcommand)]
enum AppsCommand {
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
enum Kind {
    Ingest,
    Read,
    Admin,
}

#[derive(Subcommand)]
enum KeysCommand {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = GatewayConfig::from_env(&Env::from_process())?;
    shared::telemetry::init(&config.log);
    let Some(command) = cli.command else {
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        let ops = tokio::net::TcpListener::bind(config.metrics_addr).await?;
        let shutdown = shared::shutdown::on_signals();
        return ingest_gateway::run(config, listener, ops, shutdown).await;
    };
    if let Command::Cache { command } = command {
        let cache = ingest_gateway::cache::Cache::new(
            config.redis.cache_url.clone(),
            &config.stream_prefix,
            std::time::Duration::from_secs(5),
        );
        anyhow::ensure!(cache.connect().await, "the cache Redis is unreachable");
        match command {
            CacheCommand::Stats => {
                let stats = cache
                    .stats()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("cannot read cache statistics"))?;
                println!("{}", serde_json::to_string(&stats)?);
            }
            CacheCommand::Invalidate { app } => {
                let prefix = match app {
                    Some(app) => format!("{}:v1:{app}:", cache.prefix()),
                    None => format!("{}:v1:", cache.prefix()),
                };
                let n = cache
                    .invalidate_prefix(&prefix)
                    .await
                    .ok_or_else(|| anyhow::anyhow!("cannot reach the cache"))?;
                eprintln!("Deleted {n} cached answers.");
            }
        }
        return Ok(());
    }
    // One-shot commands need one connection, not the daemon's pools.
    config.db.primary.pool_min = 0;
    config.db.primary.pool_max = 1;
    let db = Pools::new(&config.db)?.write;
    shared::daemon::check_schema(&db).await?;
    match command {
        Command::Apps {
            command: AppsCommand::Create { name },
        } => {
            let app = apps::create_app(&db, &name).await?;
            println!("{}", serde_json::to_string(&app)?);
        }
        Command::Apps {
            command: AppsCommand::List,
        } => {
            for app in apps::list_apps(&db).await? {
                println!("{}", serde_json::to_string(&app)?);
            }
        }
        Command::Keys {
            command: KeysCommand::Revoke { key },
        } => {
            apps::revoke_key(&db, &key).await?;
            eprintln!("Key revoked.");
        }
        Command::Keys {
            command: KeysCommand::Create { app, kind },
        } => {
            let kind = match kind {
                Kind::Ingest => apps::KeyKind::Ingest,
                Kind::Read => apps::KeyKind::Read,
                Kind::Admin => apps::KeyKind::Admin,
            };
            let key = apps::create_key(&db, &app, kind).await?;
            println!("{}", serde_json::to_string(&key)?);
        }
        Command::Keys {
            command: KeysCommand::List { app },
        } => {
            for key in apps::list_keys(&db, &app).await? {
                println!("{}", serde_json::to_string(&key)?);
            }
        }
        Command::Users {
            command:
                UsersCommand::Erase {
                    app,
                    suppress,
                    user_ids,
                },
        } => {
            let known: bool = db
                .query_one(
                    "find app",
                    "SELECT EXISTS (SELECT 1 FROM apps WHERE app_id = $1)",
                    &[&app],
                )
                .await?
                .get(0);
            anyhow::ensure!(known, "no app {app:?}");
            let ids = privacy::check_user_ids(&user_ids).map_err(anyhow::Error::msg)?;
            let (erasure, _) = privacy::create_erasure(&db, &app, &ids, suppress).await?;
            println!("{}", serde_json::to_string(&erasure)?);
        }
        Command::Erasures {
            command: ErasuresCommand::List { app },
        } => {
            for erasure in privacy::list_erasures(&db, &app).await? {
                println!("{}", serde_json::to_string(&erasure)?);
            }
        }
        Command::Cache { .. } => unreachable!("handled above"),
    }
    Ok(())
}
