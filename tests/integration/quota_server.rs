//! Quotas through the gRPC server in process: RLS `ShouldRateLimit` and
//! quotas inside ext_authz `Check`, with the in-process store and with a
//! real Redis.

use std::path::Path;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use portcullis::config::Config;
use portcullis::quota::{QuotaSettings, QuotaStoreKind};

use crate::support::{
    self, check_at, http_status, Check, PolicyDir, RedisServer, TestServer, PREDICT,
};

const SERVICE_ACCOUNT: &str = "spiffe://acme.example/ns/ml/sa/batch-scorer";

/// The bundled policies with the tight test quotas over them.
fn quota_policies() -> PolicyDir {
    PolicyDir::bundled()
        .with_test_quotas()
        .with_messaging_quotas()
}

/// A server in process on `policies` with these quota settings.
async fn start(policies: &Path, quotas: QuotaSettings) -> TestServer {
    TestServer::start(Config {
        quotas,
        ..support::in_process_config(policies)
    })
    .await
}

fn redis_settings(redis: &RedisServer) -> QuotaSettings {
    QuotaSettings {
        store: QuotaStoreKind::Redis,
        redis_url: Some(redis.url()),
        timeout_ms: 500,
        ..QuotaSettings::default()
    }
}

// --- RLS -------------------------------------------------------------------

pub(crate) fn rls_request(
    domain: &str,
    descriptors: &[&[(&str, &str)]],
    hits: u32,
) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: descriptors
            .iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| Entry {
                        key: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        hits_addend: hits,
    }
}

pub(crate) async fn rls(running: &TestServer, req: RateLimitRequest) -> RateLimitResponse {
    let mut client = RateLimitServiceClient::connect(format!("http://{}", running.decision_addr))
        .await
        .unwrap();
    client.should_rate_limit(req).await.unwrap().into_inner()
}

fn header<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>, name: &str) -> Option<String> {
    headers
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_string())
}

fn rls_header(r: &RateLimitResponse, name: &str) -> Option<String> {
    header(
        r.response_headers_to_add
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_str())),
        name,
    )
}

