//! Anomaly detection: through ext_authz in process with a clock the test
//! moves (repeated failures become an event, an audit record and a block
//! that expires on time; the risk reaches the policies), and synthetic
//! loads against the detector (a surge is flagged within bounded simulated
//! time, steady traffic from many principals raises nothing). The figures
//! are printed; run with `--nocapture` to see them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use portcullis::adapters::extauthz::AuthzService;
use portcullis::anomaly::{AnomalyConfig, AnomalyKind, Detector, Observed};
use portcullis::audit::{AuditRecord, Kind};
use portcullis::authn::Authenticator;
use portcullis::time::ManualClock;

use crate::support::{self, claims, denied_header, http_status, mint, Check, Key};

fn authenticator() -> Authenticator {
    let dir = tempfile::tempdir().unwrap();
    let config = portcullis::config::Config::load(&support::write_config(dir.path())).unwrap();
    Authenticator::new(&config.authentication).unwrap()
}

fn service(config: AnomalyConfig) -> (AuthzService, support::TestAudit, Arc<ManualClock>) {
    let clock = ManualClock::at(1_800_000_000_000_000);
    let detector = Detector::new(&config, clock.clone());
    let (service, audit) = support::authz_service(authenticator(), Some(Arc::new(detector)));
    (service, audit, clock)
}

/// A predict call with `token` from `source` (port 40000).
fn predict(token: &str, source: &str) -> CheckRequest {
    Check::predict()
        .bearer(token)
        .source_port(source, 40000)
        .build()
}

/// Status, Retry-After and the problem body (empty when allowed).
async fn ask(service: &AuthzService, req: CheckRequest) -> (u32, Option<u64>, String) {
    let resp = service
        .check(tonic::Request::new(req))
        .await
        .unwrap()
        .into_inner();
    let retry = denied_header(&resp, "retry-after").map(|v| v.parse().unwrap());
    let body = match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d.body.clone(),
        _ => String::new(),
    };
    (u32::from(http_status(&resp)), retry, body)
}

/// Written audit records of kind `anomaly`, waiting for at least `n`.
async fn anomaly_records(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<AuditRecord>>,
    n: usize,
) -> Vec<AuditRecord> {
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while found.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(r)) if r.kind == Kind::Anomaly => found.push((*r).clone()),
            Ok(Ok(_)) => {}
            other => panic!("waiting for {n} anomaly records, got {found:?}; then {other:?}"),
        }
    }
    found
}

#[tokio::test]
async fn repeated_forbidden_requests_are_an_audited_event_and_a_block_that_expires_on_time() {
    let (service, audit, clock) = service(AnomalyConfig {
        failure_threshold: 5,
        failure_window_seconds: 60,
        block_seconds: 90,
        block_on: vec![AnomalyKind::RepeatedFailures],
        ..AnomalyConfig::default()
    });
    let mut records = audit.sink.subscribe();
    // bob is a viewer: invoking is forbidden. Five tries, one a second.
    let bob = support::token("bob");
    for _ in 0..5 {
        assert_eq!(ask(&service, predict(&bob, "192.0.2.50")).await.0, 403);
        clock.advance(Duration::from_secs(1));
    }
    // The fifth crossed the threshold for bob and for his address.
    let found = anomaly_records(&mut records, 2).await;
    let principals: Vec<_> = found.iter().map(|r| r.principal.as_str()).collect();
    assert!(principals.contains(&"User::\"bob\""), "{found:?}");
    let sources: Vec<_> = found.iter().map(|r| r.source_ip.as_str()).collect();
    assert!(sources.contains(&"192.0.2.50"), "{found:?}");
    for r in &found {
        assert_eq!(r.reason, "repeated_failures");
        assert_eq!(r.decision, "block");
        assert!(r.detail.contains("5 failed attempts"), "{}", r.detail);
    }
    // Blocked: 429 with the time left (90 s from the fifth try, 1 s ago).
    let (status, retry, body) = ask(&service, predict(&bob, "192.0.2.50")).await;
    assert_eq!((status, retry), (429, Some(89)), "{body}");
    assert!(body.contains("anomaly_blocked"), "{body}");
    // The address is blocked for anyone, before credentials are checked;
    // alice elsewhere is not.
    let alice = support::token("alice");
    assert_eq!(ask(&service, predict(&alice, "192.0.2.50")).await.0, 429);
    let elsewhere = ask(&service, predict(&alice, "192.0.2.51")).await;
    assert_eq!(elsewhere.0, 200, "{elsewhere:?}");
    // One second before the block ends it still holds; at its end it is gone.
    clock.advance(Duration::from_secs(88));
    assert_eq!(ask(&service, predict(&bob, "192.0.2.50")).await.1, Some(1));
    clock.advance(Duration::from_secs(1));
    assert_eq!(ask(&service, predict(&bob, "192.0.2.50")).await.0, 403);
    // The address stays risky (risk_seconds, 300 s, outlast the block): the
    // policies ask alice for MFA there until it passes.
    let (status, _, body) = ask(&service, predict(&alice, "192.0.2.50")).await;
    assert_eq!(status, 403, "{body}");
    clock.advance(Duration::from_secs(300));
    assert_eq!(ask(&service, predict(&alice, "192.0.2.50")).await.0, 200);
}

