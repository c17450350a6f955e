//! JWT bearer tokens (RFC 7519) verified by the rules of RFC 8725, against
//! issuers with static keys (a JWKS file), remote keys (`jwks`) or an HMAC
//! secret. Every header field is attacker input: we never follow `jku`,
//! `x5u` or an embedded `jwk` (such tokens are refused outright), refuse any
//! `crit` extension, nested tokens, duplicate JSON members and non-canonical
//! compact forms. Verified tokens are cached until they expire.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::Digest;

use super::jwks::{KeysUnavailable, RemoteJwks};
use super::{entity_uid, AuthMethod, AuthnFailure, Identity, TokenFacts};
use crate::authn::config::{AuthnConfig, IssuerConfig};

/// Parses an algorithm name from the configuration. Symmetric algorithms
/// are accepted only for an issuer with an explicit HMAC secret.
pub fn parse_algorithm(name: &str, symmetric_allowed: bool) -> Result<Algorithm, String> {
    let alg: Algorithm = name.parse().map_err(|_| {
        format!("'{name}' is not a JWS algorithm (use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)")
    })?;
    let symmetric = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    if symmetric && !symmetric_allowed {
        return Err(format!(
            "'{name}' is symmetric; it needs an hmac_secret_file (asymmetric algorithms are the default)"
        ));
    }
    if !symmetric && symmetric_allowed {
        return Err(format!(
            "'{name}' is asymmetric; an issuer with an hmac_secret_file accepts only HS256, HS384 or HS512"
        ));
    }
    Ok(alg)
}

/// Smallest HMAC secret accepted (RFC 7518 3.2: at least the hash size).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// An issuer's key material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The file could not be read.
    #[error("issuer '{issuer}': cannot read key file {path}: {source}")]
    Unreadable {
        issuer: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a JWKS (or not a usable secret).
    #[error("issuer '{issuer}': {path} is not valid: {message}")]
    Malformed {
        issuer: String,
        path: PathBuf,
        message: String,
    },
}

/// One verification key.
#[derive(Debug)]
pub struct Key {
    kid: Option<String>,
    /// The algorithms this key may verify, from its type, curve and `alg`.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

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

impl Issuer {
    /// Checks the signature and the registered claims.
    fn decode(
        &self,
        token: &str,
        key: &Key,
        alg: Algorithm,
        leeway: u64,
    ) -> Result<Map<String, Value>, AuthnFailure> {
        let mut validation = Validation::new(alg);
        validation.leeway = leeway;
        // Time claims are checked against the request's time in
        // `identity`, not against this process's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = true;
        validation.set_audience(&self.config.audiences);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| map_error(e.kind()))?;
        Ok(data.claims)
    }

