//! Signed payloads: an app signs `t`, method, path and body with its own
//! secret (HMAC-SHA256) and sends `x-signature: t=<unix seconds>,v1=<hex>`.
//! A signature from outside the time window, or seen before, is refused;
//! seen signatures are kept in a bounded cache (moka) for twice the
//! window. It does not decide who the caller is: the app comes from its
//! API key (or other credential) first.
//!
//! With a Redis (the quota store's, or `authentication.redis`), a signature
//! is also recorded there (`SET portcullis:sig:{<hex>} NX`, expiring after
//! twice the window), so a replay to another replica is refused too. When
//! Redis does not answer within its timeout, the local cache alone decides
//! (as failure counts do): a replay to the same replica is still refused,
//! one to another replica is not, and the degraded check is counted and
//! logged (at most once a second).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::authn::config::SignatureConfig;
use crate::request::AccessRequest;

use super::Identity;

/// A signing secret, never shown.
struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug)]
struct SignedApp {
    app: String,
    secret: Secret,
    required: bool,
}

/// Verifies payload signatures.
#[derive(Debug)]
pub struct Signatures {
    header: String,
    window: u64,
    apps: Vec<SignedApp>,
    seen: moka::sync::Cache<[u8; 32], ()>,
    shared: Option<SharedSeen>,
}

/// Seen signatures in Redis, shared by every replica.
#[derive(Debug)]
struct SharedSeen {
    redis: Arc<crate::shared_redis::SharedRedis>,
    timeout: Duration,
    ttl: Duration,
    /// Checks Redis did not answer (decided by the local cache alone).
    degraded: AtomicU64,
    /// When the last warning was logged (seconds since the epoch).
    warned_at: AtomicU64,
}

/// Prefix of the seen-signature keys in Redis.
pub const KEY_PREFIX: &str = "portcullis:sig:";

impl SharedSeen {
    /// True when this is the signature's first use anywhere.
    async fn first_use(&self, mac: &[u8; 32]) -> Result<bool, String> {
        let key = format!("{KEY_PREFIX}{{{}}}", hex::encode(mac));
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let answer = tokio::time::timeout(self.timeout, async {
            let mut con = self.redis.connection().await.map_err(|e| e.to_string())?;
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<Option<String>>(&mut con)
                .await
                .map_err(|e| {
                    self.redis.note_error(&e);
                    e.to_string()
                })
        })
        .await
        .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))??;
        Ok(answer.is_some())
    }
}

/// A secret file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("signatures: app '{app}': secret_file {path}: {problem}")]
pub struct SecretUnusable {
    app: String,
    path: PathBuf,
    problem: String,
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Stable reason for operators (audit, logs).
    pub reason: &'static str,
    /// What the client is told.
    pub detail: String,
}

fn refused(reason: &'static str, detail: impl Into<String>) -> Refused {
    Refused {
        reason,
        detail: detail.into(),
    }
}

/// The smallest accepted secret.
pub const MIN_SECRET_BYTES: usize = 32;

impl Signatures {
    /// Loads every app's secret.
    pub fn new(config: &SignatureConfig) -> Result<Self, Vec<SecretUnusable>> {
        let mut apps = Vec::new();
        let mut errors = Vec::new();
        for a in &config.apps {
            let unusable = |problem: String| SecretUnusable {
                app: a.app.clone(),
                path: a.secret_file.clone(),
                problem,
            };
            match super::secret::read(&a.secret_file) {
                Ok(secret) => {
                    if secret.len() < MIN_SECRET_BYTES {
                        errors.push(unusable(format!(
                            "the secret has {} bytes ({}); use at least {MIN_SECRET_BYTES} (e.g. openssl rand -hex 32)",
                            secret.len(),
                            super::secret::RULE,
                        )));
                    } else {
                        apps.push(SignedApp {
                            app: a.app.clone(),
                            secret: Secret(secret),
                            required: a.required,
                        });
                    }
                }
                Err(e) => errors.push(unusable(format!("cannot read: {e}"))),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Signatures {
            header: config.header.clone(),
            window: config.window_seconds,
            apps,
            seen: moka::sync::Cache::builder()
                .max_capacity(config.replay_cache_capacity)
                .time_to_live(Duration::from_secs(config.window_seconds.saturating_mul(2)))
                .build(),
            shared: None,
        })
    }

    /// The same verifier recording seen signatures in `redis` too (each
    /// call bounded by `timeout`), so every replica refuses a replay.
    pub fn shared_through(
        mut self,
        redis: Arc<crate::shared_redis::SharedRedis>,
        timeout: Duration,
    ) -> Self {
        self.shared = Some(SharedSeen {
            redis,
            timeout,
            ttl: Duration::from_secs(self.window.saturating_mul(2)),
            degraded: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
        });
        self
    }

    /// True when seen signatures are shared through Redis.
    pub fn shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Replay checks Redis did not answer (decided locally) since start.
    pub fn degraded_checks(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.degraded.load(Ordering::Relaxed))
    }

