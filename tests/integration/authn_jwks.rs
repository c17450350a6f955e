//! Remote JWKS through the real server in process: key rotation at the
//! identity provider is picked up without a restart, the provider going down
//! does not break tokens signed by cached keys, keys past the maximum
//! staleness are refused (503) and readiness reports it, and a provider
//! unreachable at startup leaves the Authorization service NOT_SERVING
//! until it answers. A key set holding keys that cannot verify tokens
//! (Keycloak's RSA-OAEP encryption key, an `oct` key) is used for the keys
//! that can, at start and at every refresh, and each skipped key is counted
//! once. Waits poll with deadlines; no logic sleeps.

use std::time::{Duration, Instant};

use serde_json::json;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::support::{
    self, check_at, http_status, now, sign_raw_es256, Check, IdentityProvider, TestServer,
};

const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

async fn start(idp: &IdentityProvider, max_staleness_seconds: u64) -> TestServer {
    let yaml = format!(
        r#"{head}authentication:
  jwks:
    fetch_timeout_ms: 500
    min_refresh_seconds: 1
    max_refresh_seconds: 1
    retry_seconds: 1
    unknown_kid_refetch_seconds: 1
    max_staleness_seconds: {max_staleness_seconds}
  jwt:
    - issuer: "{issuer}"
      audiences: [portcullis]
      jwks_url: "{jwks}"
      algorithms: [ES256]
      org_claim: org
"#,
        head = support::server_yaml(),
        issuer = idp.issuer(),
        jwks = idp.jwks_url(),
    );
    TestServer::start(support::parse_config(&yaml, "jwks.yaml")).await
}

/// A fresh token (unique `jti`, so the verified-token cache never answers)
/// signed with a fixture key.
fn token(idp: &IdentityProvider, kid: &str, pem: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let claims = json!({"iss": idp.issuer(), "aud": "portcullis", "sub": "alice",
        "org": "acme", "iat": now(), "exp": now() + 300, "jti": format!("t{n}")});
    sign_raw_es256(
        &json!({"alg": "ES256", "kid": kid}).to_string(),
        &claims.to_string(),
        pem,
    )
}

async fn status(running: &TestServer, token: String) -> u16 {
    let request = Check::predict().bearer(&token).build();
    http_status(&check_at(running.decision_addr, request).await)
}

