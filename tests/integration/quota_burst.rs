//! Distributed quotas under bursts, at default settings (issue 17): three
//! replicas (servers in process, each with its own Redis connection)
//! sharing one `redis-server` or one Redis Cluster, answering concurrent
//! `ShouldRateLimit` calls. A healthy but busy Redis is slow, not down: the
//! answers stay exact.
//!
//! The tests of this file run one at a time ([`one_at_a_time`]): a Redis
//! silent for `stall_ms` (10 ms) is down, and two bursts of 1,000 calls at
//! once in one debug-build process, with their Redis servers, on a 2-core
//! machine keep threads (Redis's among them) off the CPU for longer than
//! that: a host that oversubscribed looks like a paused Redis (see the
//! trade-off in docs/rate-limits.md).

use std::sync::Arc;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use portcullis::quota::{QuotaSettings, QuotaStoreKind};
use tonic::transport::Channel;

use crate::quota_server::rls_request;
use crate::support::{self, PolicyDir, RedisCluster, RedisServer, TestServer};

/// Held by each test of this file for its whole run (see the module
/// documentation).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the other tests of this file to end.
pub(crate) async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// Limits of the burst tests, in a domain of their own.
const BURST_QUOTAS: &str = "\
domain: burst
descriptors:
  - key: k
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: org
    rate_limit: {unit: hour, requests_per_unit: 50}
  - key: model
    rate_limit: {unit: hour, requests_per_unit: 1000}
";

/// Three replicas sharing `store` (default settings otherwise: the
/// default `timeout_ms` and `on_store_error`), and a channel to each.
pub(crate) async fn replicas(
    settings: QuotaSettings,
) -> (PolicyDir, Vec<TestServer>, Vec<Channel>) {
    let policies = PolicyDir::bundled().with_test_quotas();
    policies.write("quotas/burst.yaml", BURST_QUOTAS);
    let (servers, channels) = support::replicas(3, &settings, policies.path()).await;
    (policies, servers, channels)
}

