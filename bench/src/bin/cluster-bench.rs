//! What the gateway's queue costs on a Redis Cluster: the same gateway (its own release process)
//! against one redis-server and against a three-node Redis Cluster, both with AOF
//! (`appendfsync everysec`) on spare ports, in the same run. On one 2-core machine the cluster
//! cannot add capacity (its nodes share the cores); this measures the cluster mode's own overhead
//! (slot routing, a connection per node, the once-only push token).
//!
//! `cargo build --release --bins && target/release/cluster-bench`

use bench::load::{self, LoadResult, Phases, Target};
use bench::print_table;
use clap::Parser;
use testkit::{OwnCluster, OwnRedis, StackBuilder, TestDb};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    phases: Phases,
    #[arg(long, default_value_t = 12)]
    shards: u16,
}

async fn measure(
    args: &Args,
    db: &TestDb,
    key: &str,
    redis_url: &str,
) -> anyhow::Result<(LoadResult, LoadResult)> {
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let gw = StackBuilder::new(db.env_vars(), redis_url, &prefix)
        .var("STREAM_SHARDS", args.shards.to_string())
        .var("QUEUE_HIGH_WATER", "100000000")
        .start()
        .await?;
    let target = Target::new(&gw.gateway_addr, key, args.phases.connections);
    let batched = args
        .phases
        .closed(&target, &load::bodies(100, 16), 100)
        .await;
    let single = args.phases.closed(&target, &load::bodies(1, 64), 1).await;
    Ok((batched, single))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = TestDb::migrated().await;
    let pools = shared::db::Pools::new(&db.config())?;
    let app = ingest_gateway::apps::create_app(&pools.write, "cluster-bench").await?;
    let single_node = OwnRedis::start().await?;
    let cluster = OwnCluster::start().await?;
    eprintln!("One redis-server...");
    let (b1, s1) = measure(&args, &db, &app.ingest_key, &single_node.url()).await?;
    eprintln!("Three-node Redis Cluster...");
    let (b3, s3) = measure(&args, &db, &app.ingest_key, &cluster.url()).await?;
    print_table(
        &[&["queue"][..], &LoadResult::COLUMNS[..]].concat(),
        &[
            b1.row("one redis-server, batches of 100"),
            b3.row("3-node cluster, batches of 100"),
            s1.row("one redis-server, single events"),
            s3.row("3-node cluster, single events"),
        ],
    );
    Ok(())
}