    /// The rules `jsonwebtoken` does not apply (time claims against the
    /// request's time, every audience ours, lifetime), then claims to
    /// identity.
    fn identity(
        &self,
        claims: Map<String, Value>,
        now_epoch: u64,
        leeway: u64,
    ) -> Result<Verified, AuthnFailure> {
        let cfg = &self.config;
        // Every audience the token names must be ours: a token meant for
        // another service as well is not accepted here.
        let wrong_audience = || {
            AuthnFailure::new(
                "wrong_audience",
                "the token was not issued for this API (aud)",
            )
        };
        match claims.get("aud") {
            Some(Value::String(a)) if cfg.audiences.contains(a) => {}
            Some(Value::Array(list))
                if !list.is_empty()
                    && list.iter().all(|a| {
                        a.as_str()
                            .is_some_and(|a| cfg.audiences.iter().any(|c| c == a))
                    }) => {}
            _ => return Err(wrong_audience()),
        }
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or_else(|| {
            AuthnFailure::new(
                "malformed_claim",
                "the token's 'exp' claim must be a number",
            )
        })?;
        let iat = match claims.get("iat") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                AuthnFailure::new(
                    "malformed_claim",
                    "the token's 'iat' claim must be a number",
                )
            })?),
        };
        if exp.saturating_add(leeway) < now_epoch {
            return Err(AuthnFailure::new(
                "expired",
                "the token has expired; get a new one",
            ));
        }
        match claims.get("nbf") {
            None => {}
            Some(v) => {
                let nbf = v.as_u64().ok_or_else(|| {
                    AuthnFailure::new(
                        "malformed_claim",
                        "the token's 'nbf' claim must be a number",
                    )
                })?;
                if nbf > now_epoch + leeway {
                    return Err(AuthnFailure::new(
                        "not_yet_valid",
                        "the token is not valid yet (nbf is in the future)",
                    ));
                }
            }
        }
        if let Some(iat) = iat {
            if iat > now_epoch + leeway {
                return Err(AuthnFailure::new(
                    "issued_in_future",
                    "the token's iat is in the future; check the issuer's clock",
                ));
            }
        }
        if let Some(max) = cfg.max_lifetime_seconds {
            let Some(iat) = iat else {
                return Err(AuthnFailure::new(
                    "missing_claim",
                    "the token has no 'iat' claim (this issuer's tokens must state their lifetime)",
                ));
            };
            if exp.saturating_sub(iat) > max {
                return Err(AuthnFailure::new(
                    "lifetime_too_long",
                    format!("the token lives longer than the {max} seconds this API accepts; request a shorter-lived token"),
                ));
            }
        }
        let subject = claims
            .get(&cfg.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                AuthnFailure::new(
                    "missing_subject",
                    format!(
                        "the token has no '{}' claim naming the caller",
                        cfg.subject_claim
                    ),
                )
            })?;
        let principal = entity_uid(&cfg.principal_type, subject).ok_or_else(|| {
            AuthnFailure::new("bad_subject", "the token's subject cannot be used")
        })?;
        let mut parents = Vec::new();
        if let Some(org_claim) = &cfg.org_claim {
            if let Some(org) = claims.get(org_claim).and_then(Value::as_str) {
                if !org.is_empty() {
                    parents.extend(entity_uid(&cfg.org_type, org));
                }
            }
        }
        if let Some(roles_claim) = &cfg.roles_claim {
            for role in strings(claims.get(roles_claim)) {
                parents.extend(entity_uid(&cfg.role_type, &role));
            }
        }
        let mut scopes = BTreeSet::new();
        if let Some(Value::String(s)) = claims.get("scope") {
            scopes.extend(s.split_ascii_whitespace().map(str::to_string));
        }
        if let Some(Value::Array(list)) = claims.get("scp") {
            scopes.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
        }
        let amr = strings(claims.get("amr"));
        let acr = claims.get("acr").and_then(Value::as_str);
        let mfa = amr.iter().any(|a| cfg.mfa_amr_values.contains(a))
            || acr.is_some_and(|a| cfg.mfa_acr_values.iter().any(|c| c == a));
        let mut context_claims = BTreeMap::new();
        for name in &cfg.context_claims {
            match claims.get(name) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => {
                    context_claims.insert(name.clone(), s.clone());
                }
                Some(other) => {
                    context_claims.insert(name.clone(), other.to_string());
                }
            }
        }
        Ok(Verified {
            identity: Identity {
                principal,
                parents,
                method: AuthMethod::Jwt,
                token: TokenFacts {
                    scopes,
                    claims: context_claims,
                    mfa,
                },
            },
            issuer: cfg.issuer.clone(),
            exp,
        })
    }
}

/// A claim holding a string or an array of strings, as strings.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
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

fn malformed() -> AuthnFailure {
    AuthnFailure::new(
        "malformed_token",
        "the bearer token is not a well-formed JWT",
    )
}

type JsonObject = Map<String, Value>;

/// Splits a compact JWS into exactly three canonical base64url segments
/// (no padding, no `+`/`/`, no whitespace) and parses the header and
/// payload as JSON objects without duplicate members. The payload is read
/// only to choose the issuer; the verified claims are checked afterwards.
fn split_compact(token: &str) -> Result<(JsonObject, JsonObject), AuthnFailure> {
    let segments: Vec<&str> = token.split('.').collect();
    if segments.len() != 3 {
        return Err(malformed());
    }
    let canonical = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if segments[..2].iter().any(|s| s.is_empty()) || !segments.iter().all(|s| canonical(s)) {
        return Err(malformed());
    }
    let object = |segment: &str| -> Result<Map<String, Value>, AuthnFailure> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| malformed())?;
        let strict = crate::json::from_slice(&bytes, |_| DUPLICATE.to_string()).map_err(|e| {
            if e.to_string().contains(DUPLICATE) {
                AuthnFailure::new(
                    "duplicate_member",
                    "the token repeats a JSON member; it is ambiguous and refused",
                )
            } else {
                malformed()
            }
        })?;
        match strict {
            Value::Object(map) => Ok(map),
            _ => Err(malformed()),
        }
    };
    Ok((object(segments[0])?, object(segments[1])?))
}

