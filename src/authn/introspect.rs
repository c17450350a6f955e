//! OAuth 2.0 token introspection (RFC 7662) for opaque bearer tokens: the
//! endpoint is asked with client authentication, within a time budget; an
//! active token's answer is cached for its remaining life (capped), an
//! inactive one briefly. An endpoint that errs or is slow is a 503-class
//! denial within the budget, never a hang. It does not verify JWTs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::Digest;

use super::{entity_uid, AuthMethod, AuthnFailure, Identity, TokenFacts};
use crate::authn::config::IntrospectionConfig;

/// A cached answer.
#[derive(Debug, Clone)]
enum Answer {
    Active { identity: Box<Identity>, exp: u64 },
    Inactive,
}

struct CacheFor;

impl moka::Expiry<[u8; 32], (Arc<Answer>, Duration)> for CacheFor {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &(Arc<Answer>, Duration),
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

/// Asks the introspection endpoint about opaque tokens.
pub struct Introspector {
    config: IntrospectionConfig,
    client_secret: String,
    client: reqwest::Client,
    cache: moka::sync::Cache<[u8; 32], (Arc<Answer>, Duration)>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client secret never reaches a log.
        f.debug_struct("Introspector")
            .field("endpoint", &self.config.endpoint)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

/// The introspection client secret could not be read.
#[derive(Debug, thiserror::Error)]
#[error("introspection: cannot read client_secret_file {path}: {source}")]
pub struct SecretUnreadable {
    path: std::path::PathBuf,
    source: std::io::Error,
}

impl Introspector {
    /// Prepares the client; reads the client secret file.
    pub fn new(config: &IntrospectionConfig) -> Result<Self, SecretUnreadable> {
        let client_secret = match &config.client_secret_file {
            None => String::new(),
            Some(path) => super::secret::read(path)
                .and_then(|bytes| {
                    String::from_utf8(bytes).map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "a client secret is text (UTF-8); this one is not",
                        )
                    })
                })
                .map_err(|source| SecretUnreadable {
                    path: path.clone(),
                    source,
                })?,
        };
        let budget = Duration::from_millis(config.timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(budget)
            .connect_timeout(budget)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a TLS backend is compiled in");
        Ok(Introspector {
            config: config.clone(),
            client_secret,
            client,
            cache: moka::sync::Cache::builder()
                .max_capacity(config.cache_capacity)
                .expire_after(CacheFor)
                .build(),
        })
    }