    /// As [`Signatures::verify`], and a signature already used through
    /// another replica (recorded in the shared Redis) is refused too.
    pub async fn verify_shared(
        &self,
        req: &AccessRequest,
        identity: &Identity,
        route_requires: bool,
        now: u64,
    ) -> Result<(), Refused> {
        let Some(mac) = self.verify_key(req, identity, route_requires, now)? else {
            return Ok(());
        };
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        match shared.first_use(&mac).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(replayed()),
            Err(error) => {
                shared.degraded.fetch_add(1, Ordering::Relaxed);
                let last = shared.warned_at.load(Ordering::Relaxed);
                if now > last
                    && shared
                        .warned_at
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        target: "portcullis::authn",
                        error,
                        "Redis does not answer: signature replays are checked in this process only (logged at most once a second)"
                    );
                }
                Ok(())
            }
        }
    }

    /// Checks the request's signature when the route or the app requires
    /// one, or when one is sent by an app that has a secret (replays
    /// checked in this process only; see [`Signatures::verify_shared`]).
    pub fn verify(
        &self,
        req: &AccessRequest,
        identity: &Identity,
        route_requires: bool,
        now: u64,
    ) -> Result<(), Refused> {
        self.verify_key(req, identity, route_requires, now)
            .map(|_| ())
    }

    /// [`Signatures::verify`]; the signature when one was checked and is
    /// fresh here.
    fn verify_key(
        &self,
        req: &AccessRequest,
        identity: &Identity,
        route_requires: bool,
        now: u64,
    ) -> Result<Option<[u8; 32]>, Refused> {
        let is_app = identity.principal.type_name().basename() == "App";
        let app = self
            .apps
            .iter()
            .find(|a| is_app && identity.principal.id().unescaped() == a.app);
        let required = route_requires || app.is_some_and(|a| a.required);
        let header = req.header(&self.header);
        let (app, header) = match (app, header) {
            (Some(app), Some(header)) => (app, header),
            (_, None) if !required => return Ok(None),
            (None, _) if !required => return Ok(None),
            (None, _) => {
                return Err(refused(
                    "no_signing_secret",
                    "this endpoint needs a signed payload and the caller has no signing secret; call it as an application that has one",
                ))
            }
            (Some(_), None) => {
                return Err(refused(
                    "signature_missing",
                    format!(
                        "this request must be signed: send '{}: t=<unix seconds>,v1=<hex HMAC-SHA256 of t, method, path and body>'",
                        self.header
                    ),
                ))
            }
        };
        let (t, mac) = parse_header(header).ok_or_else(|| {
            refused(
                "signature_malformed",
                format!(
                    "the {} header must be 't=<unix seconds>,v1=<64 hex digits>'",
                    self.header
                ),
            )
        })?;
        if t.abs_diff(now) > self.window {
            return Err(refused(
                "signature_expired",
                format!(
                    "the signature's timestamp is more than {} seconds from the server's clock: sign again with the current time",
                    self.window
                ),
            ));
        }
        let mut expected =
            Hmac::<Sha256>::new_from_slice(&app.secret.0).expect("HMAC accepts keys of any length");
        expected.update(&signed_bytes(
            t,
            &req.method,
            &req.path,
            req.body.as_deref().unwrap_or(&[]),
        ));
        // Constant-time comparison.
        if expected.verify_slice(&mac).is_err() {
            return Err(refused(
                "signature_invalid",
                "the signature does not match the request: sign t, method, path and body with the app's secret",
            ));
        }
        let key: [u8; 32] = mac.try_into().expect("parse_header returns 32 bytes");
        let entry = self.seen.entry(key).or_insert(());
        if !entry.is_fresh() {
            return Err(replayed());
        }
        Ok(Some(key))
    }
}

fn replayed() -> Refused {
    refused(
        "signature_replayed",
        "this signature was already used: sign each request anew",
    )
}

