//! Authentication state in a real Redis: failure counts and blocks shared
//! by two Portcullis servers (a block on one is a block on the other, and
//! ends after a short real cool-down), on a Redis Cluster, and with Redis
//! down (counting falls back to the process); API keys in Redis, written by
//! `portcullis apikey new --redis` and revoked at once by `apikey revoke`.

use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use portcullis::authn::config::{ApiKeyConfig, AuthnConfig, AuthnRedisConfig, FailureConfig};
use portcullis::authn::failures::{FailureKey, FailureStore};
use portcullis::authn::failures_redis::RedisFailures;
use portcullis::authn::{Authenticator, AuthnRedis};
use portcullis::config::Config;
use portcullis::decision::DenyReason;
use portcullis::policy::snapshot::Snapshot;
use portcullis::request::AccessRequest;
use portcullis::shared_redis::SharedRedis;

use crate::support::{
    self, check_at, claims, denied_header, http_status, mint, policies_dir, Check, Key,
    RedisCluster, RedisServer, TestServer,
};

fn failures(block_seconds: u64) -> FailureConfig {
    FailureConfig {
        threshold: 3,
        window_seconds: 60,
        block_seconds,
        ..FailureConfig::default()
    }
}

/// A server whose authentication keeps its state in `redis` (quotas stay
/// in process).
async fn start(redis: &RedisServer, failures: FailureConfig) -> TestServer {
    TestServer::start(Config {
        reload: portcullis::policy::reload::ReloadConfig {
            watch: false,
            ..Default::default()
        },
        authentication: AuthnConfig {
            jwt: vec![support::fixture_issuer()],
            failures,
            redis: Some(AuthnRedisConfig {
                url: Some(redis.url()),
                timeout_ms: 500,
                ..AuthnRedisConfig::default()
            }),
            ..AuthnConfig::default()
        },
        ..support::in_process_config(&policies_dir())
    })
    .await
}

/// A predict call with `token` from `source`.
async fn check(running: &TestServer, source: &str, token: &str) -> CheckResponse {
    let request = Check::predict().bearer(token).source(source).build();
    check_at(running.decision_addr, request).await
}

