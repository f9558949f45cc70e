//! The pipeline on a real three-node Redis Cluster (local redis-server processes on spare
//! ports, made with `redis-cli --cluster create`): the stream shards spread over the nodes, the
//! gateway and the writers move every event, and a node SIGKILLed and restarted (AOF) loses
//! nothing acknowledged and doubles nothing.

use faults::scenario::{self, Fault, Servers, Timing};
use shared::queue::Keys;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_a_redis_cluster_and_a_node_restart_loses_nothing_acknowledged() {
    let mut servers = Servers::start(true).await.expect("servers");
    let cluster = servers.cluster.as_ref().expect("cluster");
    // Different shards' hash tags land on different nodes.
    let owners = cluster
        .owners(&Keys::new("sluice", 16).all_streams())
        .await
        .expect("owners");
    for node in 0..3 {
        assert!(owners.contains(&node), "16 shards over 3 nodes: {owners:?}");
    }
    let o = scenario::run(&mut servers, Fault::ClusterNodeRestart, Timing::short())
        .await
        .expect("run");
    eprintln!("{}", scenario::table(std::slice::from_ref(&o)));
    assert!(o.audit.acknowledged > 500, "a real load: {o:?}");
    assert_eq!(o.audit.lost, 0, "{o:?}");
    assert_eq!(o.audit.doubled, 0, "{o:?}");
    assert!(o.recovery.is_some() && o.healthy, "{o:?}");
}

#[tokio::test]
async fn a_push_resent_by_the_cluster_client_is_added_once() {
    let cluster = testkit::OwnCluster::start().await.expect("cluster");
    let url = shared::secret::Secret::new(cluster.url());
    let mut conn = shared::redis_conn::connect(&url, std::time::Duration::from_secs(2))
        .await
        .expect("connect");
    assert!(conn.is_cluster());
    let keys = Keys::new("faults-token", 3);
    let script = redis::Script::new(shared::queue::PUSH_SCRIPT);
    for shard in 0..3 {
        for _ in 0..2 {
            let _: Vec<String> = shared::queue::push_invocation(
                &script,
                &keys,
                shard,
                Some("same-token"),
                [(5, &b"payload"[..]), (2, &b"more"[..])],
            )
            .invoke_async(&mut conn)
            .await
            .expect("push");
        }
        let len: i64 = redis::cmd("XLEN")
            .arg(keys.stream(shard))
            .query_async(&mut conn)
            .await
            .expect("xlen");
        assert_eq!(len, 2, "two entries, pushed once");
    }
    // Depths live on their shards' nodes; MGET across slots is split by the client.
    let depths: Vec<i64> = redis::cmd("MGET")
        .arg(keys.all_depths())
        .query_async(&mut conn)
        .await
        .expect("mget");
    assert_eq!(depths, vec![7, 7, 7]);
}

#[tokio::test]
async fn the_read_cache_works_on_a_cluster() {
    use std::time::Duration;
    let cluster = testkit::OwnCluster::start().await.expect("cluster");
    let cache = ingest_gateway::cache::Cache::new(
        shared::secret::Secret::new(cluster.url()),
        "faults-cache",
        Duration::from_secs(2),
    );
    assert!(cache.connect().await);
    let p = cache.prefix().to_owned();
    for i in 0..50 {
        assert!(
            cache
                .put(
                    &format!("{p}:v1:app:{i}"),
                    &format!("v{i}"),
                    Duration::from_secs(60)
                )
                .await
        );
    }
    assert_eq!(
        cache.get(&format!("{p}:v1:app:3")).await.as_deref(),
        Some("v3")
    );
    assert_eq!(cache.get(&format!("{p}:v1:app:77")).await, None);
    cache.record(true);
    cache.flush_counts().await;
    let stats = cache.stats().await.expect("stats");
    assert_eq!((stats.keys, stats.hits), (50, 1));
    assert_eq!(
        cache.invalidate_prefix(&format!("{p}:v1:app:")).await,
        Some(50)
    );
    assert_eq!(cache.get(&format!("{p}:v1:app:3")).await, None);
}