async fn rls_suite(running: &TestServer) {
    // Two per hour per address; a descriptor without a limit is OK.
    let req = || {
        rls_request(
            "ml_api",
            &[&[("remote_address", "10.1.2.3")], &[("nothing", "here")]],
            0,
        )
    };
    for remaining in [1u32, 0] {
        let r = rls(running, req()).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses.len(), 2);
        let s = &r.statuses[0];
        assert_eq!(s.code, Code::Ok as i32);
        assert_eq!(s.limit_remaining, remaining);
        let limit = s.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.name.as_str()),
            (2, "per-address")
        );
        assert!(s.duration_until_reset.as_ref().unwrap().seconds > 0);
        assert_eq!(r.statuses[1].code, Code::Ok as i32);
        // One set of client headers per response: an OK leaves them to
        // the next layer (Check), the statuses carry the limit.
        assert!(
            r.response_headers_to_add.is_empty(),
            "{:?}",
            r.response_headers_to_add
        );
        assert!(r.raw_body.is_empty());
    }
    let r = rls(running, req()).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(r.statuses[1].code, Code::Ok as i32);
    assert_eq!(rls_header(&r, "ratelimit-limit"), Some("2".into()));
    assert_eq!(rls_header(&r, "ratelimit-remaining"), Some("0".into()));
    let retry: u64 = rls_header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=1800).contains(&retry), "{retry}");
    let body: serde_json::Value = serde_json::from_slice(&r.raw_body).unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["type"], "urn:portcullis:problem:quota_exceeded");
    assert_eq!(body["quota"]["limit"], 2);

    // hits_addend: an explicit 0 on a descriptor checks without charging;
    // the request-level value charges every descriptor.
    let mut check_only = rls_request("ml_api", &[&[("remote_address", "10.9.9.9")]], 0);
    check_only.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    for _ in 0..3 {
        let r = rls(running, check_only.clone()).await;
        assert_eq!(r.statuses[0].limit_remaining, 2);
    }
    let two = rls(
        running,
        rls_request("ml_api", &[&[("remote_address", "10.9.9.9")]], 2),
    )
    .await;
    assert_eq!(two.overall_code, Code::Ok as i32);
    assert_eq!(two.statuses[0].limit_remaining, 0);

    // Shadow mode reports but never limits; unlimited never counts.
    for _ in 0..3 {
        let r = rls(
            running,
            rls_request("ml_api", &[&[("shadowed", "x")], &[("free", "y")]], 0),
        )
        .await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert!(r.statuses.iter().all(|s| s.code == Code::Ok as i32));
    }

    // envoyproxy/ratelimit example 2 (quotas/messaging.yaml), as documented:
    // 5 marketing messages a day to a number, 100 to any number.
    let marketing = || {
        rls_request(
            "messaging",
            &[&[("message_type", "marketing"), ("to_number", "2061234567")]],
            0,
        )
    };
    for _ in 0..5 {
        assert_eq!(
            rls(running, marketing()).await.overall_code,
            Code::Ok as i32
        );
    }
    let r = rls(running, marketing()).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let any = rls(
        running,
        rls_request("messaging", &[&[("to_number", "2061234567")]], 0),
    )
    .await;
    assert_eq!(any.overall_code, Code::Ok as i32);
    assert_eq!(
        any.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        100
    );

    // An unknown domain limits nothing.
    let r = rls(running, rls_request("other", &[&[("a", "b")]], 0)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);

    // Malformed requests are errors, never an OK.
    let mut client = RateLimitServiceClient::connect(format!("http://{}", running.decision_addr))
        .await
        .unwrap();
    let err = client
        .should_rate_limit(rls_request("", &[&[("a", "b")]], 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn rls_in_process() {
    let policies = quota_policies();
    let running = start(policies.path(), QuotaSettings::default()).await;
    rls_suite(&running).await;
    let audit = running.shutdown().await.unwrap();

    // RLS decisions are in the audit trail (flushed at shutdown): every
    // refusal, and a sample of plain OKs starting with the first.
    let records = ratelimit_records(audit.path());
    assert!(!records.is_empty(), "no RLS decision records");
    assert!(records.iter().all(|r| r["kind"] == "decision"
        && r["resource"]
            .as_str()
            .is_some_and(|d| d.starts_with("RateLimitDomain::"))));
    assert!(
        records
            .iter()
            .any(|r| r["decision"] == "deny" && r["status"] == 429),
        "an over-limit RLS call is recorded as a 429 denial"
    );
    assert!(records.iter().any(|r| r["decision"] == "allow"));
}

/// The ShouldRateLimit decision records of the audit files in `dir`.
fn ratelimit_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let r: serde_json::Value = serde_json::from_str(line).unwrap();
                if r["action"] == "ratelimit" {
                    records.push(r);
                }
            }
        }
    }
    records
}

#[tokio::test]
async fn rls_ok_answers_are_sampled_and_the_trail_counts_what_it_left_out() {
    let policies = quota_policies();
    let mut config = support::in_process_config(policies.path());
    config.audit.ratelimit.ok_sample_every = 10;
    let running = TestServer::start(config).await;
    let unlimited = || rls_request("ml_api", &[&[("nothing", "here")]], 0);
    let per_address = || rls_request("ml_api", &[&[("remote_address", "10.9.9.9")]], 0);
    for _ in 0..25 {
        assert_eq!(
            rls(&running, unlimited()).await.overall_code,
            Code::Ok as i32
        );
    }
    for _ in 0..2 {
        assert_eq!(
            rls(&running, per_address()).await.overall_code,
            Code::Ok as i32
        );
    }
    let over = rls(&running, per_address()).await;
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    let unrecorded = &running.state.audit.counters().ratelimit_ok_unrecorded;
    assert_eq!(unrecorded.load(std::sync::atomic::Ordering::Relaxed), 24);
    let audit = running.shutdown().await.unwrap();

    let records = ratelimit_records(audit.path());
    let oks: Vec<u64> = records
        .iter()
        .filter(|r| r["decision"] == "allow")
        .map(|r| r["unrecorded_before"].as_u64().unwrap_or(0))
        .collect();
    // OK calls 1, 11 and 21 of 27 are recorded, each with the count of
    // plain OKs left out since the previous one; 6 are left out after the
    // last sample. The refusal is recorded whatever the rule.
    assert_eq!(oks, [0, 9, 9], "{records:?}");
    let refusals: Vec<_> = records.iter().filter(|r| r["status"] == 429).collect();
    assert_eq!(refusals.len(), 1, "{records:?}");
    assert!(refusals[0].get("unrecorded_before").is_none());
}