/// Header members that point at keys or nest tokens: never followed.
fn check_header(
    raw: &Map<String, Value>,
    header: &jsonwebtoken::Header,
) -> Result<(), AuthnFailure> {
    for name in ["jku", "x5u", "jwk", "x5c"] {
        if raw.contains_key(name) {
            return Err(AuthnFailure::new(
                "header_not_allowed",
                format!("the token's '{name}' header is not accepted; keys come only from the issuer's configured key set"),
            ));
        }
    }
    if raw.contains_key("crit") || header.crit.is_some() {
        return Err(AuthnFailure::new(
            "unsupported_critical_header",
            "the token names critical header extensions this service does not support",
        ));
    }
    if raw.contains_key("enc") || raw.contains_key("zip") {
        return Err(malformed());
    }
    if header
        .cty
        .as_deref()
        .is_some_and(|c| c.eq_ignore_ascii_case("jwt"))
    {
        return Err(AuthnFailure::new(
            "nested_token",
            "nested tokens (cty: JWT) are not accepted",
        ));
    }
    Ok(())
}

const DUPLICATE: &str = "duplicate JSON member";

fn map_error(kind: &jsonwebtoken::errors::ErrorKind) -> AuthnFailure {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => AuthnFailure::new("expired", "the token has expired; get a new one"),
        K::ImmatureSignature => AuthnFailure::new(
            "not_yet_valid",
            "the token is not valid yet (nbf is in the future)",
        ),
        K::InvalidAudience => AuthnFailure::new(
            "wrong_audience",
            "the token was not issued for this API (aud)",
        ),
        K::InvalidIssuer => {
            AuthnFailure::new("unknown_issuer", "the token's issuer is not trusted")
        }
        K::InvalidSignature => {
            AuthnFailure::new("bad_signature", "the token's signature does not verify")
        }
        K::MissingRequiredClaim(claim) => {
            AuthnFailure::new("missing_claim", format!("the token has no '{claim}' claim"))
        }
        K::InvalidClaimFormat(claim) => AuthnFailure::new(
            "malformed_claim",
            format!("the token's '{claim}' claim has the wrong type"),
        ),
        K::InvalidAlgorithm => AuthnFailure::new(
            "algorithm_key_mismatch",
            "the token's algorithm does not match its signing key",
        ),
        _ => malformed(),
    }
}

fn load_keys(ic: &IssuerConfig, path: &PathBuf) -> Result<Vec<Key>, JwksError> {
    let text = std::fs::read_to_string(path).map_err(|source| JwksError::Unreadable {
        issuer: ic.issuer.clone(),
        path: path.clone(),
        source,
    })?;
    parse_key_set(text.as_bytes()).map_err(|message| JwksError::Malformed {
        issuer: ic.issuer.clone(),
        path: path.clone(),
        message,
    })
}

fn load_secret(ic: &IssuerConfig, path: &PathBuf) -> Result<Vec<Key>, JwksError> {
    let bytes = std::fs::read(path).map_err(|source| JwksError::Unreadable {
        issuer: ic.issuer.clone(),
        path: path.clone(),
        source,
    })?;
    // A trailing newline from an editor or `echo` is not part of the secret.
    let secret = bytes.trim_ascii_end();
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(JwksError::Malformed {
            issuer: ic.issuer.clone(),
            path: path.clone(),
            message: format!(
                "the HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes (it has {})",
                secret.len()
            ),
        });
    }
    Ok(vec![Key {
        kid: None,
        algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        key: DecodingKey::from_secret(secret),
    }])
}

/// Parses a JWKS document into verification keys; every key must be usable.
pub(crate) fn parse_key_set(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if set.keys.is_empty() {
        return Err("it has no keys".into());
    }
    set.keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| {
            let algorithms = key_algorithms(jwk).map_err(|m| format!("key {i}: {m}"))?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
            Ok(Key {
                kid: jwk.common.key_id.clone(),
                algorithms,
                key,
            })
        })
        .collect()
}

