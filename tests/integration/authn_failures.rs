//! Repeated authentication failures block the source for a cool-down:
//! with a controllable clock at the authenticator, and through the
//! ext_authz adapter as a 429 with Retry-After.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::SocketAddress;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use portcullis::authn::{Authentication, Authenticator};
use portcullis::config::{AuthnConfig, FailureConfig, IssuerConfig};
use portcullis::extauthz::AuthzService;
use portcullis::reload::PolicyStore;
use portcullis::request::AccessRequest;
use portcullis::server::State;
use support::{claims, mint, policies_dir, Key, AUDIENCE, ISSUER};

fn config() -> AuthnConfig {
    let issuer: IssuerConfig = serde_yaml_ng::from_str(&format!(
        "issuer: \"{ISSUER}\"\naudiences: [\"{AUDIENCE}\"]\njwks_file: \"{}\"\norg_claim: org\n",
        support::fixture("keys/test-issuer.jwks.json").display()
    ))
    .unwrap();
    AuthnConfig {
        jwt: vec![issuer],
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
    let mut r = AccessRequest::for_test("POST", "/v1/models/sentiment/versions/v2:predict")
        .with_json(&serde_json::json!({"features": ["great service"]}));
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
    let audit = support::TestAudit::start();
    let service = AuthzService::new(Arc::new(State {
        policies: Arc::new(PolicyStore::load(&policies_dir()).unwrap()),
        authenticator: Authenticator::new(&config()).unwrap(),
        audit: audit.sink.clone(),
        quotas: portcullis::quota::Quotas::in_process(1024),
        anomalies: None,
        residency: Default::default(),
    }));
    let forged = mint(claims("alice", "acme"), Key::UntrustedEs256);
    let check = |token: &str| CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                    address: Some(Address::SocketAddress(SocketAddress {
                        address: "192.0.2.7".into(),
                        port_specifier: Some(PortSpecifier::PortValue(40000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v1/models/sentiment/versions/v2:predict".into(),
                    host: "api.test".into(),
                    headers: [
                        ("authorization".to_string(), format!("Bearer {token}")),
                        ("content-type".to_string(), "application/json".to_string()),
                    ]
                    .into_iter()
                    .collect(),
                    raw_body: br#"{"features": ["great service"]}"#.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..4 {
        let resp = service
            .check(tonic::Request::new(check(&forged)))
            .await
            .unwrap()
            .into_inner();
        let Some(HttpResponse::DeniedResponse(denied)) = resp.http_response else {
            panic!("denied expected")
        };
        statuses.push(denied.status.as_ref().unwrap().code);
        last = Some(denied);
    }
    assert_eq!(statuses, [401, 401, 401, 429]);
    let denied = last.unwrap();
    let retry_after = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "retry-after")
        .map(|h| h.value.parse::<u64>().unwrap())
        .expect("Retry-After on 429");
    assert!((119..=120).contains(&retry_after), "{retry_after}");
    let problem: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(problem["status"], 429);
}