/// What is signed: `t`, method and path each followed by a newline, then
/// the body bytes.
pub fn signed_bytes(t: u64, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{t}\n{method}\n{path}\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// The signature for a request, as a client computes it (for tests and
/// client tooling).
pub fn sign(secret: &[u8], t: u64, method: &str, path: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(&signed_bytes(t, method, path, body));
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn parse_header(value: &str) -> Option<(u64, Vec<u8>)> {
    let mut t = None;
    let mut v1 = None;
    for part in value.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "t" => t = Some(v.parse::<u64>().ok()?),
            "v1" => v1 = Some(hex::decode(v).ok().filter(|b| b.len() == 32)?),
            _ => {}
        }
    }
    Some((t?, v1?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::config::SignedAppConfig;
    use crate::authn::{entity_uid, AuthMethod};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn signatures(required: bool) -> (Signatures, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, [SECRET, b"\n"].concat()).unwrap();
        let config = SignatureConfig {
            apps: vec![SignedAppConfig {
                app: "reports".into(),
                secret_file: file,
                required,
            }],
            window_seconds: 300,
            ..SignatureConfig::default()
        };
        (Signatures::new(&config).unwrap(), dir)
    }

    fn app(id: &str) -> Identity {
        Identity::new(
            entity_uid("App", id).unwrap(),
            Vec::new(),
            AuthMethod::ApiKey,
        )
    }

    fn request(signature: Option<&str>, body: &[u8]) -> AccessRequest {
        let mut r = AccessRequest::for_test("POST", "/v1/models/m/versions/v1:predict");
        r.body = Some(body.to_vec());
        if let Some(s) = signature {
            r.headers.insert("x-signature".into(), s.into());
        }
        r
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_valid_signature_passes_once_and_its_replay_is_refused() {
        let (s, _dir) = signatures(false);
        let sig = sign(
            SECRET,
            NOW - 10,
            "POST",
            "/v1/models/m/versions/v1:predict",
            b"{}",
        );
        let req = request(Some(&sig), b"{}");
        assert_eq!(s.verify(&req, &app("reports"), true, NOW), Ok(()));
        let replay = s.verify(&req, &app("reports"), true, NOW).unwrap_err();
        assert_eq!(replay.reason, "signature_replayed");
    }

    #[test]
    fn a_wrong_signature_or_changed_body_is_refused() {
        let (s, _dir) = signatures(false);
        let sig = sign(
            SECRET,
            NOW,
            "POST",
            "/v1/models/m/versions/v1:predict",
            b"{}",
        );
        let e = s
            .verify(
                &request(Some(&sig), b"{\"x\":1}"),
                &app("reports"),
                true,
                NOW,
            )
            .unwrap_err();
        assert_eq!(e.reason, "signature_invalid");
        let other = sign(
            b"another-secret-another-secret-xx",
            NOW,
            "POST",
            "/v1/models/m/versions/v1:predict",
            b"{}",
        );
        let e = s
            .verify(&request(Some(&other), b"{}"), &app("reports"), true, NOW)
            .unwrap_err();
        assert_eq!(e.reason, "signature_invalid");
        let e = s
            .verify(
                &request(Some("t=1,v1=zz"), b"{}"),
                &app("reports"),
                true,
                NOW,
            )
            .unwrap_err();
        assert_eq!(e.reason, "signature_malformed");
    }

    #[test]
    fn timestamps_outside_the_window_are_refused() {
        let (s, _dir) = signatures(false);
        for t in [NOW - 301, NOW + 301] {
            let sig = sign(SECRET, t, "POST", "/v1/models/m/versions/v1:predict", b"{}");
            let e = s
                .verify(&request(Some(&sig), b"{}"), &app("reports"), true, NOW)
                .unwrap_err();
            assert_eq!(e.reason, "signature_expired");
        }
    }

    #[test]
    fn requirement_comes_from_the_route_or_the_app() {
        let (optional, _d1) = signatures(false);
        assert_eq!(
            optional.verify(&request(None, b"{}"), &app("reports"), false, NOW),
            Ok(())
        );
        assert_eq!(
            optional
                .verify(&request(None, b"{}"), &app("reports"), true, NOW)
                .unwrap_err()
                .reason,
            "signature_missing"
        );
        assert_eq!(
            optional
                .verify(&request(None, b"{}"), &app("stranger"), true, NOW)
                .unwrap_err()
                .reason,
            "no_signing_secret"
        );
        let (required, _d2) = signatures(true);
        assert_eq!(
            required
                .verify(&request(None, b"{}"), &app("reports"), false, NOW)
                .unwrap_err()
                .reason,
            "signature_missing"
        );
    }

    #[test]
    fn signing_secret_file_ending_in_a_tab_keeps_all_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        let mut secret = [0xe1u8; 32];
        secret[31] = b'\t';
        std::fs::write(&file, secret).unwrap();
        let s = Signatures::new(&SignatureConfig {
            apps: vec![SignedAppConfig {
                app: "reports".into(),
                secret_file: file,
                required: false,
            }],
            ..SignatureConfig::default()
        })
        .unwrap();
        let path = "/v1/models/m/versions/v1:predict";
        let sig = sign(&secret, NOW, "POST", path, b"{}");
        assert_eq!(
            s.verify(&request(Some(&sig), b"{}"), &app("reports"), true, NOW),
            Ok(())
        );
    }

    #[test]
    fn short_secrets_are_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "short").unwrap();
        let config = SignatureConfig {
            apps: vec![SignedAppConfig {
                app: "a".into(),
                secret_file: file,
                required: false,
            }],
            ..SignatureConfig::default()
        };
        let e = Signatures::new(&config).unwrap_err();
        assert!(e[0].to_string().contains("at least 32"), "{}", e[0]);
        assert!(!format!(
            "{:?}",
            Signatures::new(&SignatureConfig::default()).unwrap()
        )
        .contains("0123"));
    }
}
