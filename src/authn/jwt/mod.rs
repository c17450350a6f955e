//! JWT bearer tokens (RFC 7519) verified by the rules of RFC 8725, against
//! issuers with static keys (a JWKS file), remote keys (`jwks`) or an HMAC
//! secret. Every header field is attacker input: we never follow `jku`,
//! `x5u` or an embedded `jwk` (such tokens are refused outright), refuse any
//! `crit` extension, nested tokens, duplicate JSON members and non-canonical
//! compact forms. Verified tokens are cached until they expire.
//!
//! This file holds the verifier and the token cache; `compact` reads the
//! token's form and header, `keys` the key material, `claims` the claims.

mod claims;
mod compact;
#[cfg(test)]
mod fixtures;
mod keys;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use jsonwebtoken::Algorithm;
use serde_json::Value;
use sha2::Digest;

pub use self::claims::claim_reference_problem;
use self::compact::{check_header, malformed, split_compact};
use self::keys::{load_keys, load_secret};
pub use self::keys::{
    parse_algorithm, BadKeySet, JwksError, Key, KeySet, SkippedKey, UnusableAlgorithm, UnusableKey,
    MIN_HMAC_SECRET_BYTES,
};
pub(crate) use self::keys::{parse_key_set, report_skipped};
use super::jwks::{KeysUnavailable, RemoteJwks};
use super::{AuthnFailure, Identity};
use crate::authn::config::{AuthnConfig, IssuerConfig};

/// Where an issuer's keys come from.
#[derive(Debug)]
enum Keys {
    /// Loaded once from a file or secret.
    Static(Vec<Key>),
    /// Fetched and refreshed.
    Remote(Arc<RemoteJwks>),
}

#[derive(Debug)]
struct Issuer {
    config: IssuerConfig,
    algorithms: Vec<Algorithm>,
    keys: Keys,
}

/// A verified token, as cached.
#[derive(Debug, Clone)]
struct Verified {
    identity: Identity,
    issuer: String,
    exp: u64,
}

/// Verifies bearer tokens from the configured issuers.
#[derive(Debug)]
pub struct JwtVerifier {
    issuers: HashMap<String, Issuer>,
    leeway: u64,
    max_token_bytes: usize,
    /// Verified tokens by the SHA-256 of the token, at most
    /// `token_cache_capacity`; a hit is served only until the token's `exp`
    /// (plus leeway), and an expired one is dropped at that hit.
    cache: Option<quick_cache::sync::Cache<[u8; 32], Arc<Verified>>>,
}