fn retry_after(r: &CheckResponse) -> Option<u64> {
    denied_header(r, "retry-after").map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn failures_on_one_server_block_the_source_on_the_other_until_the_cool_down_ends() {
    let redis = RedisServer::start();
    let a = start(&redis, failures(2)).await;
    let b = start(&redis, failures(2)).await;
    assert_eq!(a.state.authenticator.failure_store(), Some("redis"));
    let forged = mint(claims("alice", "acme"), Key::UntrustedEs256);
    let good = mint(claims("alice", "acme"), Key::Es256);

    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..3 {
            s.push(http_status(&check(&a, "192.0.2.7", &forged).await));
        }
        s
    };
    assert_eq!(statuses, [401, 401, 401]);
    // The other server never saw a failure from that source, and still
    // refuses it, even with a good token.
    let blocked = check(&b, "192.0.2.7", &good).await;
    assert_eq!(http_status(&blocked), 429);
    assert!(
        matches!(retry_after(&blocked), Some(1..=2)),
        "{:?}",
        retry_after(&blocked)
    );
    assert_eq!(http_status(&check(&a, "192.0.2.7", &good).await), 429);
    // Other sources are not affected.
    assert_eq!(http_status(&check(&b, "192.0.2.8", &good).await), 200);

    // One hash per source and per presented identity, each expiring.
    let keys = redis.ttls();
    assert!(
        keys.iter()
            .any(|(k, ttl)| k == "portcullis:f:{src:192.0.2.7}" && (1..=60_000).contains(ttl)),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|(k, ttl)| k.starts_with("portcullis:f:{id:") && *ttl > 0),
        "{keys:?}"
    );

    // The 2 s cool-down ends on both servers.
    let deadline = Instant::now() + Duration::from_secs(10);
    for server in [&b, &a] {
        loop {
            let r = check(server, "192.0.2.7", &good).await;
            if http_status(&r) == 200 {
                break;
            }
            assert_eq!(http_status(&r), 429);
            assert!(Instant::now() < deadline, "the block did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

fn ip(n: u8) -> FailureKey {
    FailureKey::Source(IpAddr::from([10, 0, 0, n]))
}

#[tokio::test]
async fn a_redis_cluster_shares_failure_blocks_and_api_keys() {
    let cluster = RedisCluster::start();
    let store = |_| {
        let redis = Arc::new(
            SharedRedis::cluster(&cluster.urls(), Duration::from_secs(2), "test").unwrap(),
        );
        RedisFailures::new(&failures(300), redis, Duration::from_secs(2))
    };
    let (one, two) = (store(1), store(2));
    let now = Instant::now();
    // Several sources, so that keys land on several nodes.
    for n in 1..=6 {
        for _ in 0..3 {
            one.record_failure(&ip(n), now, true).await;
        }
    }
    for n in 1..=6 {
        let left = two
            .blocked_for(&ip(n), now)
            .await
            .expect("blocked on the other replica");
        assert!(left > Duration::from_secs(290), "{left:?}");
    }
    assert_eq!(two.blocked_for(&ip(7), now).await, None);
    assert_eq!(one.degraded_operations() + two.degraded_operations(), 0);

    // An API key stored through one connection verifies through another.
    let redis =
        Arc::new(SharedRedis::cluster(&cluster.urls(), Duration::from_secs(2), "test").unwrap());
    let key =
        portcullis::authn::apikey::generate("scorer", "acme", vec!["models:invoke".into()], None);
    let mut con = redis.connection().await.unwrap();
    assert!(
        portcullis::authn::apikey_redis::store(&mut con, &key.stored)
            .await
            .unwrap()
    );
    let authn = redis_keys_authenticator(
        SharedRedis::cluster(&cluster.urls(), Duration::from_secs(2), "test").unwrap(),
        Duration::from_secs(2),
    );
    let s = Snapshot::load(&policies_dir()).unwrap();
    let d = support::decide(&s, &authn, &with_key(&key.key)).await;
    assert_eq!(d.status, 200, "{d:?}");
    let keys: Vec<String> = cluster.ttls().into_iter().map(|(k, _)| k).collect();
    assert!(
        keys.iter().all(|k| k.contains(":{") && k.ends_with('}')),
        "hash-tagged: {keys:?}"
    );
}

#[tokio::test]
async fn a_replica_trusts_an_unblocked_answer_for_unblocked_cache_ms_and_a_failure_refreshes_it() {
    let redis = RedisServer::start();
    let store = |cache_ms| {
        RedisFailures::new(
            &FailureConfig {
                unblocked_cache_ms: cache_ms,
                ..failures(300)
            },
            Arc::new(SharedRedis::single(&redis.url(), Duration::from_secs(2), "test").unwrap()),
            Duration::from_secs(2),
        )
    };
    let (a, b) = (store(0), store(60_000));
    let now = Instant::now();
    assert_eq!(b.blocked_for(&ip(1), now).await, None);
    for _ in 0..3 {
        a.record_failure(&ip(1), now, true).await;
    }
    assert!(a.blocked_for(&ip(1), now).await.is_some());
    // b answers from its cache (the documented lag)...
    assert_eq!(b.blocked_for(&ip(1), now).await, None);
    // ...a replica without the cache asks Redis...
    assert!(store(0).blocked_for(&ip(1), now).await.is_some());
    // ...and a failure b records itself goes to Redis, which reports the
    // block.
    b.record_failure(&ip(1), now, true).await;
    assert!(b.blocked_for(&ip(1), now).await.is_some());
}

#[tokio::test]
async fn with_redis_down_failures_are_counted_in_process_until_it_answers_again() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let store = |pause| {
        RedisFailures::new(
            &failures(300),
            Arc::new(SharedRedis::single(&url, Duration::from_millis(100), "test").unwrap()),
            Duration::from_millis(100),
        )
        .with_retry_after_error(pause)
    };
    let (store, patient) = (
        store(Duration::from_millis(200)),
        store(Duration::from_secs(3600)),
    );
    let now = Instant::now();
    for s in [&store, &patient] {
        assert_eq!(s.blocked_for(&ip(1), now).await, None, "fails open");
        let mut reached = Vec::new();
        for _ in 0..3 {
            reached.push(s.record_failure(&ip(1), now, true).await);
        }
        assert_eq!(reached, [false, false, true]);
        // This replica still blocks the source on its own.
        assert_eq!(
            s.blocked_for(&ip(1), now).await,
            Some(Duration::from_secs(300))
        );
        assert!(s.degraded_operations() >= 4);
    }
    // After a failure Redis is left alone for a while: no timeout to wait
    // out on every request.
    assert_eq!(patient.redis_calls(), 1);

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = store.degraded_operations();
        store.record_failure(&ip(2), Instant::now(), true).await;
        if store.degraded_operations() == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis not used again after its restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(redis
        .ttls()
        .iter()
        .any(|(k, _)| k == "portcullis:f:{src:10.0.0.2}"));
    // The block counted during the outage still holds.
    assert!(store.blocked_for(&ip(1), Instant::now()).await.is_some());
}

// --- API keys in Redis ------------------------------------------------------

/// Runs `portcullis apikey <args>`; returns (success, stdout, stderr).
fn apikey(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("apikey")
        .args(args)
        .env_remove("PORTCULLIS_REDIS_URL")
        .env_remove("PORTCULLIS_REDIS_CLUSTER")
        .output()
        .expect("run portcullis");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn key_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("a key line")
        .to_string()
}

fn with_key(key: &str) -> AccessRequest {
    let mut r = support::predict_access();
    r.headers.insert("x-api-key".into(), key.into());
    r
}

/// An authenticator that looks API keys up in `redis`, waiting at most
/// `timeout` for an answer.
fn redis_keys_authenticator(redis: SharedRedis, timeout: Duration) -> Authenticator {
    Authenticator::with_redis(
        &AuthnConfig {
            api_keys: ApiKeyConfig {
                redis: true,
                ..ApiKeyConfig::default()
            },
            ..AuthnConfig::default()
        },
        Some(AuthnRedis {
            redis: Arc::new(redis),
            timeout,
        }),
    )
    .unwrap()
}

#[tokio::test]
async fn api_keys_in_redis_valid_unknown_revoked_at_once_expired() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (ok, out, err) = apikey(&[
        "new",
        "--app",
        "batch-scorer",
        "--org",
        "acme",
        "--scopes",
        "models:invoke",
        "--redis",
        &url,
    ]);
    assert!(ok, "{err}");
    let scoped = key_of(&out);
    let id = &scoped[4..16];
    assert!(
        out.contains(&format!("portcullis:apikey:{{{id}}}")),
        "{out}"
    );
    let (ok, out, err) = apikey(&[
        "new",
        "--app",
        "old-app",
        "--org",
        "acme",
        "--scopes",
        "models:invoke",
        "--expires-at",
        "1000",
        "--redis",
        &url,
    ]);
    assert!(ok, "{err}");
    let expired = key_of(&out);
    // Without --redis: the printed redis-cli command stores a working key.
    let (ok, out, err) = apikey(&[
        "new",
        "--app",
        "batch-scorer",
        "--org",
        "acme",
        "--scopes",
        "models:invoke,models:read",
    ]);
    assert!(ok, "{err}");
    let printed = key_of(&out);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("redis-cli "))
        .expect("a redis-cli line");
    let run = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} -u {url} {line}",
            support::tool("redis-cli").display()
        ))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let scopes = redis
        .bulk(&format!(
            "HGET portcullis:apikey:{{{}}} scopes\r\n",
            &printed[4..16]
        ))
        .unwrap();
    assert_eq!(scopes, "models:invoke models:read", "quoted for the shell");
    // Redis holds hashes only, never a key.
    let stored = redis
        .bulk(&format!("HGET portcullis:apikey:{{{id}}} sha256\r\n"))
        .unwrap();
    assert_eq!(stored.len(), 64);

    let authn = redis_keys_authenticator(
        SharedRedis::single(&url, Duration::from_millis(200), "test").unwrap(),
        Duration::from_millis(200),
    );
    let s = Snapshot::load(&policies_dir()).unwrap();
    // Two active keys for one app (rotation).
    for key in [&scoped, &printed] {
        let d = support::decide(&s, &authn, &with_key(key)).await;
        assert_eq!(d.status, 200, "{d:?}");
        assert_eq!(d.auth_method, Some("apikey"));
        assert_eq!(d.principal.as_deref(), Some(r#"App::"batch-scorer""#));
    }

    let stranger = portcullis::authn::apikey::generate("x", "acme", vec![], None).key;
    let d = support::decide(&s, &authn, &with_key(&stranger)).await;
    assert_eq!(d.reason, Some(DenyReason::InvalidCredentials));
    assert_eq!(d.errors, vec!["authentication: unknown_api_key"]);
    // The right id with a wrong secret is unknown too.
    let forged = format!("{}{}", &scoped[..17], "A".repeat(43));
    let d = support::decide(&s, &authn, &with_key(&forged)).await;
    assert_eq!(d.errors, vec!["authentication: unknown_api_key"]);

    let d = support::decide(&s, &authn, &with_key(&expired)).await;
    assert_eq!(d.status, 401);
    assert_eq!(d.errors, vec!["authentication: api_key_expired"]);

    // Revocation: the very next request is refused, no reload, no wait.
    let (ok, out, err) = apikey(&["revoke", "--id", id, "--redis", &url]);
    assert!(ok, "{err}");
    assert!(out.contains(id));
    let d = support::decide(&s, &authn, &with_key(&scoped)).await;
    assert_eq!(d.status, 401, "{d:?}");
    assert_eq!(d.errors, vec!["authentication: api_key_revoked"]);
    // The app's other key is unaffected: rotate by adding the new key,
    // then revoking the old one.
    let d = support::decide(&s, &authn, &with_key(&printed)).await;
    assert_eq!(d.status, 200);
    // Deleting the record works too.
    redis.command(&format!(
        "DEL portcullis:apikey:{{{}}}\r\n",
        &printed[4..16]
    ));
    let d = support::decide(&s, &authn, &with_key(&printed)).await;
    assert_eq!(d.errors, vec!["authentication: unknown_api_key"]);

    let (ok, _, err) = apikey(&["revoke", "--id", "0123456789ab", "--redis", &url]);
    assert!(!ok);
    assert!(err.contains("no API key with id 0123456789ab"), "{err}");
    let (ok, _, err) = apikey(&["revoke", "--id", id]);
    assert!(!ok);
    assert!(err.contains("--redis"), "{err}");

    // Redis down: the key cannot be checked, a 503, never an acceptance.
    redis.kill();
    let d = support::decide(&s, &authn, &with_key(&printed)).await;
    assert_eq!(d.status, 503, "{d:?}");
    assert_eq!(d.reason, Some(DenyReason::AuthnUnavailable));
}

#[test]
fn api_keys_in_redis_need_a_redis() {
    let err = Authenticator::new(&AuthnConfig {
        api_keys: ApiKeyConfig {
            redis: true,
            ..ApiKeyConfig::default()
        },
        ..AuthnConfig::default()
    })
    .unwrap_err();
    assert!(err[0]
        .to_string()
        .contains("authentication.api_keys.redis needs a Redis"));
}