async fn health(running: &TestServer) -> i32 {
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", running.decision_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest {
            service: AUTHZ_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// Polls `probe` until it returns `want` or `within` passes.
async fn eventually<F, Fut, T>(within: Duration, want: T, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: PartialEq + Copy + std::fmt::Debug,
{
    let deadline = Instant::now() + within;
    loop {
        let got = probe().await;
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rotation_is_picked_up_and_cached_keys_outlive_an_outage() {
    let idp = IdentityProvider::start();
    let running = start(&idp, 4).await;
    assert_eq!(
        eventually(Duration::from_secs(5), SERVING, || health(&running)).await,
        SERVING
    );
    assert_eq!(
        status(&running, token(&idp, "test-es256", "test-es256.pem")).await,
        200
    );

    // Rotation: the provider now publishes only the new key.
    idp.set_keys(&["keys/rotated-issuer.jwks.json"]);
    let rotated = || token(&idp, "rotated-es256", "rotated-es256.pem");
    assert_eq!(
        eventually(Duration::from_secs(5), 200, || status(&running, rotated())).await,
        200,
        "a token signed with the rotated-in key is accepted without a restart"
    );
    // The old key is gone from the provider, and from us after a refresh.
    assert_eq!(
        eventually(Duration::from_secs(5), 401, || status(
            &running,
            token(&idp, "test-es256", "test-es256.pem")
        ))
        .await,
        401,
        "a key rotated out is refused"
    );

    // The provider goes down: cached keys keep working...
    idp.set_down(true);
    let outage = Instant::now();
    for _ in 0..5 {
        assert_eq!(status(&running, rotated()).await, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(health(&running).await, SERVING);
    // ...up to the maximum staleness; then the issuer's tokens get a 503
    // and readiness reports it.
    assert_eq!(
        eventually(Duration::from_secs(8), 503, || status(&running, rotated())).await,
        503
    );
    assert!(outage.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        eventually(Duration::from_secs(3), NOT_SERVING, || health(&running)).await,
        NOT_SERVING
    );

    // The provider comes back: serving again, without a restart.
    idp.set_down(false);
    assert_eq!(
        eventually(Duration::from_secs(5), SERVING, || health(&running)).await,
        SERVING
    );
    assert_eq!(status(&running, rotated()).await, 200);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn provider_unreachable_at_startup_means_not_ready() {
    let idp = IdentityProvider::start();
    idp.set_down(true);
    let running = start(&idp, 60).await;
    assert_eq!(health(&running).await, NOT_SERVING);
    assert_eq!(
        status(&running, token(&idp, "test-es256", "test-es256.pem")).await,
        503,
        "no keys yet: refused as unavailable, not as a bad token"
    );
    idp.set_down(false);
    assert_eq!(
        eventually(Duration::from_secs(5), SERVING, || health(&running)).await,
        SERVING
    );
    assert_eq!(
        status(&running, token(&idp, "test-es256", "test-es256.pem")).await,
        200
    );
    running.shutdown().await.unwrap();
}

/// Key `index` of a fixture JWKS file.
fn fixture_key(file: &str, index: usize) -> serde_json::Value {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(support::fixture(file)).unwrap()).unwrap();
    doc["keys"][index].clone()
}

/// What Keycloak publishes next to its signing keys by default: an RSA
/// key for encrypting to it.
fn rsa_oaep_encryption_key(kid: &str) -> serde_json::Value {
    let mut key = fixture_key("keys/test-issuer.jwks.json", 1);
    key["kid"] = json!(kid);
    key["alg"] = json!("RSA-OAEP");
    key["use"] = json!("enc");
    key
}

/// `portcullis_jwks_keys_skipped_total` for `issuer` and `reason`.
async fn skipped(running: &TestServer, issuer: &str, reason: &str) -> f64 {
    let addr = running.http_addr;
    let (status, text) = tokio::task::spawn_blocking(move || support::http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    support::metric(
        &support::parse_metrics(&text),
        "portcullis_jwks_keys_skipped_total",
        &[("issuer", issuer), ("reason", reason)],
    )
}

#[tokio::test]
async fn jwks_url_with_an_rsa_oaep_encryption_key_is_ready_and_verifies_es256_tokens() {
    let idp = IdentityProvider::start();
    idp.set_jwks(json!({"keys": [
        rsa_oaep_encryption_key("kc-enc"),
        fixture_key("keys/test-issuer.jwks.json", 0),
    ]}));
    let running = start(&idp, 60).await;
    assert_eq!(
        eventually(Duration::from_secs(5), SERVING, || health(&running)).await,
        SERVING,
        "one foreign key does not keep the issuer unready"
    );
    let addr = running.http_addr;
    let (ready, body) = tokio::task::spawn_blocking(move || support::http_get(addr, "/readyz"))
        .await
        .unwrap();
    assert_eq!(ready, 200, "{body}");
    assert_eq!(
        status(&running, token(&idp, "test-es256", "test-es256.pem")).await,
        200
    );
    assert_eq!(
        skipped(&running, &idp.issuer(), "encryption_key").await,
        1.0
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refresh_adding_an_unusable_key_keeps_the_new_usable_keys() {
    let idp = IdentityProvider::start();
    let running = start(&idp, 60).await;
    assert_eq!(
        eventually(Duration::from_secs(5), SERVING, || health(&running)).await,
        SERVING
    );
    // The provider rotates in a new signing key and, with it, keys this
    // service cannot use: an encryption key (listed first, under the new
    // signing key's kid) and a symmetric one.
    let mut enc_under_the_signing_kid = fixture_key("keys/test-issuer.jwks.json", 0);
    enc_under_the_signing_kid["kid"] = json!("rotated-es256");
    enc_under_the_signing_kid["use"] = json!("enc");
    enc_under_the_signing_kid
        .as_object_mut()
        .unwrap()
        .remove("alg");
    idp.set_jwks(json!({"keys": [
        rsa_oaep_encryption_key("kc-enc"),
        enc_under_the_signing_kid,
        {"kty": "oct", "kid": "hs", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},
        fixture_key("keys/rotated-issuer.jwks.json", 0),
    ]}));
    let rotated = || token(&idp, "rotated-es256", "rotated-es256.pem");
    assert_eq!(
        eventually(Duration::from_secs(5), 200, || status(&running, rotated())).await,
        200,
        "the newly published signing key is taken despite the keys next to it"
    );
    // The key published as an encryption key under that kid (the old
    // signing key's public half) verifies nothing.
    assert_eq!(
        status(&running, token(&idp, "rotated-es256", "test-es256.pem")).await,
        401
    );
    // Several refreshes later: still ready, and each skipped key was
    // logged and counted once, not at every refresh.
    let hits = idp.hits("/jwks.json");
    let more = eventually(Duration::from_secs(6), true, || async {
        idp.hits("/jwks.json") >= hits + 3
    })
    .await;
    assert!(more, "the key set is refreshed every second");
    assert_eq!(health(&running).await, SERVING);
    assert_eq!(status(&running, rotated()).await, 200);
    let issuer = idp.issuer();
    assert_eq!(skipped(&running, &issuer, "encryption_key").await, 2.0);
    assert_eq!(skipped(&running, &issuer, "symmetric_key").await, 1.0);

    // A document with no usable key at all is refused as a whole: the
    // cached keys keep working (up to the maximum staleness) and readiness
    // holds.
    idp.set_jwks(json!({"keys": [rsa_oaep_encryption_key("kc-enc")]}));
    let hits = idp.hits("/jwks.json");
    let more = eventually(Duration::from_secs(6), true, || async {
        idp.hits("/jwks.json") >= hits + 2
    })
    .await;
    assert!(more);
    assert_eq!(health(&running).await, SERVING);
    assert_eq!(status(&running, rotated()).await, 200);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn serve_starts_with_a_jwks_file_holding_an_encryption_key() {
    // Before: `serve` exited with "unsupported alg" for the whole issuer.
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("keycloak.jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [
            rsa_oaep_encryption_key("kc-enc"),
            fixture_key("keys/test-issuer.jwks.json", 0),
        ]})
        .to_string(),
    )
    .unwrap();
    let yaml = format!(
        r#"{head}authentication:
  jwt:
    - issuer: "{issuer}"
      audiences: [portcullis]
      jwks_file: {jwks}
      algorithms: [ES256]
      org_claim: org
"#,
        head = support::server_yaml(),
        issuer = support::ISSUER,
        jwks = serde_json::to_string(&jwks).unwrap(),
    );
    let running = TestServer::try_start(support::parse_config(&yaml, "file.yaml"))
        .await
        .unwrap_or_else(|e| panic!("serve starts: {e}"));
    assert_eq!(health(&running).await, SERVING);
    let token = support::token("alice");
    assert_eq!(status(&running, token).await, 200);
    running.shutdown().await.unwrap();
}
