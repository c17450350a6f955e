//! JWT bearer tokens verified against issuers with static keys (a JWKS file
//! per issuer). Every header field is attacker input: we never follow `jku`,
//! `x5u` or an embedded `jwk`, and refuse any `crit` extension.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{entity_uid, AuthMethod, AuthnFailure, Identity};
use crate::config::{AuthnConfig, IssuerConfig};

/// Parses an algorithm name from the configuration; symmetric algorithms
/// are refused until a secret-based issuer is supported.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name.parse().map_err(|_| {
        format!("'{name}' is not a JWS algorithm (use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)")
    })?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(format!(
            "'{name}' is symmetric; only asymmetric algorithms are accepted for issuers with a JWKS"
        ));
    }
    Ok(alg)
}

/// An issuer's JWKS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The file could not be read.
    #[error("issuer '{issuer}': cannot read JWKS file {path}: {source}")]
    Unreadable {
        issuer: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a JWKS.
    #[error("issuer '{issuer}': {path} is not a valid JWKS: {message}")]
    Malformed {
        issuer: String,
        path: PathBuf,
        message: String,
    },
}

#[derive(Debug)]
struct Key {
    kid: Option<String>,
    /// The algorithms this key may verify, from its type, curve and `alg`.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

#[derive(Debug)]
struct Issuer {
    config: IssuerConfig,
    algorithms: Vec<Algorithm>,
    keys: Vec<Key>,
}

/// Verifies bearer tokens from the configured issuers.
#[derive(Debug)]
pub struct JwtVerifier {
    issuers: HashMap<String, Issuer>,
    leeway: u64,
    max_token_bytes: usize,
}

impl JwtVerifier {
    /// Loads every issuer's JWKS, reporting all unusable files at once.
    pub fn new(config: &AuthnConfig) -> Result<Self, Vec<JwksError>> {
        let mut issuers = HashMap::new();
        let mut errors = Vec::new();
        for ic in &config.jwt {
            match load_keys(ic) {
                Ok(keys) => {
                    let algorithms = ic
                        .algorithms
                        .iter()
                        .filter_map(|a| parse_algorithm(a).ok())
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
        Ok(JwtVerifier {
            issuers,
            leeway: config.leeway_seconds,
            max_token_bytes: config.max_token_bytes,
        })
    }

    /// Verifies a compact JWS and maps its claims to an identity.
    pub fn verify(&self, token: &str, now_epoch: u64) -> Result<Identity, AuthnFailure> {
        if token.len() > self.max_token_bytes {
            return Err(AuthnFailure::new(
                "token_too_large",
                format!(
                    "the bearer token is larger than {} bytes",
                    self.max_token_bytes
                ),
            ));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| malformed())?;
        if header.crit.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(AuthnFailure::new(
                "unsupported_critical_header",
                "the token names critical header extensions this service does not support",
            ));
        }
        let iss = peek_issuer(token)?;
        let issuer = self.issuers.get(&iss).ok_or_else(|| {
            AuthnFailure::new("unknown_issuer", "the token's issuer is not trusted")
        })?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(AuthnFailure::new(
                "algorithm_not_allowed",
                format!("tokens from this issuer may not use {:?}", header.alg),
            ));
        }
        let key = issuer.key_for(header.kid.as_deref(), header.alg)?;

        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_audience(&issuer.config.audiences);
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| map_error(e.kind()))?;
        let claims = data.claims;

        if let Some(iat) = claims.get("iat").and_then(Value::as_u64) {
            if iat > now_epoch + self.leeway {
                return Err(AuthnFailure::new(
                    "issued_in_future",
                    "the token's iat is in the future; check the issuer's clock",
                ));
            }
        }
        let cfg = &issuer.config;
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
        Ok(Identity {
            principal,
            parents,
            method: AuthMethod::Jwt,
        })
    }
}

impl Issuer {
    fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Key, AuthnFailure> {
        let unknown = || {
            AuthnFailure::new(
                "unknown_key",
                "the token's signing key (kid) is not one of the issuer's keys",
            )
        };
        let key = match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or_else(unknown)?,
            None => {
                // Without a kid, only an unambiguous key is acceptable.
                let mut candidates = self.keys.iter().filter(|k| k.algorithms.contains(&alg));
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
}

fn malformed() -> AuthnFailure {
    AuthnFailure::new(
        "malformed_token",
        "the bearer token is not a well-formed JWT",
    )
}

/// Reads `iss` from the unverified payload, only to choose whose keys verify
/// the signature; the verified claims are checked again afterwards.
fn peek_issuer(token: &str) -> Result<String, AuthnFailure> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| malformed())?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    match claims.get("iss") {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(AuthnFailure::new(
            "missing_issuer",
            "the token has no 'iss' claim",
        )),
    }
}

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

fn load_keys(ic: &IssuerConfig) -> Result<Vec<Key>, JwksError> {
    let malformed = |message: String| JwksError::Malformed {
        issuer: ic.issuer.clone(),
        path: ic.jwks_file.clone(),
        message,
    };
    let text = std::fs::read_to_string(&ic.jwks_file).map_err(|source| JwksError::Unreadable {
        issuer: ic.issuer.clone(),
        path: ic.jwks_file.clone(),
        source,
    })?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
    if set.keys.is_empty() {
        return Err(malformed("it has no keys".into()));
    }
    set.keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| {
            let algorithms = key_algorithms(jwk).map_err(|m| malformed(format!("key {i}: {m}")))?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| malformed(format!("key {i}: {e}")))?;
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

    fn verifier() -> JwtVerifier {
        let config = AuthnConfig {
            jwt: vec![IssuerConfig {
                issuer: ISS.into(),
                audiences: vec!["portcullis".into()],
                jwks_file: fixture("test-issuer.jwks.json"),
                algorithms: vec!["ES256".into(), "RS256".into()],
                principal_type: "User".into(),
                subject_claim: "sub".into(),
                org_claim: Some("org".into()),
                org_type: "Org".into(),
            }],
            ..AuthnConfig::default()
        };
        JwtVerifier::new(&config).unwrap()
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
        verifier().verify(token, now()).unwrap_err().reason
    }

    #[test]
    fn valid_es256_token_gives_user_in_org() {
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "test-es256.pem",
            claims(),
        );
        let id = verifier().verify(&t, now()).unwrap();
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
        verifier().verify(&t, now()).unwrap();
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
        verifier().verify(&t, now()).unwrap();
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
        verifier().verify(&t, now()).unwrap();
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
            jwt: vec![IssuerConfig {
                issuer: ISS.into(),
                audiences: vec!["portcullis".into()],
                jwks_file: PathBuf::from("/nonexistent/jwks.json"),
                algorithms: vec!["ES256".into()],
                principal_type: "User".into(),
                subject_claim: "sub".into(),
                org_claim: None,
                org_type: "Org".into(),
            }],
            ..AuthnConfig::default()
        };
        let errs = JwtVerifier::new(&config).unwrap_err();
        let msg = errs[0].to_string();
        assert!(
            msg.contains(ISS) && msg.contains("/nonexistent/jwks.json"),
            "{msg}"
        );
    }
}
