//! Quotas on a primary found through Redis Sentinel (`store:
//! redis_sentinel`): three replicas (servers in process) sharing a
//! redis-server primary that has a replica, with a real Sentinel watching
//! them. Exact on a healthy burst; through a failover (the primary killed,
//! or demoted by `SENTINEL FAILOVER`) every call is still answered, and
//! once the Sentinel has promoted the replica the store is exact again,
//! on the new primary. Runs one at a time with the burst tests (see
//! `quota_burst.rs`).

use std::time::{Duration, Instant};

use portcullis::quota::{QuotaSettings, QuotaStoreKind};
use portcullis::shared_redis::SENTINEL_CHECK;
use tonic::transport::Channel;

use crate::quota_burst::{burst, one_at_a_time, replicas, stats};
use crate::support::{RedisSentinel, TestServer, MASTER_NAME};

fn sentinel(nodes: &RedisSentinel) -> QuotaSettings {
    QuotaSettings {
        store: QuotaStoreKind::RedisSentinel,
        redis_sentinels: nodes.urls(),
        redis_master_name: Some(MASTER_NAME.into()),
        replicas: 3,
        ..QuotaSettings::default()
    }
}

/// The Redis key of the burst domain's counter for `k=value`.
fn counter(value: &str) -> String {
    format!(
        "portcullis:q:{{{}}}",
        portcullis::quota::config::counter_key("burst", &[("k", value.to_string())])
    )
}

/// Asserts that `node` holds the counter of `k=value`, with a TTL.
fn holds_counter(nodes: &mut RedisSentinel, node: usize, value: &str) {
    let key = counter(value);
    let ttls = nodes.node(node).ttls();
    assert!(
        ttls.iter().any(|(k, ttl)| *k == key && *ttl > 0),
        "node {node} should hold {key} with a TTL: {ttls:?}"
    );
}

/// Each replica's degraded decisions and store errors.
fn failures(servers: &[TestServer]) -> Vec<(u64, u64)> {
    servers
        .iter()
        .map(|s| {
            (
                s.state.quotas.degraded_decisions(),
                s.state.quotas.store_errors(),
            )
        })
        .collect()
}

/// Bursts of 30 calls on fresh keys, 100 ms apart, while `going_on` says
/// so (at most 30 s; the burst helper fails on any UNKNOWN or error);
/// counts them in `rounds`.
async fn bursts_while(
    channels: &[Channel],
    rounds: &mut usize,
    what: &str,
    mut going_on: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while going_on() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        let value = format!("during-{rounds}");
        burst(channels, &[&[("k", &value)]], 30).await;
        *rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 20 s) until a call to every replica is decided by the
/// store again (no degraded decision, no store error): the circuit
/// breakers have closed on the new primary.
async fn wait_until_the_store_decides(servers: &[TestServer], channels: &[Channel]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for round in 0.. {
        let before = failures(servers);
        let probe = format!("probe-{round}");
        burst(channels, &[&[("k", &probe)]], channels.len()).await;
        let after = failures(servers);
        if before == after {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store still fails 20 s after the failover: {}",
            stats(servers)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 17, single Redis behind Sentinel, healthy: 1,000 concurrent calls
/// over 3 replicas against 100/hour admit exactly 100, counted on the
/// primary the Sentinel names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_1000_over_3_replicas_behind_sentinel_admits_exactly_100() {
    let _alone = one_at_a_time().await;
    let mut nodes = RedisSentinel::start();
    let (_policies, servers, channels) = replicas(sentinel(&nodes)).await;
    let (ok, p99, _) = burst(&channels, &[&[("k", "healthy")]], 1000).await;
    let primary = nodes.primary();
    assert_eq!(
        ok,
        100,
        "p99 {p99:?}; {}; the primary's latency events: {}",
        stats(&servers),
        nodes.node(primary).latency_events()
    );
    holds_counter(&mut nodes, primary, "healthy");
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// Through a failover caused by `fault`: every call answered while the
/// Sentinel switches (bursts of 30 calls until it names the replica; the
/// burst helper fails on any UNKNOWN or error), then exact again on a
/// fresh key, whose counter is on the new primary.
async fn every_call_answered_through_a_failover_then_exact_on_the_new_primary(
    fault: fn(&mut RedisSentinel),
) {
    let _alone = one_at_a_time().await;
    let mut nodes = RedisSentinel::start();
    let (_policies, servers, channels) = replicas(sentinel(&nodes)).await;
    let (ok, _, _) = burst(&channels, &[&[("k", "before")]], 300).await;
    assert_eq!(ok, 100, "before the failover; {}", stats(&servers));
    let old = nodes.primary();
    holds_counter(&mut nodes, old, "before");
    fault(&mut nodes);
    let mut rounds = 0;
    bursts_while(&channels, &mut rounds, "the Sentinel fails over", || {
        nodes.primary() == old
    })
    .await;
    let new = tokio::task::block_in_place(|| nodes.wait_for_new_primary(old));
    // Each replica asks the Sentinels again at most every SENTINEL_CHECK
    // while calls flow; until then it may still write to the old primary
    // (writable until the Sentinel demotes it, seconds later).
    let switched = Instant::now() + 2 * SENTINEL_CHECK;
    bursts_while(&channels, &mut rounds, "two SENTINEL_CHECKs", || {
        Instant::now() < switched
    })
    .await;
    wait_until_the_store_decides(&servers, &channels).await;
    let (ok, p99, _) = burst(&channels, &[&[("k", "after")]], 300).await;
    assert_eq!(
        ok,
        100,
        "after the failover ({rounds} bursts during it); p99 {p99:?}; {}",
        stats(&servers)
    );
    holds_counter(&mut nodes, new, "after");
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// The primary dies (SIGKILL): the lost connection is forgotten, not
/// redialled at the dead address; the Sentinels name the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_primary_behind_sentinel_every_call_answered_then_exact_on_the_promoted_replica() {
    every_call_answered_through_a_failover_then_exact_on_the_new_primary(|nodes| {
        nodes.node(0).kill()
    })
    .await;
}

/// `SENTINEL FAILOVER`: the primary is demoted to a replica (its clients
/// disconnected, then `READONLY` to writes), the replica promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demoted_primary_behind_sentinel_every_call_answered_then_exact_on_the_promoted_replica() {
    every_call_answered_through_a_failover_then_exact_on_the_new_primary(|nodes| nodes.failover())
        .await;
}