    /// Looks a token up, from the cache or the endpoint.
    pub async fn introspect(&self, token: &str, now_epoch: u64) -> Result<Identity, AuthnFailure> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some((answer, _)) = self.cache.get(&key) {
            crate::metrics::global().cache(crate::metrics::Cache::Introspection, true);
            return self.judge(&answer, now_epoch);
        }
        crate::metrics::global().cache(crate::metrics::Cache::Introspection, false);
        let budget = Duration::from_millis(self.config.timeout_ms);
        let response = tokio::time::timeout(budget, self.ask(token))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        let body = match response {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(endpoint = %self.config.endpoint, error = %e, "token introspection failed");
                return Err(AuthnFailure::unavailable(
                    "introspection_unavailable",
                    "the token cannot be checked right now; try again later",
                ));
            }
        };
        let answer = self.read(&body, now_epoch);
        let ttl = self.cache_for(&answer, now_epoch);
        let answer = Arc::new(answer);
        if !ttl.is_zero() {
            self.cache.insert(key, (Arc::clone(&answer), ttl));
        }
        self.judge(&answer, now_epoch)
    }

    /// How long an answer is kept: an active one for the token's remaining
    /// life, capped; an inactive one briefly.
    fn cache_for(&self, answer: &Answer, now_epoch: u64) -> Duration {
        match answer {
            Answer::Active { exp, .. } => Duration::from_secs(
                exp.saturating_sub(now_epoch)
                    .min(self.config.max_cache_seconds),
            ),
            Answer::Inactive => Duration::from_secs(self.config.negative_cache_seconds),
        }
    }

    fn judge(&self, answer: &Answer, now_epoch: u64) -> Result<Identity, AuthnFailure> {
        match answer {
            Answer::Active { identity, exp } if *exp > now_epoch => Ok((**identity).clone()),
            Answer::Active { .. } => Err(AuthnFailure::new(
                "expired",
                "the token has expired; get a new one",
            )),
            Answer::Inactive => Err(AuthnFailure::new(
                "token_inactive",
                "the token is not active (revoked, expired or unknown); get a new one",
            )),
        }
    }

    async fn ask(&self, token: &str) -> Result<Value, String> {
        let response = self
            .client
            .post(&self.config.endpoint)
            .basic_auth(
                form_urlencode(&self.config.client_id),
                Some(form_urlencode(&self.client_secret)),
            )
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "token={}&token_type_hint=access_token",
                form_urlencode(token)
            ))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status()));
        }
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|_| "the answer is not JSON".into())
    }

    /// An endpoint answer to our terms. Anything but a complete, active,
    /// unexpired answer for our audience is inactive.
    fn read(&self, body: &Value, now_epoch: u64) -> Answer {
        let cfg = &self.config;
        if body.get("active") != Some(&Value::Bool(true)) {
            return Answer::Inactive;
        }
        let Some(exp) = body.get("exp").and_then(Value::as_u64) else {
            return Answer::Inactive;
        };
        if exp <= now_epoch {
            return Answer::Inactive;
        }
        if let Some(iss) = &cfg.issuer {
            if body.get("iss").and_then(Value::as_str) != Some(iss.as_str()) {
                return Answer::Inactive;
            }
        }
        if !cfg.audiences.is_empty() {
            let ours = |a: &str| cfg.audiences.iter().any(|c| c == a);
            let ok = match body.get("aud") {
                Some(Value::String(a)) => ours(a),
                Some(Value::Array(list)) => {
                    !list.is_empty() && list.iter().all(|a| a.as_str().is_some_and(ours))
                }
                _ => false,
            };
            if !ok {
                return Answer::Inactive;
            }
        }
        let Some(principal) = body
            .get(&cfg.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .and_then(|s| entity_uid(&cfg.principal_type, s))
        else {
            return Answer::Inactive;
        };
        let mut parents = Vec::new();
        if let Some(org) = cfg
            .org_claim
            .as_ref()
            .and_then(|c| body.get(c))
            .and_then(Value::as_str)
        {
            parents.extend(entity_uid(&cfg.org_type, org));
        }
        let scopes = body
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| s.split_ascii_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        Answer::Active {
            identity: Box::new(Identity::with_token(
                principal,
                parents,
                AuthMethod::Introspection,
                TokenFacts {
                    scopes,
                    claims: Default::default(),
                    mfa: false,
                },
            )),
            exp,
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_urlencode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn introspector() -> Introspector {
        Introspector::new(&IntrospectionConfig {
            endpoint: "http://127.0.0.1:1/introspect".into(),
            issuer: Some("https://as.example/".into()),
            audiences: vec!["portcullis".into()],
            org_claim: Some("org".into()),
            ..IntrospectionConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn active_answer_becomes_an_identity() {
        let i = introspector();
        let body = json!({"active": true, "sub": "alice", "org": "acme", "exp": 2000,
            "iss": "https://as.example/", "aud": "portcullis", "scope": "a b"});
        match i.read(&body, 1000) {
            Answer::Active { identity, exp } => {
                assert_eq!(exp, 2000);
                assert_eq!(identity.principal.to_string(), r#"User::"alice""#);
                assert_eq!(identity.parents[0].to_string(), r#"Org::"acme""#);
                assert_eq!(identity.token.scopes.len(), 2);
                assert_eq!(identity.method, AuthMethod::Introspection);
            }
            Answer::Inactive => panic!("should be active"),
        }
    }

    #[test]
    fn answers_are_cached_for_the_remaining_life_capped_and_inactive_briefly() {
        let i = introspector();
        let active = |exp| {
            i.read(
                &json!({"active": true, "sub": "alice", "exp": exp,
                    "iss": "https://as.example/", "aud": "portcullis"}),
                1000,
            )
        };
        // Defaults: at most 300 s; inactive 10 s.
        assert_eq!(i.cache_for(&active(1060), 1000), Duration::from_secs(60));
        assert_eq!(i.cache_for(&active(99_999), 1000), Duration::from_secs(300));
        assert_eq!(
            i.cache_for(&Answer::Inactive, 1000),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn incomplete_or_foreign_answers_are_inactive() {
        let i = introspector();
        let base = json!({"active": true, "sub": "alice", "exp": 2000,
            "iss": "https://as.example/", "aud": "portcullis"});
        for (field, value) in [
            ("active", json!(false)),
            ("active", json!("true")),
            ("exp", json!(500)),
            ("iss", json!("https://evil.example/")),
            ("aud", json!(["portcullis", "other"])),
            ("sub", json!("")),
        ] {
            let mut b = base.clone();
            b[field] = value;
            assert!(matches!(i.read(&b, 1000), Answer::Inactive), "{field}");
        }
        let mut b = base.clone();
        b.as_object_mut().unwrap().remove("exp");
        assert!(matches!(i.read(&b, 1000), Answer::Inactive));
    }

    #[test]
    fn form_encoding_escapes_reserved_bytes() {
        assert_eq!(form_urlencode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
