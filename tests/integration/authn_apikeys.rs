//! API keys end to end in process: `portcullis apikey new` prints a key and
//! the entry to store; the key authenticates its App; the bundled policies
//! let an App with the invoke scope invoke its org's models; unknown,
//! revoked (after a reload) and expired keys are 401.

use std::process::Command;

use portcullis::authn::config::{ApiKeyConfig, AuthnConfig};
use portcullis::authn::Authenticator;
use portcullis::decision::DenyReason;
use portcullis::policy::snapshot::Snapshot;
use portcullis::request::AccessRequest;

use crate::support::{self, decide, policies_dir};

/// Runs `portcullis apikey new`; returns (key, entry line).
fn new_key(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["apikey", "new"])
        .args(args)
        .output()
        .expect("run portcullis");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("a key line")
        .to_string();
    let entry = stdout
        .lines()
        .find(|l| l.starts_with("  - "))
        .expect("an entry line")
        .to_string();
    assert!(
        !entry.contains(&key),
        "the stored entry never holds the key"
    );
    (key, entry)
}

fn predict(key: &str) -> AccessRequest {
    let mut r = support::predict_access();
    r.headers.insert("x-api-key".into(), key.into());
    r
}

#[tokio::test]
async fn api_keys_valid_unknown_revoked_expired() {
    let (scoped, scoped_entry) = new_key(&[
        "--app",
        "batch-scorer",
        "--org",
        "acme",
        "--scopes",
        "models:invoke",
    ]);
    let (unscoped, unscoped_entry) = new_key(&["--app", "reporting", "--org", "acme"]);
    let (expired, expired_entry) = new_key(&[
        "--app",
        "old-app",
        "--org",
        "acme",
        "--scopes",
        "models:invoke",
        "--expires-at",
        "1000",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api-keys.yaml");
    std::fs::write(
        &path,
        format!("keys:\n{scoped_entry}\n{unscoped_entry}\n{expired_entry}\n"),
    )
    .unwrap();
    let authn = Authenticator::new(&AuthnConfig {
        api_keys: ApiKeyConfig {
            file: Some(path.clone()),
            ..ApiKeyConfig::default()
        },
        ..AuthnConfig::default()
    })
    .unwrap();
    let s = Snapshot::load(&policies_dir()).unwrap();

    let d = decide(&s, &authn, &predict(&scoped)).await;
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(d.principal.as_deref(), Some(r#"App::"batch-scorer""#));
    assert_eq!(d.auth_method, Some("apikey"));
    assert_eq!(
        d.determining_policies,
        vec!["apps-with-invoke-scope-invoke-org-models"]
    );

    // Authenticated, but without the scope the policies ask for.
    let d = decide(&s, &authn, &predict(&unscoped)).await;
    assert_eq!(d.status, 403, "{d:?}");

    let (stranger, _) = new_key(&["--app", "x", "--org", "acme"]);
    let d = decide(&s, &authn, &predict(&stranger)).await;
    assert_eq!(d.reason, Some(DenyReason::InvalidCredentials));
    assert_eq!(d.errors, vec!["authentication: unknown_api_key"]);

    let d = decide(&s, &authn, &predict(&expired)).await;
    assert_eq!(d.status, 401);
    assert_eq!(d.errors, vec!["authentication: api_key_expired"]);

    // Revocation: mark the entry revoked; the file watcher picks it up.
    let revoked_entry = scoped_entry.replacen('{', "{\"revoked\":true,", 1);
    std::fs::write(
        &path,
        format!("keys:\n{revoked_entry}\n{unscoped_entry}\n{expired_entry}\n"),
    )
    .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    authn.spawn_refresh(&tasks, &cancel);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let d = decide(&s, &authn, &predict(&scoped)).await;
        if d.status == 401 {
            assert_eq!(d.errors, vec!["authentication: api_key_revoked"]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revocation not applied: {d:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
}

/// Signed payloads for an app that must sign (authentication.signatures):
/// valid passes once, its replay, a wrong signature, a changed body and an
/// expired timestamp are refused with 401 invalid_signature.
#[tokio::test]
async fn an_app_that_must_sign_is_refused_without_a_valid_fresh_signature() {
    use portcullis::authn::config::{SignatureConfig, SignedAppConfig};
    use portcullis::authn::signature::sign;

    let (key, entry) = new_key(&[
        "--app",
        "batch-scorer",
        "--org",
        "acme",
        "--scopes",
        "models:invoke",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("api-keys.yaml");
    std::fs::write(&keys, format!("keys:\n{entry}\n")).unwrap();
    let secret = b"7f3c0a9e1b2d4c6e8f0a1b3c5d7e9f11";
    let secret_file = dir.path().join("batch-scorer.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let authn = Authenticator::new(&AuthnConfig {
        api_keys: ApiKeyConfig {
            file: Some(keys),
            ..ApiKeyConfig::default()
        },
        signatures: SignatureConfig {
            apps: vec![SignedAppConfig {
                app: "batch-scorer".into(),
                secret_file,
                required: true,
            }],
            ..SignatureConfig::default()
        },
        ..AuthnConfig::default()
    })
    .unwrap();
    let s = Snapshot::load(&policies_dir()).unwrap();
    let now = support::now() as u64;
    let path = "/v1/models/sentiment/versions/v2:predict";
    let body = br#"{"features":["great service"]}"#;
    let signed = |signature: String, body: &[u8]| {
        let mut r = predict(&key);
        r.body = Some(body.to_vec());
        r.headers.insert("x-signature".into(), signature);
        r
    };

    let d = decide(&s, &authn, &predict(&key)).await;
    assert_eq!(d.reason, Some(DenyReason::InvalidSignature), "{d:?}");
    assert_eq!(d.status, 401);
    assert_eq!(d.errors, vec!["signature: signature_missing"]);

    let valid = signed(sign(secret, now, "POST", path, body), body);
    let d = decide(&s, &authn, &valid).await;
    assert_eq!(d.status, 200, "{d:?}");
    let d = decide(&s, &authn, &valid).await;
    assert_eq!(d.errors, vec!["signature: signature_replayed"], "{d:?}");

    let tampered = signed(
        sign(secret, now, "POST", path, body),
        br#"{"features":["other text"]}"#,
    );
    let d = decide(&s, &authn, &tampered).await;
    assert_eq!(d.errors, vec!["signature: signature_invalid"], "{d:?}");

    let wrong = signed(
        sign(b"not-the-secret-not-the-secret-xx", now, "POST", path, body),
        body,
    );
    let d = decide(&s, &authn, &wrong).await;
    assert_eq!(d.errors, vec!["signature: signature_invalid"], "{d:?}");

    let expired = signed(sign(secret, now - 3_600, "POST", path, body), body);
    let d = decide(&s, &authn, &expired).await;
    assert_eq!(d.errors, vec!["signature: signature_expired"], "{d:?}");
    assert_eq!(d.status, 401);
}

/// Issue 17: the replay cache of signed payloads is shared through Redis.
/// Two replicas (each its own authenticator and Redis connection) share
/// one `redis-server`: a signed request accepted by the first is refused
/// as a replay by the second (it was accepted by both before).
#[tokio::test]
async fn a_signed_payload_replayed_to_a_second_replica_is_refused() {
    use std::sync::Arc;
    use std::time::Duration;

    use portcullis::authn::config::{SignatureConfig, SignedAppConfig};
    use portcullis::authn::signature::sign;
    use portcullis::authn::AuthnRedis;
    use portcullis::shared_redis::SharedRedis;

    let redis = support::RedisServer::start();
    let (key, entry) = new_key(&[
        "--app",
        "batch-scorer",
        "--org",
        "acme",
        "--scopes",
        "models:invoke",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("api-keys.yaml");
    std::fs::write(&keys, format!("keys:\n{entry}\n")).unwrap();
    let secret = b"7f3c0a9e1b2d4c6e8f0a1b3c5d7e9f11";
    let secret_file = dir.path().join("batch-scorer.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let config = AuthnConfig {
        api_keys: ApiKeyConfig {
            file: Some(keys),
            ..ApiKeyConfig::default()
        },
        signatures: SignatureConfig {
            apps: vec![SignedAppConfig {
                app: "batch-scorer".into(),
                secret_file,
                required: true,
            }],
            ..SignatureConfig::default()
        },
        ..AuthnConfig::default()
    };
    let replica = || {
        let timeout = Duration::from_millis(500);
        let shared = SharedRedis::single(&redis.url(), timeout, "test").unwrap();
        Authenticator::with_redis(
            &config,
            Some(AuthnRedis {
                redis: Arc::new(shared),
                timeout,
            }),
        )
        .unwrap()
    };
    let (first, second) = (replica(), replica());
    let s = Snapshot::load(&policies_dir()).unwrap();
    let now = support::now() as u64;
    let path = "/v1/models/sentiment/versions/v2:predict";
    let body = br#"{"features":["great service"]}"#;
    let signed = |t: u64| {
        let mut r = predict(&key);
        r.body = Some(body.to_vec());
        r.headers
            .insert("x-signature".into(), sign(secret, t, "POST", path, body));
        r
    };

    let valid = signed(now);
    let d = decide(&s, &first, &valid).await;
    assert_eq!(d.status, 200, "{d:?}");
    let d = decide(&s, &second, &valid).await;
    assert_eq!(d.status, 401, "{d:?}");
    assert_eq!(d.errors, vec!["signature: signature_replayed"], "{d:?}");
    // And the other way round, with a fresh signature.
    let fresh = signed(now - 1);
    assert_eq!(decide(&s, &second, &fresh).await.status, 200);
    let d = decide(&s, &first, &fresh).await;
    assert_eq!(d.errors, vec!["signature: signature_replayed"], "{d:?}");
    // Every seen signature expires (twice the window).
    for (k, ttl) in redis.ttls() {
        assert!(k.starts_with("portcullis:sig:{"), "{k}");
        assert!(ttl > 0 && ttl <= 600_000, "{k}: {ttl}");
    }
}