impl JwtVerifier {
    /// Loads every issuer's static keys and prepares remote ones (not
    /// fetched yet: see [`JwtVerifier::remote_key_sets`]), reporting all
    /// unusable files at once.
    pub fn new(config: &AuthnConfig) -> Result<Self, Vec<JwksError>> {
        let mut issuers = HashMap::new();
        let mut errors = Vec::new();
        for ic in &config.jwt {
            let symmetric = ic.hmac_secret_file.is_some();
            let algorithms: Vec<Algorithm> = ic
                .algorithms
                .iter()
                .filter_map(|a| parse_algorithm(a, symmetric).ok())
                .collect();
            let keys = if let Some(path) = &ic.jwks_file {
                load_keys(ic, path, &algorithms).map(Keys::Static)
            } else if let Some(path) = &ic.hmac_secret_file {
                load_secret(ic, path).map(Keys::Static)
            } else {
                Ok(Keys::Remote(Arc::new(RemoteJwks::new(
                    &ic.issuer,
                    ic.jwks_url.as_deref(),
                    &config.jwks,
                    algorithms.clone(),
                ))))
            };
            match keys {
                Ok(keys) => {
                    issuers.insert(
                        ic.issuer.clone(),
                        Issuer {
                            config: ic.clone(),
                            algorithms,
                            keys,
                        },
                    );
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let cache = (config.token_cache_capacity > 0).then(|| {
            quick_cache::sync::Cache::new(
                usize::try_from(config.token_cache_capacity).unwrap_or(usize::MAX),
            )
        });
        Ok(JwtVerifier {
            issuers,
            leeway: config.leeway_seconds,
            max_token_bytes: config.max_token_bytes,
            cache,
        })
    }

    /// The issuers whose keys are fetched over HTTP.
    pub fn remote_key_sets(&self) -> Vec<Arc<RemoteJwks>> {
        self.issuers
            .values()
            .filter_map(|i| match &i.keys {
                Keys::Remote(r) => Some(Arc::clone(r)),
                Keys::Static(_) => None,
            })
            .collect()
    }

    /// Verifies a compact JWS and maps its claims to an identity.
    /// `now_epoch` is the request's time (for `exp`, `nbf`, `iat`); `now`
    /// is the monotonic clock (for key staleness and refetch limits).
    pub async fn verify(
        &self,
        token: &str,
        now_epoch: u64,
        now: Instant,
    ) -> Result<Identity, AuthnFailure> {
        if token.len() > self.max_token_bytes {
            return Err(AuthnFailure::new(
                "token_too_large",
                format!(
                    "the bearer token is larger than {} bytes",
                    self.max_token_bytes
                ),
            ));
        }
        let cache_key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(&cache_key)) {
            let issuer_usable = self
                .issuers
                .get(&hit.issuer)
                .is_some_and(|i| match &i.keys {
                    Keys::Static(_) => true,
                    Keys::Remote(r) => r.is_ready(now),
                });
            let live = now_epoch <= hit.exp.saturating_add(self.leeway);
            if issuer_usable && live {
                crate::metrics::global().cache(crate::metrics::Cache::Token, true);
                return Ok(hit.identity.clone());
            }
            if !live {
                // Past its `exp`: never served again, so it gives its room up.
                if let Some(cache) = &self.cache {
                    cache.remove(&cache_key);
                }
            }
        }
        if self.cache.is_some() {
            crate::metrics::global().cache(crate::metrics::Cache::Token, false);
        }
        let verified = self.verify_uncached(token, now_epoch, now).await?;
        let identity = verified.identity.clone();
        if let Some(cache) = &self.cache {
            cache.insert(cache_key, Arc::new(verified));
        }
        Ok(identity)
    }

    async fn verify_uncached(
        &self,
        token: &str,
        now_epoch: u64,
        now: Instant,
    ) -> Result<Verified, AuthnFailure> {
        let (header_json, payload) = split_compact(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| malformed())?;
        check_header(&header_json, &header)?;
        let iss = match payload.get("iss") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(AuthnFailure::new(
                    "malformed_claim",
                    "the token's 'iss' claim must be a string",
                ))
            }
            None => {
                return Err(AuthnFailure::new(
                    "missing_issuer",
                    "the token has no 'iss' claim",
                ))
            }
        };
        let issuer = self.issuers.get(&iss).ok_or_else(|| {
            AuthnFailure::new("unknown_issuer", "the token's issuer is not trusted")
        })?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(AuthnFailure::new(
                "algorithm_not_allowed",
                format!("tokens from this issuer may not use {:?}", header.alg),
            ));
        }
        let kid = header.kid.as_deref();
        let claims = match &issuer.keys {
            Keys::Static(keys) => {
                let candidates = keys_for(keys, kid, header.alg)?;
                issuer.decode_with_any(token, &candidates, header.alg, self.leeway)?
            }
            Keys::Remote(remote) => {
                let mut loaded = remote.current(now).map_err(keys_unavailable)?;
                if matches!(keys_for(&loaded.keys, kid, header.alg), Err(ref f) if f.reason == "unknown_key")
                    && remote.refetch_for_unknown_kid(now).await
                {
                    loaded = remote.current(now).map_err(keys_unavailable)?;
                }
                let candidates = keys_for(&loaded.keys, kid, header.alg)?;
                issuer.decode_with_any(token, &candidates, header.alg, self.leeway)?
            }
        };
        issuer.identity(claims, now_epoch, self.leeway)
    }
}

impl Issuer {
    /// Checks the token against each candidate key in turn (several signing
    /// keys may share a `kid`); the first whose signature verifies decides.
    fn decode_with_any(
        &self,
        token: &str,
        candidates: &[&Key],
        alg: Algorithm,
        leeway: u64,
    ) -> Result<serde_json::Map<String, Value>, AuthnFailure> {
        let mut last = None;
        for key in candidates {
            match self.decode(token, key, alg, leeway) {
                Err(f) if f.reason == "bad_signature" => last = Some(f),
                decided => return decided,
            }
        }
        Err(last.unwrap_or_else(|| {
            AuthnFailure::new("bad_signature", "the token's signature does not verify")
        }))
    }
}

fn keys_unavailable(why: KeysUnavailable) -> AuthnFailure {
    match why {
        KeysUnavailable::NotLoaded | KeysUnavailable::Stale => AuthnFailure::unavailable(
            "issuer_keys_unavailable",
            "the token's issuer cannot be verified right now; try again later",
        ),
    }
}