/// The algorithms a JWK may verify: its type and curve decide the family,
/// and a declared `alg` narrows it to exactly one.
fn key_algorithms(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    use Algorithm::*;
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => return Err("unsupported elliptic curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys do not belong in a public JWKS".into())
        }
        _ => return Err("unsupported key type".into()),
    };
    match &jwk.common.key_algorithm {
        None => Ok(family),
        Some(declared) => {
            let declared: Algorithm = declared
                .to_string()
                .parse()
                .map_err(|_| format!("unsupported alg {declared}"))?;
            if family.contains(&declared) {
                Ok(vec![declared])
            } else {
                Err(format!("alg {declared:?} does not match the key type"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const ISS: &str = "https://idp.test.portcullis/";

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keys")
            .join(name)
    }

    fn issuer_config(jwks_file: PathBuf) -> IssuerConfig {
        IssuerConfig {
            issuer: ISS.into(),
            audiences: vec!["portcullis".into()],
            jwks_file: Some(jwks_file),
            algorithms: vec!["ES256".into(), "RS256".into()],
            principal_type: "User".into(),
            subject_claim: "sub".into(),
            org_claim: Some("org".into()),
            org_type: "Org".into(),
            jwks_url: None,
            discovery: false,
            hmac_secret_file: None,
            max_lifetime_seconds: None,
            roles_claim: Some("roles".into()),
            role_type: "Role".into(),
            context_claims: vec!["tier".into()],
            mfa_amr_values: vec!["mfa".into()],
            mfa_acr_values: vec!["urn:acr:mfa".into()],
        }
    }

    fn verifier_with(ic: IssuerConfig) -> JwtVerifier {
        let config = AuthnConfig {
            jwt: vec![ic],
            ..AuthnConfig::default()
        };
        JwtVerifier::new(&config).unwrap()
    }

    fn verifier() -> JwtVerifier {
        verifier_with(issuer_config(fixture("test-issuer.jwks.json")))
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn verify(v: &JwtVerifier, token: &str) -> Result<Identity, AuthnFailure> {
        block(v.verify(token, now(), Instant::now()))
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(alg: Algorithm, kid: Option<&str>, pem: &str, claims: Value) -> String {
        let pem = std::fs::read(fixture(pem)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn claims() -> Value {
        json!({"iss": ISS, "aud": "portcullis", "sub": "alice", "org": "acme",
               "exp": now() + 300, "iat": now()})
    }

    fn reason(token: &str) -> &'static str {
        verify(&verifier(), token).unwrap_err().reason
    }

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
    fn forged_signature_is_rejected() {
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "untrusted-es256.pem",
            claims(),
        );
        assert_eq!(reason(&t), "bad_signature");
    }

    #[test]
    fn expired_token_is_rejected_beyond_leeway() {
        let mut c = claims();
        c["exp"] = json!(now() - 31);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "expired");
    }

    #[test]
    fn expired_within_leeway_is_accepted() {
        let mut c = claims();
        c["exp"] = json!(now() - 5);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        verify(&verifier(), &t).unwrap();
    }

    #[test]
    fn nbf_in_future_is_rejected() {
        let mut c = claims();
        c["nbf"] = json!(now() + 120);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "not_yet_valid");
    }

    #[test]
    fn iat_in_future_is_rejected() {
        let mut c = claims();
        c["iat"] = json!(now() + 120);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "issued_in_future");
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let mut c = claims();
        c["aud"] = json!("someone-else");
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "wrong_audience");
    }

    #[test]
    fn missing_exp_is_rejected() {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "missing_claim");
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
    fn alg_none_and_garbage_are_malformed() {
        assert_eq!(reason("garbage"), "malformed_token");
        // {"alg":"none"} . {"iss":...} . (empty signature)
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let t = format!("{}.{}.", b64(json!({"alg": "none"})), b64(claims()));
        assert_eq!(reason(&t), "malformed_token");
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
    fn crit_header_is_rejected() {
        let pem = std::fs::read(fixture("test-es256.pem")).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("test-es256".into());
        header.crit = Some(vec!["exp-ext".into()]);
        let t = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_ec_pem(&pem).unwrap())
            .unwrap();
        assert_eq!(reason(&t), "unsupported_critical_header");
    }

    #[test]
    fn oversized_token_is_rejected_before_parsing() {
        let t = "a".repeat(9000);
        assert_eq!(reason(&t), "token_too_large");
    }

    #[test]
    fn missing_jwks_file_names_issuer_and_path() {
        let config = AuthnConfig {
            jwt: vec![issuer_config(PathBuf::from("/nonexistent/jwks.json"))],
            ..AuthnConfig::default()
        };
        let errs = JwtVerifier::new(&config).unwrap_err();
        let msg = errs[0].to_string();
        assert!(
            msg.contains(ISS) && msg.contains("/nonexistent/jwks.json"),
            "{msg}"
        );
    }

    #[test]
    fn roles_scopes_mfa_and_claims_reach_the_identity() {
        let mut c = claims();
        c["roles"] = json!(["invoker", "privileged"]);
        c["scope"] = json!("models:read models:invoke");
        c["scp"] = json!(["extra"]);
        c["amr"] = json!(["pwd", "mfa"]);
        c["tier"] = json!("gold");
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        let id = verify(&verifier(), &t).unwrap();
        let parents: Vec<String> = id.parents.iter().map(ToString::to_string).collect();
        assert!(
            parents.contains(&r#"Role::"privileged""#.to_string()),
            "{parents:?}"
        );
        assert!(parents.contains(&r#"Org::"acme""#.to_string()));
        assert!(id.token.mfa);
        assert_eq!(
            id.token
                .scopes
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["extra", "models:invoke", "models:read"]
        );
        assert_eq!(
            id.token.claims.get("tier").map(String::as_str),
            Some("gold")
        );
    }

    #[test]
    fn acr_can_mean_mfa_and_absent_amr_means_no_mfa() {
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "test-es256.pem",
            claims(),
        );
        assert!(!verify(&verifier(), &t).unwrap().token.mfa);
        let mut c = claims();
        c["acr"] = json!("urn:acr:mfa");
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert!(verify(&verifier(), &t).unwrap().token.mfa);
    }

    #[test]
    fn audience_array_with_a_foreign_value_is_rejected() {
        let mut c = claims();
        c["aud"] = json!(["portcullis", "someone-else"]);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "wrong_audience");
        let mut c = claims();
        c["aud"] = json!(["portcullis"]);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        verify(&verifier(), &t).unwrap();
    }

    #[test]
    fn lifetime_longer_than_the_maximum_is_rejected() {
        let mut ic = issuer_config(fixture("test-issuer.jwks.json"));
        ic.max_lifetime_seconds = Some(600);
        let v = verifier_with(ic);
        let mut c = claims();
        c["exp"] = json!(now() + 3600);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(verify(&v, &t).unwrap_err().reason, "lifetime_too_long");
        let mut c = claims();
        c.as_object_mut().unwrap().remove("iat");
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(verify(&v, &t).unwrap_err().reason, "missing_claim");
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "test-es256.pem",
            claims(),
        );
        verify(&v, &t).unwrap();
    }

    #[test]
    fn hmac_issuer_needs_a_long_secret_and_verifies_hs256() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too-short\n").unwrap();
        let mut ic = issuer_config(fixture("unused"));
        ic.jwks_file = None;
        ic.hmac_secret_file = Some(short);
        ic.algorithms = vec!["HS256".into()];
        let config = AuthnConfig {
            jwt: vec![ic.clone()],
            ..AuthnConfig::default()
        };
        let err = JwtVerifier::new(&config).unwrap_err()[0].to_string();
        assert!(err.contains("at least 32 bytes"), "{err}");

        let secret = "0123456789abcdef0123456789abcdef-secret";
        let long = dir.path().join("long");
        std::fs::write(&long, format!("{secret}\n")).unwrap();
        ic.hmac_secret_file = Some(long);
        let v = verifier_with(ic);
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        verify(&v, &t).unwrap();
        let es = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "test-es256.pem",
            claims(),
        );
        assert_eq!(verify(&v, &es).unwrap_err().reason, "algorithm_not_allowed");
    }

    #[test]
    fn symmetric_algorithms_need_a_secret() {
        assert!(parse_algorithm("HS256", false).is_err());
        assert!(parse_algorithm("HS256", true).is_ok());
        assert!(parse_algorithm("RS256", true).is_err());
        assert!(parse_algorithm("ES256", false).is_ok());
    }

    #[test]
    fn duplicate_members_and_key_headers_are_refused() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let header = b64(r#"{"alg":"ES256","kid":"test-es256"}"#);
        let dup = b64(&format!(
            r#"{{"iss":"{ISS}","aud":"portcullis","sub":"alice","sub":"admin","exp":{}}}"#,
            now() + 60
        ));
        assert_eq!(reason(&format!("{header}.{dup}.c2ln")), "duplicate_member");
        let jku = b64(r#"{"alg":"ES256","jku":"http://127.0.0.1:9/keys"}"#);
        let payload = b64(&claims().to_string());
        assert_eq!(
            reason(&format!("{jku}.{payload}.c2ln")),
            "header_not_allowed"
        );
        assert_eq!(
            reason(&format!("{header}=.{payload}.c2ln")),
            "malformed_token"
        );
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