#[tokio::test]
async fn while_a_source_is_risky_the_policies_ask_its_callers_for_mfa() {
    let (service, audit, clock) = service(AnomalyConfig {
        failure_threshold: 5,
        risk_seconds: 300,
        block_seconds: 0,
        ..AnomalyConfig::default()
    });
    let mut records = audit.sink.subscribe();
    // Five forged tokens from one address: repeated authentication failures.
    let forged = mint(claims("alice", "acme"), Key::UntrustedEs256);
    for _ in 0..5 {
        assert_eq!(ask(&service, predict(&forged, "198.51.100.7")).await.0, 401);
    }
    let found = anomaly_records(&mut records, 1).await;
    assert_eq!(found[0].source_ip, "198.51.100.7");
    assert_eq!(found[0].decision, "", "no block configured");
    // alice's valid token from that address now meets the risk policy...
    let alice = support::token("alice");
    let (status, _, body) = ask(&service, predict(&alice, "198.51.100.7")).await;
    assert_eq!(status, 403, "{body}");
    // ...but not from her usual address, and not once the risk has passed.
    assert_eq!(ask(&service, predict(&alice, "198.51.100.8")).await.0, 200);
    clock.advance(Duration::from_secs(301));
    assert_eq!(ask(&service, predict(&alice, "198.51.100.7")).await.0, 200);
}

#[tokio::test]
async fn callers_without_credentials_are_watched_by_address_not_as_one_principal() {
    let (service, audit, _clock) = service(AnomalyConfig {
        new_subject_max_requests: 50,
        min_requests: 50,
        failure_threshold: 3,
        block_seconds: 60,
        block_on: vec![AnomalyKind::RateSurge],
        ..AnomalyConfig::default()
    });
    let mut records = audit.sink.subscribe();
    // 80 anonymous status reads from 80 addresses: together past the
    // surge threshold, each far below it. Nobody is flagged or blocked.
    for i in 0..80u32 {
        let req = Check::get("/v1/status")
            .source_port(&format!("10.0.0.{}", i + 1), 40000)
            .build();
        let (status, _, body) = ask(&service, req).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    // A sentinel anomaly: the first anomaly record written must be it.
    let forged = mint(claims("alice", "acme"), Key::UntrustedEs256);
    for _ in 0..3 {
        assert_eq!(ask(&service, predict(&forged, "192.0.2.99")).await.0, 401);
    }
    let first = anomaly_records(&mut records, 1).await;
    assert_eq!(first[0].source_ip, "192.0.2.99", "{first:?}");
    assert_eq!(first[0].reason, "repeated_failures");
}

// ---------------------------------------------------------------------------
// Synthetic loads against the detector (simulated time)
// ---------------------------------------------------------------------------

/// xorshift64*: a seeded generator, so the loads are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// An exponential inter-arrival time for `rate` per second, in µs.
    fn gap_us(&mut self, rate: f64) -> u64 {
        ((-self.unit().ln() / rate) * 1e6) as u64 + 1
    }
}