/// Each replica's store errors, degraded decisions and refunds, for a
/// failure message.
pub(crate) fn stats(servers: &[TestServer]) -> String {
    servers
        .iter()
        .map(|s| {
            let q = &s.state.quotas;
            format!(
                "errors {} degraded {} refunds {}",
                q.store_errors(),
                q.degraded_decisions(),
                q.refunds()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Three replicas on one Redis, default timeouts.
pub(crate) fn single(redis: &RedisServer) -> QuotaSettings {
    QuotaSettings {
        store: QuotaStoreKind::Redis,
        redis_url: Some(redis.url()),
        replicas: 3,
        ..QuotaSettings::default()
    }
}

/// Three replicas on a Redis Cluster, default timeouts.
pub(crate) fn cluster(cluster: &RedisCluster) -> QuotaSettings {
    QuotaSettings {
        store: QuotaStoreKind::RedisCluster,
        redis_urls: cluster.urls(),
        replicas: 3,
        ..QuotaSettings::default()
    }
}

/// `calls` concurrent `ShouldRateLimit` calls spread over the replicas,
/// each with `descriptors`; the number answered OK. Every call must be
/// answered OK or OVER_LIMIT (never UNKNOWN or an error). Also the 99th
/// percentile of the calls' latency, for failure messages, and the
/// slowest call's.
pub(crate) async fn burst(
    channels: &[Channel],
    descriptors: &[&[(&str, &str)]],
    calls: usize,
) -> (usize, std::time::Duration, std::time::Duration) {
    let request = Arc::new(rls_request("burst", descriptors, 1));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let mut client = RateLimitServiceClient::new(channels[i % channels.len()].clone());
        let request = Arc::clone(&request);
        tasks.spawn(async move {
            let t = std::time::Instant::now();
            let r = client
                .should_rate_limit((*request).clone())
                .await
                .unwrap_or_else(|s| panic!("ShouldRateLimit answers: {s:?}"))
                .into_inner()
                .overall_code;
            (r, t.elapsed())
        });
    }
    let (mut ok, mut over) = (0, 0);
    let mut took = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (code, t) = r.unwrap();
        took.push(t);
        match code {
            c if c == Code::Ok as i32 => ok += 1,
            c if c == Code::OverLimit as i32 => over += 1,
            other => panic!("an answer neither OK nor OVER_LIMIT: {other}"),
        }
    }
    assert_eq!(ok + over, calls);
    took.sort();
    (ok, took[calls * 99 / 100], took[calls - 1])
}

/// Failing input 1 of issue 17, single Redis: 1,000 concurrent calls over 3
/// replicas against 100/hour admit exactly 100 (were 112 to 199: the 10 ms
/// per-call timeout sent queued calls to the `local` fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_1000_over_3_replicas_on_one_redis_admits_exactly_100() {
    let _alone = one_at_a_time().await;
    let redis = RedisServer::start();
    let (_policies, servers, channels) = replicas(single(&redis)).await;
    for round in 0..2 {
        let value = format!("single-{round}");
        let (ok, p99, _) = burst(&channels, &[&[("k", &value)]], 1000).await;
        assert_eq!(
            ok,
            100,
            "round {round}; p99 {p99:?}; {}; Redis latency events: {}",
            stats(&servers),
            redis.latency_events()
        );
    }
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// Failing input 1 of issue 17, Redis Cluster (were 133 to 199).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_1000_over_3_replicas_on_a_redis_cluster_admits_exactly_100() {
    let _alone = one_at_a_time().await;
    let nodes = RedisCluster::start();
    let (_policies, servers, channels) = replicas(cluster(&nodes)).await;
    for round in 0..2 {
        let value = format!("cluster-{round}");
        let (ok, p99, _) = burst(&channels, &[&[("k", &value)]], 1000).await;
        assert_eq!(
            ok,
            100,
            "round {round}; p99 {p99:?}; {}; Redis latency events: {}",
            stats(&servers),
            nodes.latency_events()
        );
    }
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// Units a GCRA counter holds: its theoretical arrival time `tat` (µs,
/// Redis time) less `since`, a Redis time taken before the first charge,
/// in units of `emission_us` (rounded: the first charge came a few
/// milliseconds after `since`, far less than half an emission interval).
fn units(tat: Option<u64>, since: u64, emission_us: u64) -> u64 {
    match tat {
        None => 0,
        Some(tat) => (tat.saturating_sub(since) + emission_us / 2) / emission_us,
    }
}

/// Failing input 2 of issue 17: in a Cluster, three descriptors (user
/// 1,000/h, org 50/h, model 1,000/h) on three slots, 200 concurrent calls:
/// exactly 50 admitted, and every counter holds exactly the admitted
/// calls (were 66 to 97 admitted, and the user counter held more units
/// than admitted calls: a refund cut off by the caller's timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_multi_descriptor_burst_leaves_every_counter_at_the_admitted_count() {
    let _alone = one_at_a_time().await;
    let nodes = RedisCluster::start();
    let keys = [("user", "u1"), ("org", "o1"), ("model", "m1")];
    let redis_key = |(k, v): (&str, &str)| {
        format!(
            "portcullis:q:{{{}}}",
            portcullis::quota::config::counter_key("burst", &[(k.to_string(), v.to_string())])
        )
    };
    let slots: Vec<_> = keys
        .iter()
        .map(|&kv| redis::cluster_routing::Slot::for_key(redis_key(kv)))
        .collect();
    assert!(
        slots[0] != slots[1] && slots[1] != slots[2] && slots[0] != slots[2],
        "the three counters must be on three slots: {slots:?}"
    );
    let (_policies, servers, channels) = replicas(cluster(&nodes)).await;
    let client = redis::cluster::ClusterClient::new(nodes.urls()).unwrap();
    let mut con = client.get_connection().unwrap();
    let now = |con: &mut redis::cluster::ClusterConnection| -> u64 {
        let (s, us): (u64, u64) = redis::cmd("TIME").query(con).unwrap();
        s * 1_000_000 + us
    };
    let since = now(&mut con);
    let (ok, p99, _) = burst(&channels, &[&[keys[0]], &[keys[1]], &[keys[2]]], 200).await;
    let tat = |con: &mut redis::cluster::ClusterConnection, key: String| -> Option<u64> {
        redis::cmd("GET").arg(key).query(con).unwrap()
    };
    let per_hour_us = 3_600_000_000u64;
    let mut counted: Vec<u64>;
    // A refund of a call whose caller gave up may still be under way for
    // a moment: wait (bounded) for the counters to settle. A charge left
    // behind never does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        counted = keys
            .iter()
            .zip([1000u64, 50, 1000])
            .map(|(&kv, limit)| units(tat(&mut con, redis_key(kv)), since, per_hour_us / limit))
            .collect();
        if counted == [ok as u64; 3] || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        ok,
        50,
        "admitted; counters {counted:?}; p99 {p99:?}; {}; Redis latency events: {}",
        stats(&servers),
        nodes.latency_events()
    );
    assert_eq!(counted, [50, 50, 50], "user, org, model counters");
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// At default settings a dead Redis is still answered within Envoy's
/// default RLS deadline (20 ms): the lost connection opens the circuit
/// breaker on the first failure, and every later call is decided in the
/// degraded mode at once. A paused one (connection open, no answer) holds
/// the first call until its silence passes `stall_ms` (10 ms), then the
/// same (it held it for a whole `timeout_ms`, 1 s, before).
#[tokio::test]
async fn at_default_settings_a_dead_redis_is_answered_within_envoys_deadline() {
    let _alone = one_at_a_time().await;
    use portcullis::quota::gcra::Rate;
    use portcullis::quota::{Charge, Enforced};
    use std::time::{Duration, Instant};
    /// Envoy's default RLS deadline, plus scheduling slack on a shared
    /// 2-core machine; the bound of the first call on a paused Redis.
    const ENVOY: Duration = Duration::from_millis(20);
    const SLACK: Duration = Duration::from_millis(30);
    const FIRST: Duration = Duration::from_millis(200);
    let mut redis = RedisServer::start();
    let quotas = single(&redis).build().unwrap();
    let c = Charge::gcra(
        "default-dead|user=a",
        Rate::new(1000, 3_600_000_000, 1000),
        1,
    );
    let call = || async {
        let started = Instant::now();
        let r = quotas.enforce(std::slice::from_ref(&c)).await;
        (r, started.elapsed())
    };
    let healthy = |r: &Enforced| matches!(r, Enforced::Charged { degraded: None, .. });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(&call().await.0) {
        assert!(Instant::now() < deadline, "Redis never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    redis.kill();
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let (r, took) = call().await;
        assert!(
            matches!(
                r,
                Enforced::Charged {
                    degraded: Some(_),
                    ..
                }
            ),
            "call {i} after the kill: {r:?}"
        );
        slowest = slowest.max(took);
    }
    assert!(quotas.store_down());
    assert!(
        slowest <= ENVOY + SLACK,
        "a call took {slowest:?} with Redis killed"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(&call().await.0) {
        assert!(Instant::now() < deadline, "no recovery within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    redis.pause();
    let (first, took) = call().await;
    assert_judged_down_within(&first, took, FIRST);
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let (r, took) = call().await;
        assert!(
            matches!(
                r,
                Enforced::Charged {
                    degraded: Some(_),
                    ..
                }
            ),
            "{r:?}"
        );
        slowest = slowest.max(took);
    }
    assert!(
        slowest <= ENVOY + SLACK,
        "a call took {slowest:?} with Redis paused"
    );
    redis.resume();
}

/// Found by the fault matrix (`scripts/quota-fault-matrix.sh`): in a Redis
/// Cluster, one paused primary opened the one circuit breaker of the whole
/// store, so the keys of the primaries that still answered were decided by
/// the `local` fallback too (and, under steady traffic to those primaries,
/// the paused one's keys were never judged down: each call waited a whole
/// deadline and was refused). The breaker is per slot: only the paused
/// primary's keys go to the fallback, the others stay exact. And the
/// half-open probe sent every 250 ms held its caller for a whole deadline
/// (1 s, past Envoy's 20 ms): the probe's caller is now answered by the
/// degraded mode at once while the probe goes on. The first call on the
/// paused primary is answered when its slot's silence passes `stall_ms`.
#[tokio::test]
async fn a_paused_cluster_primary_sends_only_its_own_keys_to_the_fallback() {
    let _alone = one_at_a_time().await;
    use portcullis::quota::gcra::Rate;
    use portcullis::quota::{Charge, Enforced};
    use std::time::{Duration, Instant};
    /// Envoy's default RLS deadline, plus scheduling slack on a shared
    /// 2-core machine; and the slack over `timeout_ms` of the first call.
    const ENVOY: Duration = Duration::from_millis(20);
    const SLACK: Duration = Duration::from_millis(30);
    const FIRST: Duration = Duration::from_millis(200);
    let mut nodes = RedisCluster::start();
    let quotas = cluster(&nodes).build().unwrap();
    let node_of =
        |nodes: &RedisCluster, key: &str| nodes.node_of(&format!("portcullis:q:{{{key}}}"));
    let paused_key = "paused-primary|k=a".to_string();
    let paused = node_of(&nodes, &paused_key);
    let other_key = (0..64)
        .map(|i| format!("paused-primary|k=b{i}"))
        .find(|k| node_of(&nodes, k) != paused)
        .expect("a key on another primary among 64");
    let rate = Rate::new(1000, 3_600_000_000, 1000);
    let call = |key: &str| {
        let c = Charge::gcra(key, rate, 1);
        let quotas = &quotas;
        async move {
            let started = Instant::now();
            let r = quotas.enforce(std::slice::from_ref(&c)).await;
            (r, started.elapsed())
        }
    };
    let by_store = |r: &Enforced| matches!(r, Enforced::Charged { degraded: None, .. });
    let by_fallback = |r: &Enforced| {
        matches!(
            r,
            Enforced::Charged {
                degraded: Some(_),
                ..
            }
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(by_store(&call(&paused_key).await.0) && by_store(&call(&other_key).await.0)) {
        assert!(Instant::now() < deadline, "the cluster never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    nodes.node(paused).pause();
    let (first, took) = call(&paused_key).await;
    assert!(by_fallback(&first), "{first:?}");
    assert!(took <= FIRST, "the first call took {took:?}");
    // Long enough for several half-open probes (every 250 ms).
    let until = Instant::now() + Duration::from_millis(1500);
    let mut i = 0;
    while Instant::now() < until && i < 500 {
        i += 1;
        let (r, _) = call(&other_key).await;
        assert!(
            by_store(&r),
            "call {i} on a key of a primary that answers: {r:?}"
        );
        let (r, took) = call(&paused_key).await;
        assert!(
            by_fallback(&r),
            "call {i} on the paused primary's key: {r:?}"
        );
        assert!(
            took <= ENVOY + SLACK,
            "call {i} on the paused primary's key took {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes.node(paused).resume();
}

/// A paused Redis (SIGSTOP: connection open, no reply) at default
/// settings: 30 concurrent `ShouldRateLimit` calls over 3 replicas are
/// all answered by the `local` fallback once the store's silence passes
/// `stall_ms` (10 ms), every one well before the per-call deadline
/// (`timeout_ms`, 1 s) that answered them before (p99 1,038 ms in the fault
/// matrix). 200 ms is a functional bound with a margin for a loaded
/// 2-core machine, not a speed claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_redis_has_every_should_rate_limit_call_answered_by_the_fallback_within_200_ms() {
    let _alone = one_at_a_time().await;
    let mut redis = RedisServer::start();
    let (_policies, servers, channels) = replicas(single(&redis)).await;
    let (ok, _, _) = burst(&channels, &[&[("k", "paused-warm")]], 30).await;
    assert_eq!(ok, 30, "healthy first; {}", stats(&servers));
    let degraded_before: u64 = servers
        .iter()
        .map(|s| s.state.quotas.degraded_decisions())
        .sum();

    redis.pause();
    let (ok, p99, slowest) = burst(&channels, &[&[("k", "paused")]], 30).await;
    // Then, still paused, a second wave: decided at once (breaker open).
    let (ok_later, _, slowest_later) = burst(&channels, &[&[("k", "paused")]], 30).await;
    redis.resume();
    assert!(
        slowest.max(slowest_later) < std::time::Duration::from_millis(200),
        "slowest {slowest:?} then {slowest_later:?}, p99 {p99:?}; {}",
        stats(&servers)
    );
    // The fallback answered (each replica enforces 100/3 = 33): not the
    // store, and not a refusal of every call.
    let degraded: u64 = servers
        .iter()
        .map(|s| s.state.quotas.degraded_decisions())
        .sum::<u64>()
        - degraded_before;
    assert!(degraded >= 60, "degraded {degraded}; {}", stats(&servers));
    assert_eq!(
        ok + ok_later,
        60,
        "100/3 per replica fits 60; {}",
        stats(&servers)
    );
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// One paused Cluster primary at default settings: concurrent
/// `ShouldRateLimit` calls on its key are answered by the fallback
/// within 200 ms (a functional bound, see above), and then a burst on a
/// key of another primary stays exact (100 of 300): its slots answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_cluster_primary_has_its_calls_answered_within_200_ms_and_the_others_stay_exact() {
    let _alone = one_at_a_time().await;
    let mut nodes = RedisCluster::start();
    let node_of = |nodes: &RedisCluster, value: &str| {
        let key = portcullis::quota::config::counter_key(
            "burst",
            &[("k".to_string(), value.to_string())],
        );
        nodes.node_of(&format!("portcullis:q:{{{key}}}"))
    };
    let paused_value = "paused-primary-0";
    let paused = node_of(&nodes, paused_value);
    let other_value = (1..64)
        .map(|i| format!("paused-primary-{i}"))
        .find(|v| node_of(&nodes, v) != paused)
        .expect("a key on another primary among 64");
    let (_policies, servers, channels) = replicas(cluster(&nodes)).await;
    let (ok, _, _) = burst(&channels, &[&[("k", "paused-primary-warm")]], 30).await;
    assert_eq!(ok, 30, "healthy first; {}", stats(&servers));

    let paused_descriptors: &[&[(&str, &str)]] = &[&[("k", paused_value)]];
    let other_descriptors: &[&[(&str, &str)]] = &[&[("k", &other_value)]];
    nodes.node(paused).pause();
    let on_paused = burst(&channels, paused_descriptors, 30).await;
    let on_other = burst(&channels, other_descriptors, 300).await;
    nodes.node(paused).resume();
    let (ok, p99, slowest) = on_paused;
    assert!(
        slowest < std::time::Duration::from_millis(200),
        "paused primary: slowest {slowest:?}, p99 {p99:?}; {}",
        stats(&servers)
    );
    assert_eq!(
        ok,
        30,
        "by the fallback (33 a replica); {}",
        stats(&servers)
    );
    let (ok, p99, _) = on_other;
    assert_eq!(ok, 100, "another primary; p99 {p99:?}; {}", stats(&servers));
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// A Redis Cluster failover as a burst begins (`CLUSTER FAILOVER
/// TAKEOVER` on the replica of the burst key's primary): 1,000 concurrent
/// charges over 3 replicas' quota enforcement (each with its own cluster
/// connections) admit exactly 100, every one decided by the store. The
/// cluster client follows the old primary's `MOVED` replies, stopping
/// every call while it refreshes its slot map.
///
/// In separate processes (`scripts/quota-fault-matrix.sh --only cluster
/// --fault failover`) that refresh's silence was judged the primary's
/// stall in 16 of 37 runs, which then over-admitted (101 to 166) in the
/// `local` mode; the liveness checks of `SharedRedis::witness` answer
/// some of that. In one test process the misjudgement did not show (5 of
/// 5 runs exact with the checks turned off): this test pins the
/// failover's exactness, the fault matrix measures the misjudgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_as_a_burst_begins_admits_exactly_100() {
    let _alone = one_at_a_time().await;
    use portcullis::quota::gcra::Rate;
    use portcullis::quota::{Charge, Enforced};
    let nodes = RedisCluster::start_with_replicas(1);
    let key = "failover|k=a";
    let primary = nodes.node_of(&format!("portcullis:q:{{{key}}}"));
    let replica = nodes.replica_of(primary);
    let replicas: Vec<Arc<portcullis::quota::Quotas>> = (0..3)
        .map(|_| Arc::new(cluster(&nodes).build().unwrap()))
        .collect();
    let by_store = |r: &Enforced| matches!(r, Enforced::Charged { degraded: None, .. });
    // Every replica has its connections before the failover.
    let warm = Charge::gcra("failover|k=warm", Rate::new(1000, 3_600_000_000, 1000), 1);
    for q in &replicas {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !by_store(&q.enforce(std::slice::from_ref(&warm)).await) {
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster never answered"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    let degraded = |replicas: &[Arc<portcullis::quota::Quotas>]| -> u64 {
        replicas.iter().map(|q| q.degraded_decisions()).sum()
    };
    // (A replica's first calls wait for its connection, and may judge
    // that wait a stall: counted from here.)
    let degraded_before = degraded(&replicas);
    nodes.takeover(replica);
    // The burst begins once the old primary knows (it answers `MOVED`),
    // as in the fault matrix, whose burst starts tens of ms after.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let charge = Charge::gcra(key, Rate::new(100, 3_600_000_000, 100), 1);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (q, c) = (Arc::clone(&replicas[i % 3]), charge.clone());
        calls.spawn(async move {
            match q.enforce(std::slice::from_ref(&c)).await {
                Enforced::Charged { charged, .. } => charged.allowed,
                other => panic!("neither admitted nor refused: {other:?}"),
            }
        });
    }
    let mut admitted = 0;
    while let Some(allowed) = calls.join_next().await {
        admitted += usize::from(allowed.unwrap());
    }
    let stats: Vec<String> = replicas
        .iter()
        .map(|q| {
            format!(
                "errors {} degraded {}",
                q.store_errors(),
                q.degraded_decisions()
            )
        })
        .collect();
    let why = format!(
        "{}; Redis latency events: {}",
        stats.join("; "),
        nodes.latency_events()
    );
    assert_eq!(admitted, 100, "{why}");
    assert_eq!(
        degraded(&replicas),
        degraded_before,
        "every call decided by the store; {why}"
    );
}

/// After a Cluster failover, a pause of the promoted primary is still
/// judged by the stall rule (its first call answered by the fallback
/// within 200 ms, well before the 1 s `timeout_ms`). The liveness check
/// of `SharedRedis::witness` follows the witness's own slot map, which
/// the failover left pointing at the old primary, alive as a replica:
/// with `PING` as the check, its answers kept the paused primary's slot
/// from ever looking silent. `ROLE` says it is a replica (a sign of life
/// only within a short grace), and a new witness is made that asks the
/// promoted primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_cluster_failover_a_paused_new_primary_is_judged_down_within_200_ms() {
    let _alone = one_at_a_time().await;
    use portcullis::quota::gcra::Rate;
    use portcullis::quota::{Charge, Enforced};
    use std::time::{Duration, Instant};
    const FIRST: Duration = Duration::from_millis(200);
    let mut nodes = RedisCluster::start_with_replicas(1);
    let key = "failover-pause|k=a";
    let redis_key = format!("portcullis:q:{{{key}}}");
    let old = nodes.node_of(&redis_key);
    let promoted = nodes.replica_of(old);
    let quotas = cluster(&nodes).build().unwrap();
    let charge = Charge::gcra(key, Rate::new(1000, 3_600_000_000, 1000), 1);
    let call = || async {
        let started = Instant::now();
        let r = quotas.enforce(std::slice::from_ref(&charge)).await;
        (r, started.elapsed())
    };
    let by_store = |r: &Enforced| matches!(r, Enforced::Charged { degraded: None, .. });
    let until_by_store = |what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !by_store(&call().await.0) {
            assert!(
                Instant::now() < deadline,
                "{what}: never answered by the store"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    until_by_store("before the failover").await;

    nodes.takeover(promoted);
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.node_of(&redis_key) != promoted {
        assert!(Instant::now() < deadline, "the replica never took the slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The breaker closed again (a stall judged during the failover
    // opens it for 250 ms), and the calls reach the promoted primary.
    tokio::time::sleep(Duration::from_millis(300)).await;
    until_by_store("after the failover").await;

    nodes.node(promoted).pause();
    let (first, took) = call().await;
    nodes.node(promoted).resume();
    assert_judged_down_within(&first, took, FIRST);
}

/// The witness connection of `SharedRedis` (the Cluster liveness checks'),
/// whose slot map a failover leaves stale, keeps answering while its
/// replacement is made (`renew_witness`): the checks have no gap during
/// the failover. The new one asks the promoted primary. Before, the
/// stale witness was dropped first, and no check was answered until a
/// new one was made, while the cluster client's own slot-map refresh
/// silenced every call (fault matrix, Cluster failover cell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_witness_answers_until_its_renewal_asks_the_promoted_primary() {
    let _alone = one_at_a_time().await;
    use portcullis::shared_redis::SharedRedis;
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    use std::time::{Duration, Instant};
    let nodes = RedisCluster::start_with_replicas(1);
    let redis_key = "portcullis:q:{witness|k=a}";
    let old = nodes.node_of(redis_key);
    let promoted = nodes.replica_of(old);
    let shared = SharedRedis::cluster(&nodes.urls(), Duration::from_secs(2), "test").unwrap();
    let witness = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(w) = shared.witness() {
                return w;
            }
            assert!(Instant::now() < deadline, "no witness within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let role = |mut w: redis::cluster_async::ClusterConnection| async move {
        let route = Route::with_key(redis_key, SlotAddr::Master);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
        match w.route_command(redis::cmd("ROLE"), routing).await.unwrap() {
            redis::Value::Array(parts) => match parts.first() {
                Some(redis::Value::BulkString(role)) => String::from_utf8_lossy(role).into_owned(),
                other => panic!("ROLE answered {other:?}"),
            },
            other => panic!("ROLE answered {other:?}"),
        }
    };
    assert_eq!(role(witness().await).await, "master");

    nodes.takeover(promoted);
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.node_of(redis_key) != promoted {
        assert!(Instant::now() < deadline, "the replica never took the slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stale = shared.witness().expect("the witness made before");
    assert_eq!(role(stale).await, "slave", "the witness's map is stale");

    shared.renew_witness();
    assert!(
        shared.witness().is_some(),
        "the stale witness answers until its replacement is made"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while role(witness().await).await != "master" {
        assert!(
            Instant::now() < deadline,
            "the renewed witness never asked the promoted primary"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first call on a paused store was answered by the degraded mode
/// within `bound`: judged down by its silence (`stall_ms`), not after
/// `timeout_ms` (1 s); `bound` is a functional margin for a loaded
/// machine.
fn assert_judged_down_within(
    first: &portcullis::quota::Enforced,
    took: std::time::Duration,
    bound: std::time::Duration,
) {
    assert!(
        matches!(
            first,
            portcullis::quota::Enforced::Charged {
                degraded: Some(_),
                ..
            }
        ),
        "{first:?}"
    );
    assert!(took <= bound, "the first call took {took:?}");
}
