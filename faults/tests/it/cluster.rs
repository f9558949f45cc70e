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