/// Steady Poisson traffic from `principals` callers (rates spread evenly
/// over `rates` per second) for `seconds` of simulated time, merged in time
/// order; `surge` optionally makes one more caller jump from 5/s to 50/s at
/// a given second. Returns (requests, events, first surge event time after
/// the surge began, in seconds).
fn simulate(
    principals: usize,
    rates: (f64, f64),
    seconds: u64,
    surge: Option<f64>,
    seed: u64,
) -> (u64, Vec<portcullis::anomaly::AnomalyEvent>, Option<f64>) {
    let start_us = 1_800_000_000_000_000u64;
    let clock = ManualClock::at(start_us);
    let detector = Detector::new(&AnomalyConfig::default(), clock.clone());
    let mut rng = Rng(seed);
    let names: Vec<String> = (0..=principals)
        .map(|i| format!("User::\"u{i}\""))
        .collect();
    let mut rate: Vec<f64> = (0..principals)
        .map(|i| rates.0 + (rates.1 - rates.0) * i as f64 / principals.max(2) as f64)
        .collect();
    let attacker = principals;
    rate.push(if surge.is_some() { 5.0 } else { 0.0 });
    let end_us = start_us + seconds * 1_000_000;
    // Next arrival per caller, in a heap ordered by time.
    let mut heap = std::collections::BinaryHeap::new();
    for (i, r) in rate.iter().enumerate() {
        if *r > 0.0 {
            heap.push(std::cmp::Reverse((start_us + rng.gap_us(*r), i)));
        }
    }
    let surge_at = surge.map(|s| start_us + (s * 1e6) as u64);
    let (mut requests, mut events, mut detected) = (0u64, Vec::new(), None);
    while let Some(std::cmp::Reverse((at, i))) = heap.pop() {
        if at >= end_us {
            break;
        }
        clock.advance(Duration::from_micros(at - clock_now(&clock)));
        requests += 1;
        let found = detector.observe(Some(&names[i]), None, Observed::Allowed);
        if i == attacker && detected.is_none() && !found.is_empty() {
            if let Some(s) = surge_at {
                if at >= s {
                    detected = Some((at - s) as f64 / 1e6);
                }
            }
        }
        events.extend(found);
        let r = match surge_at {
            Some(s) if i == attacker && at >= s => 50.0,
            _ => rate[i],
        };
        heap.push(std::cmp::Reverse((at + rng.gap_us(r), i)));
    }
    (requests, events, detected)
}

fn clock_now(clock: &ManualClock) -> u64 {
    use portcullis::time::Clock;
    clock.now_us()
}