/// The keys that may verify a token naming `kid` and signed with `alg`:
/// signing keys only (encryption keys were never loaded, RFC 7517 sections
/// 4.2-4.3), of that `kid`, for that algorithm (which the issuer allows: the
/// keys hold only allowed algorithms). Never "the first key with this kid":
/// every key the issuer publishes under it for `alg` is a candidate, and a
/// key of another use or algorithm under the same `kid` is none.
fn keys_for<'k>(
    keys: &'k [Key],
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<Vec<&'k Key>, AuthnFailure> {
    let unknown = || {
        AuthnFailure::new(
            "unknown_key",
            "the token's signing key (kid) is not one of the issuer's keys",
        )
    };
    match kid {
        Some(kid) => {
            let named: Vec<&Key> = keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if named.is_empty() {
                return Err(unknown());
            }
            let usable: Vec<&Key> = named
                .into_iter()
                .filter(|k| k.algorithms.contains(&alg))
                .collect();
            if usable.is_empty() {
                return Err(AuthnFailure::new(
                    "algorithm_key_mismatch",
                    "the token's algorithm does not match its signing key",
                ));
            }
            Ok(usable)
        }
        None => {
            // Without a kid, only an unambiguous key is acceptable.
            let mut candidates = keys.iter().filter(|k| k.algorithms.contains(&alg));
            match (candidates.next(), candidates.next()) {
                (Some(k), None) => Ok(vec![k]),
                _ => Err(unknown()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::jwt::fixtures::*;
    use crate::authn::AuthMethod;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    #[test]
    fn valid_es256_token_gives_user_in_org() {
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "test-es256.pem",
            claims(),
        );
        let id = verify(&verifier(), &t).unwrap();
        assert_eq!(id.principal.to_string(), r#"User::"alice""#);
        assert_eq!(id.parents[0].to_string(), r#"Org::"acme""#);
        assert_eq!(id.method, AuthMethod::Jwt);
    }

    #[test]
    fn valid_rs256_token_verifies() {
        let t = sign(
            Algorithm::RS256,
            Some("test-rs256"),
            "test-rs256.pem",
            claims(),
        );
        verify(&verifier(), &t).unwrap();
    }

    #[test]
    fn unknown_issuer_is_rejected() {
        let mut c = claims();
        c["iss"] = json!("https://evil.example/");
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "unknown_issuer");
    }

    #[test]
    fn unknown_kid_is_rejected() {
        let t = sign(Algorithm::ES256, Some("nope"), "test-es256.pem", claims());
        assert_eq!(reason(&t), "unknown_key");
    }

    #[test]
    fn rsa_kid_with_ec_algorithm_is_rejected() {
        let t = sign(
            Algorithm::ES256,
            Some("test-rs256"),
            "test-es256.pem",
            claims(),
        );
        assert_eq!(reason(&t), "algorithm_key_mismatch");
    }

    #[test]
    fn missing_kid_uses_the_only_matching_key() {
        let t = sign(Algorithm::ES256, None, "test-es256.pem", claims());
        verify(&verifier(), &t).unwrap();
    }

    #[test]
    fn hs256_token_with_public_key_as_secret_is_rejected() {
        // The classic algorithm-confusion attack: sign HS256 with the
        // issuer's public key bytes as the HMAC secret.
        let secret = std::fs::read(fixture("test-issuer.jwks.json")).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("test-rs256".into());
        let t =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(reason(&t), "algorithm_not_allowed");
    }

    #[test]
    fn oversized_token_is_rejected_before_parsing() {
        let t = "a".repeat(9000);
        assert_eq!(reason(&t), "token_too_large");
    }

    /// An RSA key as Keycloak publishes next to its signing keys by
    /// default: for encrypting to the provider.
    fn rsa_oaep_encryption_key() -> serde_json::Value {
        let mut key = fixture_jwk(1);
        key["kid"] = json!("kc-enc-5n0Q8GxXzVWb0bLg1b4zY0RM0Xk9w2sJ6nY");
        key["alg"] = json!("RSA-OAEP");
        key["use"] = json!("enc");
        key
    }

    #[test]
    fn jwks_with_an_rsa_oaep_encryption_key_still_verifies_es256_tokens() {
        let (v, _dir) = verifier_with_keys(vec![rsa_oaep_encryption_key(), fixture_jwk(0)]);
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "test-es256.pem",
            claims(),
        );
        verify(&v, &t).unwrap();
    }

    #[test]
    fn jwks_whose_only_keys_are_unusable_is_refused_naming_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(
            &path,
            json!({"keys": [rsa_oaep_encryption_key()]}).to_string(),
        )
        .unwrap();
        let config = AuthnConfig {
            jwt: vec![issuer_config(path)],
            ..AuthnConfig::default()
        };
        let err = JwtVerifier::new(&config).unwrap_err()[0].to_string();
        assert!(
            err.ends_with("none of its keys can verify this issuer's tokens: key 0 (kid \"kc-enc-5n0Q8GxXzVWb0bLg1b4zY0RM0Xk9w2sJ6nY\"): an encryption key (use: enc) never verifies signatures"),
            "{err}"
        );
    }

    #[test]
    fn skipped_keys_are_counted_by_issuer_and_reason() {
        let mut ic = issuer_config(std::path::PathBuf::new());
        ic.issuer = "https://skipped-keys.test/".into();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let keys = json!({"keys": [rsa_oaep_encryption_key(), fixture_jwk(0), {"kty": "oct", "k": "c2VjcmV0"}]});
        std::fs::write(&path, keys.to_string()).unwrap();
        ic.jwks_file = Some(path);
        let _v = verifier_with(ic);
        let mut registry = prometheus_client::registry::Registry::default();
        crate::metrics::global().register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        for reason in ["encryption_key", "symmetric_key"] {
            let line = format!("portcullis_jwks_keys_skipped_total{{issuer=\"https://skipped-keys.test/\",reason=\"{reason}\"}} 1\n");
            assert!(out.contains(&line), "{line} in\n{out}");
        }
    }

    #[test]
    fn enc_key_with_the_signing_kid_never_verifies() {
        // An EC P-256 encryption key (no alg) listed first under the
        // signing key's kid. A token signed with its private key must not
        // pass as the issuer's.
        for marking in [
            json!({"use": "enc"}),
            json!({"key_ops": ["deriveKey", "deriveBits"]}),
            json!({"key_ops": ["encrypt"], "alg": "ES256"}),
            json!({"use": "enc", "alg": "ECDH-ES+A256KW"}),
        ] {
            let mut enc = ec_public_jwk("untrusted-es256.pem");
            enc["kid"] = json!("test-es256");
            for (k, v) in marking.as_object().unwrap() {
                enc[k] = v.clone();
            }
            let (v, _dir) = verifier_with_keys(vec![enc, fixture_jwk(0)]);
            let forged = sign(
                Algorithm::ES256,
                Some("test-es256"),
                "untrusted-es256.pem",
                claims(),
            );
            assert_eq!(
                verify(&v, &forged).unwrap_err().reason,
                "bad_signature",
                "{marking}"
            );
            let genuine = sign(
                Algorithm::ES256,
                Some("test-es256"),
                "test-es256.pem",
                claims(),
            );
            verify(&v, &genuine).unwrap();
            // Without a kid the only signing key decides, not the enc key.
            let forged = sign(Algorithm::ES256, None, "untrusted-es256.pem", claims());
            assert_eq!(verify(&v, &forged).unwrap_err().reason, "bad_signature");
        }
    }

    #[test]
    fn a_key_of_an_algorithm_the_issuer_does_not_allow_never_verifies() {
        // The same kid for an ES256 key the issuer allows and an RS256 one
        // it does not: an RS256 token is refused before any key is tried.
        let mut ic = issuer_config(std::path::PathBuf::new());
        ic.algorithms = vec!["ES256".into()];
        let mut rsa = fixture_jwk(1);
        rsa["kid"] = json!("test-es256");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({"keys": [rsa, fixture_jwk(0)]}).to_string()).unwrap();
        ic.jwks_file = Some(path);
        let v = verifier_with(ic);
        let t = sign(
            Algorithm::RS256,
            Some("test-es256"),
            "test-rs256.pem",
            claims(),
        );
        assert_eq!(verify(&v, &t).unwrap_err().reason, "algorithm_not_allowed");
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "test-es256.pem",
            claims(),
        );
        verify(&v, &t).unwrap();
    }

    #[test]
    fn every_signing_key_under_a_shared_kid_is_tried_not_only_the_first() {
        // Two signing keys under one kid (a provider rotating carelessly):
        // a token of the second verifies, a key of neither does not.
        let mut rotated = ec_public_jwk("rotated-es256.pem");
        rotated["kid"] = json!("test-es256");
        rotated["use"] = json!("sig");
        let (v, _dir) = verifier_with_keys(vec![fixture_jwk(0), rotated]);
        for pem in ["test-es256.pem", "rotated-es256.pem"] {
            let t = sign(Algorithm::ES256, Some("test-es256"), pem, claims());
            verify(&v, &t).unwrap();
        }
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "untrusted-es256.pem",
            claims(),
        );
        assert_eq!(verify(&v, &t).unwrap_err().reason, "bad_signature");
    }

    #[test]
    fn verified_tokens_are_served_from_the_cache_until_exp() {
        let v = verifier();
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "test-es256.pem",
            claims(),
        );
        let first = verify(&v, &t).unwrap();
        let key: [u8; 32] = sha2::Sha256::digest(t.as_bytes()).into();
        assert_eq!(
            v.cache
                .as_ref()
                .unwrap()
                .get(&key)
                .map(|h| h.identity.clone()),
            Some(first.clone())
        );
        // A request time past exp (+ leeway) does not get the cached answer.
        let later = now() + 400;
        assert_eq!(
            block(v.verify(&t, later, Instant::now()))
                .unwrap_err()
                .reason,
            "expired"
        );
        // ... and the expired entry gave its room up.
        assert!(v.cache.as_ref().unwrap().get(&key).is_none());
    }
}
