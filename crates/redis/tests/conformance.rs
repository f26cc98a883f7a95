//! The broker conformance suite (`agentwire_manager::conformance`) against the Redis
//! broker: on the machine's shared Redis (under a key prefix of its own) and on a private
//! 3-master Redis Cluster this test starts and stops.

mod support;

use agentwire_manager::conformance::Harness;
use agentwire_redis::testing::{self, RedisCluster};
use support::{RedisHarness, run_conformance as run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_standalone_redis() {
    let Some(url) = testing::require("Redis conformance (standalone)", testing::shared_redis())
    else {
        return;
    };
    run(&RedisHarness::standalone(&url, "conformance")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_redis_cluster() {
    let Some(cluster) = testing::require("Redis conformance (cluster)", RedisCluster::start(3))
    else {
        return;
    };
    let harness = RedisHarness::cluster(cluster.urls(), "conformance-cluster");
    support::awkward_users(&harness.make().await).await;
    run(&harness).await;
    drop(cluster);
}
