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
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::Value;
use sha2::Digest;

use self::compact::{check_header, malformed, split_compact};
pub(crate) use self::keys::parse_key_set;
use self::keys::{load_keys, load_secret};
pub use self::keys::{
    parse_algorithm, BadKeySet, JwksError, Key, UnusableAlgorithm, UnusableKey,
    MIN_HMAC_SECRET_BYTES,
};
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
    cache: Option<moka::sync::Cache<[u8; 32], Arc<Verified>>>,
}

/// Keeps each verified token until its `exp`.
struct UntilExpiry;

impl moka::Expiry<[u8; 32], Arc<Verified>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Verified>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let now = crate::time::now_seconds();
        Some(Duration::from_secs(value.exp.saturating_sub(now)))
    }
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
            let keys = if let Some(path) = &ic.jwks_file {
                load_keys(ic, path).map(Keys::Static)
            } else if let Some(path) = &ic.hmac_secret_file {
                load_secret(ic, path).map(Keys::Static)
            } else {
                Ok(Keys::Remote(Arc::new(RemoteJwks::new(
                    &ic.issuer,
                    ic.jwks_url.as_deref(),
                    &config.jwks,
                ))))
            };
            match keys {
                Ok(keys) => {
                    let algorithms = ic
                        .algorithms
                        .iter()
                        .filter_map(|a| parse_algorithm(a, symmetric).ok())
                        .collect();
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
            moka::sync::Cache::builder()
                .max_capacity(config.token_cache_capacity)
                .expire_after(UntilExpiry)
                .build()
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
            if issuer_usable && now_epoch <= hit.exp.saturating_add(self.leeway) {
                crate::metrics::global().cache(crate::metrics::Cache::Token, true);
                return Ok(hit.identity.clone());
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
                let key = key_for(keys, kid, header.alg)?;
                issuer.decode(token, key, header.alg, self.leeway)?
            }
            Keys::Remote(remote) => {
                let mut loaded = remote.current(now).map_err(keys_unavailable)?;
                if matches!(key_for(&loaded.keys, kid, header.alg), Err(ref f) if f.reason == "unknown_key")
                    && remote.refetch_for_unknown_kid(now).await
                {
                    loaded = remote.current(now).map_err(keys_unavailable)?;
                }
                let key = key_for(&loaded.keys, kid, header.alg)?;
                issuer.decode(token, key, header.alg, self.leeway)?
            }
        };
        issuer.identity(claims, now_epoch, self.leeway)
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

fn key_for<'k>(
    keys: &'k [Key],
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<&'k Key, AuthnFailure> {
    let unknown = || {
        AuthnFailure::new(
            "unknown_key",
            "the token's signing key (kid) is not one of the issuer's keys",
        )
    };
    let key = match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .ok_or_else(unknown)?,
        None => {
            // Without a kid, only an unambiguous key is acceptable.
            let mut candidates = keys.iter().filter(|k| k.algorithms.contains(&alg));
            match (candidates.next(), candidates.next()) {
                (Some(k), None) => k,
                _ => return Err(unknown()),
            }
        }
    };
    if !key.algorithms.contains(&alg) {
        return Err(AuthnFailure::new(
            "algorithm_key_mismatch",
            "the token's algorithm does not match its signing key",
        ));
    }
    Ok(key)
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
    }
}
