//! The operations HTTP listener of the real binary: `/metrics` after known
//! traffic shows the expected counts, `/healthz` and `/readyz` answer, and
//! readiness follows the backends (unfetched JWKS, a dead Redis).

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use portcullis::proto::audit_service_client::AuditServiceClient;
use portcullis::proto::{QueryRequest, VerifyRequest};

use crate::support::{
    self, as_user, http_status, metric, mint, parse_metrics, Check, Key, Portcullis,
};

/// A predict call with these headers.
fn predict(headers: &[(&str, &str)]) -> CheckRequest {
    Check::predict().headers(headers).build()
}

/// A client of `pdp`'s audit API.
async fn auditor(pdp: &mut Portcullis) -> AuditServiceClient<tonic::transport::Channel> {
    let admin = pdp.listener("admin");
    AuditServiceClient::connect(format!("http://{admin}"))
        .await
        .unwrap()
}

async fn status_of(
    client: &mut AuthorizationClient<tonic::transport::Channel>,
    req: CheckRequest,
) -> u16 {
    http_status(&client.check(req).await.expect("Check answers").into_inner())
}

fn rls_request(hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: "ml_api".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "remote_address".into(),
                value: "192.0.2.7".into(),
            }],
            ..Default::default()
        }],
        hits_addend: hits,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_known_traffic_show_the_expected_counts() {
    let mut pdp = Portcullis::start(&[]);
    let http = pdp.listener("http");
    let mut client = AuthorizationClient::connect(format!("http://{}", pdp.addr()))
        .await
        .unwrap();
    let alice = format!("Bearer {}", support::token("alice"));
    let bob = format!("Bearer {}", support::token("bob"));
    let forged = format!(
        "Bearer {}",
        mint(support::claims("mallory", "acme"), Key::UntrustedEs256)
    );

    // 3 allowed, 2 forbidden, 1 without credentials, 2 refused credentials,
    // 1 without a route.
    for i in 0..3 {
        let traceparent = format!("00-4bf92f3577b34da6a3ce929d0e0e473{i}-00f067aa0ba902b7-01");
        let request_id = format!("req-{i}");
        let req = predict(&[
            ("authorization", &alice),
            ("traceparent", &traceparent),
            ("x-request-id", &request_id),
        ]);
        assert_eq!(status_of(&mut client, req).await, 200);
    }
    for _ in 0..2 {
        let req = predict(&[("authorization", &bob)]);
        assert_eq!(status_of(&mut client, req).await, 403);
    }
    assert_eq!(status_of(&mut client, predict(&[])).await, 401);
    for _ in 0..2 {
        let req = predict(&[("authorization", &forged)]);
        assert_eq!(status_of(&mut client, req).await, 401);
    }
    assert_eq!(
        status_of(&mut client, Check::get("/nowhere").build()).await,
        404
    );
    // RLS: 50 of the address's 50 per second, then 40 more, which would
    // need 0.8 s of refill: one allowed, one over the limit.
    let mut rls = RateLimitServiceClient::connect(format!("http://{}", pdp.addr()))
        .await
        .unwrap();
    let first = rls.should_rate_limit(rls_request(50)).await.unwrap();
    assert_eq!(first.into_inner().overall_code, Code::Ok as i32);
    let second = rls.should_rate_limit(rls_request(40)).await.unwrap();
    assert_eq!(second.into_inner().overall_code, Code::OverLimit as i32);

    let (status, text) = support::http_get(http, "/metrics");
    assert_eq!(status, 200, "{text}");
    let m = parse_metrics(&text);
    let decisions = |service: &str, outcome: &str, reason: &str| {
        metric(
            &m,
            "portcullis_decisions_total",
            &[
                ("service", service),
                ("outcome", outcome),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(decisions("ext_authz", "allow", "none"), 3.0, "{text}");
    assert_eq!(decisions("ext_authz", "deny", "forbidden"), 2.0);
    assert_eq!(decisions("ext_authz", "deny", "unauthenticated"), 1.0);
    assert_eq!(decisions("ext_authz", "deny", "invalid_credentials"), 2.0);
    assert_eq!(decisions("ext_authz", "deny", "no_route"), 1.0);
    assert_eq!(decisions("ratelimit", "allow", "none"), 1.0);
    assert_eq!(decisions("ratelimit", "deny", "quota_exceeded"), 1.0);
    assert_eq!(
        metric(
            &m,
            "portcullis_quota_rejections_total",
            &[("limit", "per-address")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_authn_failures_total",
            &[("method", "bearer")]
        ),
        2.0,
        "{text}"
    );
    // Latency: every ext_authz decision once; stages as far as each went.
    let count =
        |labels: &[(&str, &str)]| metric(&m, "portcullis_stage_duration_seconds_count", labels);
    assert_eq!(
        metric(
            &m,
            "portcullis_decision_duration_seconds_count",
            &[("service", "ext_authz")]
        ),
        9.0
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_decision_duration_seconds_count",
            &[("service", "ratelimit")]
        ),
        2.0
    );
    assert_eq!(count(&[("stage", "route")]), 9.0);
    assert_eq!(count(&[("stage", "authn")]), 8.0);
    assert_eq!(count(&[("stage", "authz")]), 5.0);
    assert_eq!(count(&[("stage", "quota")]), 3.0);
    assert_eq!(count(&[("stage", "validation")]), 0.0);
    let inf = metric(
        &m,
        "portcullis_decision_duration_seconds_bucket",
        &[("service", "ext_authz"), ("le", "+Inf")],
    );
    assert_eq!(inf, 9.0);
    // Token cache: alice's and bob's tokens miss once then hit; a forged
    // token is never cached.
    let cache = |result| {
        metric(
            &m,
            "portcullis_cache_requests_total",
            &[("cache", "token"), ("result", result)],
        )
    };
    assert_eq!((cache("hit"), cache("miss")), (3.0, 4.0), "{text}");
    // Decision cache: one lookup per request that reached Cedar (how many
    // hit depends on whether repeats fell in the same second).
    let decision = |result| {
        metric(
            &m,
            "portcullis_cache_requests_total",
            &[("cache", "decision"), ("result", result)],
        )
    };
    assert_eq!(decision("hit") + decision("miss"), 5.0, "{text}");
    assert!(decision("miss") >= 1.0, "{text}");
    // State read at scrape time.
    let version = m
        .iter()
        .find(|s| s.name == "portcullis_policy_snapshot_info")
        .expect("snapshot info");
    assert!(!version.labels["version"].is_empty());
    assert_eq!(
        metric(
            &m,
            "portcullis_policy_reloads_total",
            &[("result", "rejected")]
        ),
        0.0
    );
    assert_eq!(
        metric(&m, "portcullis_audit_records_dropped_total", &[]),
        0.0
    );
    assert_eq!(metric(&m, "portcullis_ready", &[]), 1.0);
    // Every request above was answered: none is left counted in progress.
    assert_eq!(metric(&m, "portcullis_requests_in_progress", &[]), 0.0);
    assert_eq!(
        metric(
            &m,
            "portcullis_quota_store_errors_total",
            &[("store", "local")]
        ),
        0.0
    );

    assert_eq!(support::http_get(http, "/healthz"), (200, "ok\n".into()));

    // The trace context reached the audit records, and the chain with the
    // new field still verifies.
    let mut audit = auditor(&mut pdp).await;
    let records = audit
        .query(as_user(
            QueryRequest {
                principal: "User::\"alice\"".into(),
                kind: "decision".into(),
                ..Default::default()
            },
            "dave",
        ))
        .await
        .unwrap()
        .into_inner()
        .records;
    let mut traced: Vec<(String, String)> = records
        .iter()
        .map(|r| (r.request_id.clone(), r.trace_id.clone()))
        .collect();
    traced.sort();
    assert_eq!(
        traced,
        (0..3)
            .map(|i| (
                format!("req-{i}"),
                format!("4bf92f3577b34da6a3ce929d0e0e473{i}")
            ))
            .collect::<Vec<_>>()
    );
    let verified = audit
        .verify(as_user(VerifyRequest::default(), "dave"))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    let (status, body) = support::http_get(http, "/readyz");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["policy_version"], version.labels["version"].as_str());
}

#[test]
fn readyz_is_503_while_an_issuers_keys_were_never_fetched() {
    let idp = support::IdentityProvider::start();
    idp.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.yaml");
    let yaml = format!(
        r#"{head}authentication:
  jwks:
    fetch_timeout_ms: 200
    retry_seconds: 1
  jwt:
    - issuer: "{issuer}"
      audiences: [portcullis]
      jwks_url: "{jwks}"
      algorithms: [ES256]
"#,
        head = support::server_yaml(),
        issuer = idp.issuer(),
        jwks = idp.jwks_url(),
    );
    std::fs::write(&config, yaml).unwrap();
    let mut pdp = Portcullis::start(&["--config", config.to_str().unwrap()]);
    let (status, body) = pdp.http_get("/readyz");
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    assert!(
        v["problems"][0].as_str().unwrap().contains(&idp.issuer()),
        "{body}"
    );
    // Alive all the same.
    assert_eq!(pdp.http_get("/healthz").0, 200);
    let m = parse_metrics(&pdp.http_get("/metrics").1);
    assert_eq!(metric(&m, "portcullis_ready", &[]), 0.0);
    assert_eq!(metric(&m, "portcullis_jwks_issuers_unready", &[]), 1.0);
}

#[test]
fn a_dead_redis_makes_us_unready_only_when_its_failure_mode_denies() {
    let closed = support::ClosedPort::new();
    let dead = format!("redis://{}", closed.addr);
    for (mode, ready) in [("deny", false), ("local", true)] {
        let dir = tempfile::tempdir().unwrap();
        let config = support::write_config_with(
            dir.path(),
            &format!(
                "quotas:\n  store: redis\n  redis_url: \"{dead}\"\n  on_store_error: {mode}\n"
            ),
        );
        let mut pdp = Portcullis::start(&["--config", config.to_str().unwrap()]);
        let (status, body) = pdp.http_get("/readyz");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], ready, "mode {mode}: {body}");
        assert_eq!(status, if ready { 200 } else { 503 }, "mode {mode}");
        let mentioned = if ready {
            &v["warnings"]
        } else {
            &v["problems"]
        };
        assert!(
            mentioned[0]
                .as_str()
                .unwrap()
                .contains("quota store unreachable or refusing writes"),
            "mode {mode}: {body}"
        );
    }
}

