//! OAuth2 token introspection (RFC 7662) against the test identity
//! provider's endpoint: active, inactive, slow and down; answers cached.

use std::time::{Duration, Instant};

use portcullis::authn::config::{AuthnConfig, IntrospectionConfig};
use portcullis::authn::Authenticator;
use portcullis::policy::snapshot::Snapshot;
use portcullis::request::AccessRequest;
use serde_json::json;

use crate::support::{self, decide, now, policies_dir, IdentityProvider, INTROSPECTION_CLIENT};

fn authenticator(idp: &IdentityProvider, dir: &std::path::Path) -> Authenticator {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, format!("{}\n", INTROSPECTION_CLIENT.1)).unwrap();
    Authenticator::new(&AuthnConfig {
        introspection: Some(IntrospectionConfig {
            endpoint: idp.introspection_url(),
            client_id: INTROSPECTION_CLIENT.0.into(),
            client_secret_file: Some(secret),
            timeout_ms: 100,
            negative_cache_seconds: 60,
            issuer: Some(idp.issuer()),
            audiences: vec!["portcullis".into()],
            org_claim: Some("org".into()),
            ..IntrospectionConfig::default()
        }),
        ..AuthnConfig::default()
    })
    .unwrap()
}

fn predict(token: &str) -> AccessRequest {
    let mut r = support::predict_access();
    r.headers
        .insert("authorization".into(), format!("Bearer {token}"));
    r
}

#[tokio::test]
async fn introspection_active_inactive_slow_and_down() {
    let idp = IdentityProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let authn = authenticator(&idp, dir.path());
    let s = Snapshot::load(&policies_dir()).unwrap();
    idp.set_introspection(
        "opaque-alice",
        json!({"active": true, "sub": "alice", "org": "acme", "iss": idp.issuer(),
               "aud": "portcullis", "scope": "models:invoke", "exp": now() + 300}),
    );

    // Active: allowed as User::"alice"; the second call is served from the
    // cache.
    let d = decide(&s, &authn, &predict("opaque-alice")).await;
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(d.auth_method, Some("introspection"));
    assert_eq!(d.principal.as_deref(), Some(r#"User::"alice""#));
    let d = decide(&s, &authn, &predict("opaque-alice")).await;
    assert_eq!(d.status, 200);
    assert_eq!(idp.hits("/introspect"), 1, "active answers are cached");

    // Inactive (unknown to the server): 401, and cached briefly.
    for _ in 0..3 {
        let d = decide(&s, &authn, &predict("opaque-revoked")).await;
        assert_eq!(d.status, 401, "{d:?}");
        assert_eq!(d.errors, vec!["authentication: token_inactive"]);
    }
    assert_eq!(idp.hits("/introspect"), 2, "inactive answers are cached");

    // Slow: answered within the budget as a 503-class denial, never a hang.
    idp.set_introspection_delay(Duration::from_millis(1_000));
    let started = Instant::now();
    let d = decide(&s, &authn, &predict("opaque-slow")).await;
    assert_eq!(d.status, 503, "{d:?}");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "took {:?}",
        started.elapsed()
    );
    idp.set_introspection_delay(Duration::ZERO);

    // Down: 503 too; a cached active token keeps working.
    idp.set_down(true);
    let d = decide(&s, &authn, &predict("opaque-new")).await;
    assert_eq!(d.status, 503, "{d:?}");
    assert_eq!(d.errors, vec!["authentication: introspection_unavailable"]);
    let d = decide(&s, &authn, &predict("opaque-alice")).await;
    assert_eq!(d.status, 200);
}

#[tokio::test]
async fn wrong_client_credentials_are_an_unavailable_endpoint_not_an_allow() {
    let idp = IdentityProvider::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), "wrong").unwrap();
    let authn = Authenticator::new(&AuthnConfig {
        introspection: Some(IntrospectionConfig {
            endpoint: idp.introspection_url(),
            client_id: INTROSPECTION_CLIENT.0.into(),
            client_secret_file: Some(dir.path().join("client-secret")),
            ..IntrospectionConfig::default()
        }),
        ..AuthnConfig::default()
    })
    .unwrap();
    idp.set_introspection(
        "opaque-alice",
        json!({"active": true, "sub": "alice", "exp": now() + 300}),
    );
    let s = Snapshot::load(&policies_dir()).unwrap();
    let d = decide(&s, &authn, &predict("opaque-alice")).await;
    assert_eq!(d.status, 503, "{d:?}");
}