#[tokio::test]
async fn rls_with_redis() {
    let redis = RedisServer::start();
    let policies = quota_policies();
    let running = start(policies.path(), redis_settings(&redis)).await;
    rls_suite(&running).await;
    running.shutdown().await.unwrap();
}

// --- in Check --------------------------------------------------------------

/// A Check from the local gateway address, with the caller's mTLS
/// `principal` when it has one.
fn check_request(
    method: &str,
    path: &str,
    principal: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> CheckRequest {
    Check::new(method, path)
        .source("127.0.0.1")
        .principal(principal.unwrap_or_default())
        .headers(headers)
        .raw_body(body)
        .build()
}

/// Headers for the client: `response_headers_to_add` on an allow, the
/// denied response's headers on a refusal.
fn client_header(r: &CheckResponse, name: &str) -> Option<String> {
    let headers: Vec<_> = match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok.response_headers_to_add.clone(),
        Some(HttpResponse::DeniedResponse(d)) => d.headers.clone(),
        _ => Vec::new(),
    };
    let pairs: Vec<(String, String)> = headers
        .into_iter()
        .filter_map(|h| h.header)
        .map(|h| (h.key, h.value))
        .collect();
    header(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), name)
}

async fn check(running: &TestServer, req: CheckRequest) -> CheckResponse {
    check_at(running.decision_addr, req).await
}

