//! Repeated authentication failures block the source for a cool-down:
//! with a controllable clock at the authenticator, and through the
//! ext_authz adapter as a 429 with Retry-After.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use portcullis::authn::config::{AuthnConfig, FailureConfig};
use portcullis::authn::{Authentication, Authenticator};
use portcullis::request::AccessRequest;

use crate::support::{self, claims, denied_header, mint, Check, Key};

fn config() -> AuthnConfig {
    AuthnConfig {
        jwt: vec![support::fixture_issuer()],
        failures: FailureConfig {
            enabled: true,
            threshold: 3,
            window_seconds: 60,
            block_seconds: 120,
            max_tracked: 1000,
            ..FailureConfig::default()
        },
        ..AuthnConfig::default()
    }
}

fn from(ip: [u8; 4], token: &str) -> AccessRequest {
    let mut r = support::predict_access();
    r.source_ip = Some(ip.into());
    r.headers
        .insert("authorization".into(), format!("Bearer {token}"));
    r
}

fn epoch() -> u64 {
    support::now() as u64
}

#[tokio::test]
async fn source_is_blocked_after_repeated_failures_and_unblocked_after_the_cool_down() {
    let authn = Authenticator::new(&config()).unwrap();
    let forged = mint(claims("alice", "acme"), Key::UntrustedEs256);
    let good = mint(claims("alice", "acme"), Key::Es256);
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);

    for s in 0..3 {
        let r = authn
            .authenticate_at(&from([10, 0, 0, 1], &forged), epoch(), at(s))
            .await;
        assert!(matches!(r, Authentication::Rejected(_)), "{r:?}");
    }
    // Blocked: even a good token from that source waits out the cool-down.
    match authn
        .authenticate_at(&from([10, 0, 0, 1], &good), epoch(), at(3))
        .await
    {
        Authentication::Blocked { retry_after } => {
            assert_eq!(retry_after, Duration::from_secs(119))
        }
        other => panic!("expected a block, got {other:?}"),
    }
    // Another source is not affected.
    assert!(matches!(
        authn
            .authenticate_at(&from([10, 0, 0, 2], &good), epoch(), at(3))
            .await,
        Authentication::Authenticated(_)
    ));
    // After the cool-down the source may try again.
    assert!(matches!(
        authn
            .authenticate_at(&from([10, 0, 0, 1], &good), epoch(), at(2 + 120))
            .await,
        Authentication::Authenticated(_)
    ));
}

#[tokio::test]
async fn a_blocked_source_gets_429_with_retry_after_through_ext_authz() {
    let (service, _audit) = support::authz_service(Authenticator::new(&config()).unwrap(), None);
    let forged = mint(claims("alice", "acme"), Key::UntrustedEs256);
    let check = |token: &str| {
        Check::predict()
            .bearer(token)
            .source_port("192.0.2.7", 40000)
            .build()
    };
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..4 {
        let resp = service
            .check(tonic::Request::new(check(&forged)))
            .await
            .unwrap()
            .into_inner();
        statuses.push(support::http_status(&resp));
        last = Some(resp);
    }
    assert_eq!(statuses, [401, 401, 401, 429]);
    let last = last.unwrap();
    let retry_after = denied_header(&last, "retry-after")
        .map(|v| v.parse::<u64>().unwrap())
        .expect("Retry-After on 429");
    assert!((119..=120).contains(&retry_after), "{retry_after}");
    let Some(HttpResponse::DeniedResponse(denied)) = &last.http_response else {
        panic!("denied expected")
    };
    let problem: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(problem["status"], 429);
}