#[test]
fn steady_traffic_from_many_principals_raises_no_anomaly() {
    // 200 callers between 0.5 and 20 requests a second (5 to 200 per
    // 10 s interval: most above the 50-request floor), for 30 minutes.
    let (requests, events, _) = simulate(200, (0.5, 20.0), 1_800, None, 7);
    let intervals = 200 * 180;
    println!(
        "steady load: {requests} requests, 200 principals x 180 intervals = {intervals} principal-intervals, {} anomaly events, false-positive rate {:.2e} per principal-interval",
        events.len(),
        events.len() as f64 / intervals as f64
    );
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn a_surge_from_one_principal_is_flagged_within_bounded_simulated_time() {
    // One caller jumps from 5/s to 50/s among 50 steady callers; the surge
    // starts at different points of the 10 s interval.
    let mut times = Vec::new();
    for (k, start) in [600.0, 602.5, 605.0, 607.5, 609.9].iter().enumerate() {
        let (_, events, detected) = simulate(50, (0.5, 20.0), 660, Some(*start), 11 + k as u64);
        let detected =
            detected.unwrap_or_else(|| panic!("surge at {start}s not flagged: {events:?}"));
        let others: Vec<_> = events
            .iter()
            .filter(|e| {
                e.subject != portcullis::anomaly::Subject::Principal("User::\"u50\"".into())
            })
            .collect();
        assert!(others.is_empty(), "steady callers flagged: {others:?}");
        times.push(detected);
    }
    let max = times.iter().cloned().fold(0.0, f64::max);
    println!("surge 5/s -> 50/s: detected after {times:?} s (max {max:.2} s) of simulated time");
    // Bound: the threshold (about mean + 6 sd = 92 requests) is reached
    // within one interval at 50/s, plus at most one interval boundary.
    assert!(max <= 10.0, "{times:?}");
}

#[test]
fn the_detector_forgets_nothing_it_needs_for_a_source() {
    // Sources are tracked like principals: a surge from one address.
    let clock = ManualClock::at(1_800_000_000_000_000);
    let detector = Detector::new(&AnomalyConfig::default(), clock.clone());
    let ip: IpAddr = "203.0.113.9".parse().unwrap();
    for _ in 0..600 {
        assert!(detector
            .observe(None, Some(ip), Observed::Allowed)
            .is_empty());
        clock.advance(Duration::from_millis(200));
    }
    let mut events = Vec::new();
    for _ in 0..200 {
        events.extend(detector.observe(None, Some(ip), Observed::Allowed));
        clock.advance(Duration::from_millis(10));
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, AnomalyKind::RateSurge);
}

/// Issue 17: with a Redis, anomaly blocks are shared. Two replicas (servers
/// in process) share one `redis-server`: repeated failures on the first
/// block the caller and its address on the second too, within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_imposed_on_one_replica_holds_on_another() {
    let redis = support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = portcullis::config::Config::load(&support::write_config(dir.path())).unwrap();
    config.anomaly = AnomalyConfig {
        enabled: true,
        failure_threshold: 3,
        failure_window_seconds: 60,
        block_seconds: 60,
        block_on: vec![AnomalyKind::RepeatedFailures],
        ..AnomalyConfig::default()
    };
    config.quotas.store = portcullis::quota::QuotaStoreKind::Redis;
    config.quotas.redis_url = Some(redis.url());
    let first = support::TestServer::start(config.clone()).await;
    let second = support::TestServer::start(config).await;
    let status =
        |r: envoy_types::pb::envoy::service::auth::v3::CheckResponse| u32::from(http_status(&r));
    let bob = support::token("bob");
    let alice = support::token("alice");
    assert_eq!(
        status(support::check_at(second.decision_addr, predict(&alice, "192.0.2.60")).await),
        200
    );
    for _ in 0..3 {
        let r = support::check_at(first.decision_addr, predict(&bob, "192.0.2.60")).await;
        assert_eq!(status(r), 403);
    }
    // Blocked on the first at once; on the second once it has read the
    // shared blocks (four times a second).
    let r = support::check_at(first.decision_addr, predict(&bob, "192.0.2.60")).await;
    assert_eq!(status(r), 429);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let r = support::check_at(second.decision_addr, predict(&alice, "192.0.2.60")).await;
        if status(r) == 429 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second replica never saw the address's block"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = support::check_at(second.decision_addr, predict(&bob, "192.0.2.61")).await;
    assert_eq!(
        status(r),
        429,
        "bob is blocked everywhere, from any address"
    );
    // The set of blocks expires with its longest block.
    for (k, ttl) in redis.ttls() {
        assert!(ttl > 0, "{k} has no TTL");
    }
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}