async fn check_suite(running: &TestServer) {
    // Anonymous callers share one bucket of 3 an hour on /v1/status.
    for remaining in ["2", "1", "0"] {
        let r = check(running, check_request("GET", "/v1/status", None, &[], b"")).await;
        assert_eq!(http_status(&r), 200);
        assert_eq!(
            client_header(&r, "ratelimit-remaining").as_deref(),
            Some(remaining)
        );
        assert_eq!(client_header(&r, "ratelimit-limit").as_deref(), Some("3"));
    }
    let r = check(running, check_request("GET", "/v1/status", None, &[], b"")).await;
    assert_eq!(http_status(&r), 429);
    assert_eq!(r.status.as_ref().unwrap().code, 8);
    assert_eq!(
        client_header(&r, "ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert!(client_header(&r, "retry-after").is_some());
    let Some(HttpResponse::DeniedResponse(denied)) = &r.http_response else {
        unreachable!()
    };
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(body["type"], "urn:portcullis:problem:quota_exceeded");
    assert_eq!(
        client_header(&r, "content-type").as_deref(),
        Some("application/problem+json")
    );

    // Refused by policy (translate belongs to another org): never charged.
    for _ in 0..5 {
        let r = check(
            running,
            check_request(
                "POST",
                "/v1/models/translate/versions/v1:predict",
                Some(SERVICE_ACCOUNT),
                &[],
                b"",
            ),
        )
        .await;
        assert_eq!(http_status(&r), 403);
    }
    // Tokens: the body's max_tokens is the cost; a refused request charges
    // neither the token limit nor the request limit.
    let predict = |tokens: &str| {
        check_request(
            "POST",
            PREDICT,
            Some(SERVICE_ACCOUNT),
            &[("content-type", "application/json")],
            format!("{{\"features\": [\"great service\"], \"max_tokens\": {tokens}}}").as_bytes(),
        )
    };
    let r = check(running, predict("600")).await;
    assert_eq!(http_status(&r), 200, "{r:?}");
    assert_eq!(
        client_header(&r, "ratelimit-remaining").as_deref(),
        Some("2")
    );
    let r = check(running, predict("600")).await;
    assert_eq!(http_status(&r), 429);
    assert_eq!(
        client_header(&r, "ratelimit-limit").as_deref(),
        Some("1000")
    );
    assert_eq!(
        client_header(&r, "ratelimit-remaining").as_deref(),
        Some("400")
    );
    let r = check(running, predict("300")).await;
    assert_eq!(http_status(&r), 200);
    // The limit with the least left decides: 1 request of 3 (the 429 did
    // not count), not 100 tokens of 1000.
    assert_eq!(client_header(&r, "ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(
        client_header(&r, "ratelimit-remaining").as_deref(),
        Some("1")
    );
    // A cost that is not a number is refused, not a free pass: the
    // predict schema says max_tokens is an integer (422) before the quota
    // stage would call it a bad cost (400).
    let r = check(running, predict("\"lots\"")).await;
    assert_eq!(http_status(&r), 422);
    let r = check(
        running,
        check_request(
            "POST",
            PREDICT,
            Some(SERVICE_ACCOUNT),
            &[("x-max-tokens", "-5")],
            b"",
        ),
    )
    .await;
    assert_eq!(http_status(&r), 400);
}

#[tokio::test]
async fn check_quotas_in_process() {
    let policies = quota_policies();
    let running = start(policies.path(), QuotaSettings::default()).await;
    check_suite(&running).await;
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn check_quotas_with_redis() {
    let redis = RedisServer::start();
    let policies = quota_policies();
    let running = start(policies.path(), redis_settings(&redis)).await;
    check_suite(&running).await;
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn check_with_redis_down_follows_the_configured_mode() {
    let mut redis = RedisServer::start();
    redis.kill();
    let policies = quota_policies();
    for (mode, expected) in [
        (portcullis::quota::OnStoreError::Deny, 503),
        (portcullis::quota::OnStoreError::Allow, 200),
        (portcullis::quota::OnStoreError::Local, 200),
    ] {
        let settings = QuotaSettings {
            timeout_ms: 10,
            on_store_error: mode,
            ..redis_settings(&redis)
        };
        let running = start(policies.path(), settings).await;
        let r = check(&running, check_request("GET", "/v1/status", None, &[], b"")).await;
        assert_eq!(http_status(&r), expected, "mode {}", mode.as_str());
        if expected == 503 {
            assert_eq!(client_header(&r, "retry-after").as_deref(), Some("1"));
        }
        running.shutdown().await.unwrap();
    }
}

/// With `on_store_error: deny` and the store down, `ShouldRateLimit` is
/// OVER_LIMIT overall and every limited descriptor says so too (0 left);
/// its statuses were all OK, so Envoy's `x-ratelimit-*` headers, built
/// from them, told the refused client it had calls left.
#[tokio::test]
async fn rls_with_the_store_down_in_deny_mode_refuses_every_limited_descriptor() {
    let mut redis = RedisServer::start();
    redis.kill();
    let settings = QuotaSettings {
        timeout_ms: 10,
        on_store_error: portcullis::quota::OnStoreError::Deny,
        ..redis_settings(&redis)
    };
    let policies = quota_policies();
    let running = start(policies.path(), settings).await;
    let r = rls(
        &running,
        rls_request(
            "ml_api",
            &[&[("remote_address", "10.1.2.3")], &[("nothing", "here")]],
            1,
        ),
    )
    .await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let limited = &r.statuses[0];
    assert_eq!(limited.code, Code::OverLimit as i32, "{limited:?}");
    assert_eq!(limited.limit_remaining, 0);
    assert_eq!(
        limited.current_limit.as_ref().map(|l| l.name.as_str()),
        Some("per-address")
    );
    // A descriptor no limit applies to is not refused by one.
    assert_eq!(r.statuses[1].code, Code::Ok as i32);
    assert_eq!(rls_header(&r, "retry-after").as_deref(), Some("1"));
    running.shutdown().await.unwrap();
}

/// A Redis that answers `PING` but refuses writes (`maxmemory` reached
/// with `noeviction`) refuses every charge: with `on_store_error: deny`
/// every `Check` is a 503, and readiness says so (it stayed ready on the
/// `PING`).
#[tokio::test]
async fn a_redis_refusing_writes_makes_us_unready_when_its_failure_mode_denies() {
    use portcullis::app::health;
    let redis = RedisServer::start();
    let settings = QuotaSettings {
        on_store_error: portcullis::quota::OnStoreError::Deny,
        ..redis_settings(&redis)
    };
    let policies = quota_policies();
    let running = start(policies.path(), settings).await;
    let status = health::check(&running.state).await;
    assert!(status.ready, "{status:?}");
    for setting in ["maxmemory-policy noeviction", "maxmemory 1"] {
        let answer = redis.command(&format!("CONFIG SET {setting}\r\n"));
        assert_eq!(answer.as_deref(), Some("+OK\r\n"), "{setting}");
    }
    let r = check(&running, check_request("GET", "/v1/status", None, &[], b"")).await;
    assert_eq!(http_status(&r), 503);
    let status = health::check(&running.state).await;
    assert!(!status.ready, "{status:?}");
    assert!(
        status.problems[0].starts_with("quota store unreachable or refusing writes")
            && status.problems[0].contains("OOM"),
        "{status:?}"
    );
    running.shutdown().await.unwrap();
}

// --- configuration ---------------------------------------------------------

#[test]
fn quota_settings_are_checked_completely() {
    let path = Path::new("portcullis.yaml");
    let config = Config::parse(
        "quotas:\n  store: redis\n  redis_url: redis://127.0.0.1:6379\n  on_store_error: deny\n  replicas: 3\n",
        path,
    )
    .unwrap();
    config.check(path).unwrap();
    assert_eq!(config.quotas.replicas, 3);
    // The URL may hold a password: Debug never shows it.
    assert!(!format!("{:?}", config.quotas).contains("6379"));

    let bad = Config::parse(
        "quotas:\n  store: redis\n  timeout_ms: 0\n  stall_ms: 0\n  replicas: 0\n",
        path,
    )
    .unwrap();
    let err = bad.check(path).unwrap_err().to_string();
    for field in [
        "quotas.redis_url",
        "quotas.timeout_ms",
        "quotas.stall_ms: between 1 and 1000 (got 0",
        "quotas.replicas",
    ] {
        assert!(err.contains(field), "{err}");
    }
    let unknown = Config::parse("quotas:\n  strore: redis\n", path).unwrap_err();
    assert!(unknown.to_string().contains("strore"), "{unknown}");
}

#[test]
fn bad_quota_files_are_reported_with_file_and_line() {
    let policies = quota_policies();
    policies.write(
        "quotas/broken.yaml",
        "domain: ml_api\ndescriptors:\n  - key: a\n    value: b\n  - key: a\n    value: b\n",
    );
    let errors = portcullis::policy::snapshot::Snapshot::load(policies.path()).unwrap_err();
    let text: Vec<String> = errors
        .errors
        .iter()
        .map(|e| format!("{}:{}: {}", e.file, e.line.unwrap_or(0), e.message))
        .collect();
    // A second file for a configured domain merges into it
    // (envoyproxy/ratelimit's MERGE_DOMAIN_CONFIG); what it repeats is
    // still refused, in the file and at the line that repeats it.
    assert_eq!(
        text,
        ["quotas/broken.yaml:5: duplicate descriptor composite key 'ml_api.a_b'"]
    );
    policies.write(
        "quotas/broken.yaml",
        "domain: other\ndescriptors:\n  - key: a\n    value: b\n  - key: a\n    value: b\n",
    );
    let errors = portcullis::policy::snapshot::Snapshot::load(policies.path()).unwrap_err();
    assert_eq!(errors.errors[0].file, "quotas/broken.yaml");
    assert_eq!(errors.errors[0].line, Some(5));
    assert!(errors.errors[0]
        .message
        .contains("duplicate descriptor composite key"));
}