/// A quota store judged down logs why, once: a paused Redis is judged down
/// by its silence, and the warning names the cause and the setting that
/// decides it (`quotas.stall_ms`). Before, the only warning was the
/// callers' "circuit breaker open", which says nothing of why (found
/// replaying a Redis Cluster failover, where the stall rule opened it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_store_judged_down_logs_the_cause() {
    let mut redis = support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config_with(
        dir.path(),
        &format!(
            "quotas:\n  store: redis\n  redis_url: \"{}\"\n",
            redis.url()
        ),
    );
    let pdp = Portcullis::start(&["--config", config.to_str().unwrap()]);
    let mut rls = RateLimitServiceClient::connect(format!("http://{}", pdp.addr()))
        .await
        .unwrap();
    let answered = rls.should_rate_limit(rls_request(1)).await.unwrap();
    assert_eq!(answered.into_inner().overall_code, Code::Ok as i32);
    assert!(!pdp.stderr().contains("judged down"), "{}", pdp.stderr());

    redis.pause();
    // Answered by the `local` fallback once Redis is judged down.
    let answered = rls.should_rate_limit(rls_request(1)).await.unwrap();
    assert_eq!(answered.into_inner().overall_code, Code::Ok as i32);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let log = loop {
        let log = pdp.stderr();
        if log.contains("judged down") || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let line = log
        .lines()
        .find(|l| l.contains("quota store judged down"))
        .unwrap_or_else(|| panic!("no warning names why the store is down: {log}"));
    // The stall rule, or, on a machine too busy to judge a silence on
    // time, the deadline's silence rule.
    assert!(
        line.contains("quotas.stall_ms") || line.contains("and none to any other call meanwhile"),
        "{line}"
    );
    redis.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_unseen_for_idle_seconds_leave_the_tracked_gauge_without_a_request() {
    let dir = tempfile::tempdir().unwrap();
    // idle_seconds 1: the server sweeps every second.
    let config = support::write_config_with(
        dir.path(),
        "anomaly:\n  interval_seconds: 1\n  idle_seconds: 1\n",
    );
    let mut pdp = Portcullis::start(&["--config", config.to_str().unwrap()]);
    let mut client = AuthorizationClient::connect(format!("http://{}", pdp.addr()))
        .await
        .unwrap();
    let alice = format!("Bearer {}", support::token("alice"));
    assert_eq!(
        status_of(&mut client, predict(&[("authorization", &alice)])).await,
        200
    );
    let mut tracked = || {
        let m = parse_metrics(&pdp.http_get("/metrics").1);
        metric(
            &m,
            "portcullis_anomaly_tracked_subjects",
            &[("subject", "principal")],
        )
    };
    assert_eq!(tracked(), 1.0);
    // Idle for 1 s, then gone by the next sweep; bounded at 10 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tracked() != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "alice still tracked 10 s after her only request"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_shows_in_metrics_and_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config_with(
        dir.path(),
        "anomaly:\n  failure_threshold: 3\n  block_seconds: 60\n",
    );
    let mut pdp = Portcullis::start(&["--config", config.to_str().unwrap()]);
    let mut client = AuthorizationClient::connect(format!("http://{}", pdp.addr()))
        .await
        .unwrap();
    // bob may not invoke: three refusals make repeated failures, and the
    // block (block_on defaults to repeated_failures) answers the fourth.
    let bob = format!("Bearer {}", support::token("bob"));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = predict(&[("authorization", &bob)]);
        statuses.push(status_of(&mut client, req).await);
    }
    assert_eq!(statuses, [403, 403, 403, 429]);
    let m = parse_metrics(&pdp.http_get("/metrics").1);
    assert_eq!(
        metric(
            &m,
            "portcullis_anomaly_events_total",
            &[("kind", "repeated_failures"), ("subject", "principal")]
        ),
        1.0
    );
    assert_eq!(metric(&m, "portcullis_anomaly_blocks_total", &[]), 1.0);
    assert_eq!(metric(&m, "portcullis_anomaly_blocked_subjects", &[]), 1.0);
    assert_eq!(
        metric(
            &m,
            "portcullis_decisions_total",
            &[("reason", "anomaly_blocked")]
        ),
        1.0
    );
    let records = auditor(&mut pdp)
        .await
        .query(as_user(
            QueryRequest {
                kind: "anomaly".into(),
                ..Default::default()
            },
            "dave",
        ))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].principal, "User::\"bob\"");
    assert_eq!(records[0].reason, "repeated_failures");
    assert_eq!(records[0].decision, "block");
    assert!(
        records[0].detail.contains("blocked for 60s"),
        "{}",
        records[0].detail
    );
}
