//! Key material: the algorithms an issuer's configuration names, JWKS
//! documents (from a file or fetched), and HMAC secrets. Every key must be
//! usable, and says which algorithms it may verify.

use std::path::PathBuf;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::authn::config::IssuerConfig;

/// An algorithm name in an issuer's configuration that it cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnusableAlgorithm {
    /// Not a JWS algorithm name we know.
    #[error("'{0}' is not a JWS algorithm (use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)")]
    Unknown(String),
    /// HS256, HS384 or HS512 for an issuer without an HMAC secret.
    #[error(
        "'{0}' is symmetric; it needs an hmac_secret_file (asymmetric algorithms are the default)"
    )]
    SymmetricWithoutSecret(String),
    /// An asymmetric algorithm for an issuer with an HMAC secret.
    #[error("'{0}' is asymmetric; an issuer with an hmac_secret_file accepts only HS256, HS384 or HS512")]
    AsymmetricWithSecret(String),
}

/// Parses an algorithm name from the configuration. Symmetric algorithms
/// are accepted only for an issuer with an explicit HMAC secret.
pub fn parse_algorithm(
    name: &str,
    symmetric_allowed: bool,
) -> Result<Algorithm, UnusableAlgorithm> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| UnusableAlgorithm::Unknown(name.to_owned()))?;
    let symmetric = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    if symmetric && !symmetric_allowed {
        return Err(UnusableAlgorithm::SymmetricWithoutSecret(name.to_owned()));
    }
    if !symmetric && symmetric_allowed {
        return Err(UnusableAlgorithm::AsymmetricWithSecret(name.to_owned()));
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
    /// The file is not a usable JWKS.
    #[error("issuer '{issuer}': {path} is not valid: {problem}")]
    Malformed {
        issuer: String,
        path: PathBuf,
        problem: BadKeySet,
    },
    /// The HMAC secret is shorter than [`MIN_HMAC_SECRET_BYTES`].
    #[error("issuer '{issuer}': {path} is not valid: the HMAC secret must be at least {min} bytes (it has {length})", min = MIN_HMAC_SECRET_BYTES)]
    ShortSecret {
        issuer: String,
        path: PathBuf,
        length: usize,
    },
}

/// Why a JWKS document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BadKeySet {
    /// Not JSON, or not shaped like a JWKS.
    #[error("{0}")]
    NotJwks(serde_json::Error),
    #[error("it has no keys")]
    NoKeys,
    /// One key cannot verify tokens.
    #[error("key {index}: {problem}")]
    UnusableKey { index: usize, problem: UnusableKey },
    /// One key's parameters do not make a key.
    #[error("key {index}: {error}")]
    Undecodable {
        index: usize,
        error: jsonwebtoken::errors::Error,
    },
}

/// Why one JWK cannot verify tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnusableKey {
    #[error("unsupported elliptic curve")]
    UnsupportedCurve,
    #[error("symmetric (oct) keys do not belong in a public JWKS")]
    SymmetricKey,
    #[error("unsupported key type")]
    UnsupportedKeyType,
    /// The declared `alg` (as written) is not one we verify.
    #[error("unsupported alg {0}")]
    UnsupportedAlg(String),
    /// The declared `alg` is not of the key's family.
    #[error("alg {0:?} does not match the key type")]
    AlgorithmMismatch(Algorithm),
}

/// One verification key.
#[derive(Debug)]
pub struct Key {
    pub(super) kid: Option<String>,
    /// The algorithms this key may verify, from its type, curve and `alg`.
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) key: DecodingKey,
}

pub(super) fn load_keys(ic: &IssuerConfig, path: &PathBuf) -> Result<Vec<Key>, JwksError> {
    let text = std::fs::read_to_string(path).map_err(|source| JwksError::Unreadable {
        issuer: ic.issuer.clone(),
        path: path.clone(),
        source,
    })?;
    parse_key_set(text.as_bytes()).map_err(|problem| JwksError::Malformed {
        issuer: ic.issuer.clone(),
        path: path.clone(),
        problem,
    })
}

pub(super) fn load_secret(ic: &IssuerConfig, path: &PathBuf) -> Result<Vec<Key>, JwksError> {
    let bytes = std::fs::read(path).map_err(|source| JwksError::Unreadable {
        issuer: ic.issuer.clone(),
        path: path.clone(),
        source,
    })?;
    // A trailing newline from an editor or `echo` is not part of the secret.
    let secret = bytes.trim_ascii_end();
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(JwksError::ShortSecret {
            issuer: ic.issuer.clone(),
            path: path.clone(),
            length: secret.len(),
        });
    }
    Ok(vec![Key {
        kid: None,
        algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        key: DecodingKey::from_secret(secret),
    }])
}

/// Parses a JWKS document into verification keys; every key must be usable.
pub(crate) fn parse_key_set(bytes: &[u8]) -> Result<Vec<Key>, BadKeySet> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(BadKeySet::NotJwks)?;
    if set.keys.is_empty() {
        return Err(BadKeySet::NoKeys);
    }
    set.keys
        .iter()
        .enumerate()
        .map(|(index, jwk)| {
            let algorithms =
                key_algorithms(jwk).map_err(|problem| BadKeySet::UnusableKey { index, problem })?;
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|error| BadKeySet::Undecodable { index, error })?;
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
fn key_algorithms(jwk: &Jwk) -> Result<Vec<Algorithm>, UnusableKey> {
    use Algorithm::*;
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => return Err(UnusableKey::UnsupportedCurve),
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        AlgorithmParameters::OctetKey(_) => return Err(UnusableKey::SymmetricKey),
        _ => return Err(UnusableKey::UnsupportedKeyType),
    };
    match &jwk.common.key_algorithm {
        None => Ok(family),
        Some(declared) => {
            let declared: Algorithm = declared
                .to_string()
                .parse()
                .map_err(|_| UnusableKey::UnsupportedAlg(declared.to_string()))?;
            if family.contains(&declared) {
                Ok(vec![declared])
            } else {
                Err(UnusableKey::AlgorithmMismatch(declared))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::config::AuthnConfig;
    use crate::authn::jwt::fixtures::*;
    use crate::authn::jwt::JwtVerifier;
    use jsonwebtoken::{EncodingKey, Header};

    #[test]
    fn unusable_algorithms_and_key_sets_read_exactly_as_operators_see_them() {
        let algorithm = |name, symmetric| parse_algorithm(name, symmetric).unwrap_err().to_string();
        assert_eq!(
            algorithm("HS999", false),
            "'HS999' is not a JWS algorithm (use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)"
        );
        assert_eq!(
            algorithm("HS256", false),
            "'HS256' is symmetric; it needs an hmac_secret_file (asymmetric algorithms are the default)"
        );
        assert_eq!(
            algorithm("ES256", true),
            "'ES256' is asymmetric; an issuer with an hmac_secret_file accepts only HS256, HS384 or HS512"
        );

        let key_set = |text: &str| parse_key_set(text.as_bytes()).unwrap_err().to_string();
        assert_eq!(key_set(r#"{"keys": []}"#), "it has no keys");
        let not_json = serde_json::from_str::<JwkSet>("[").unwrap_err().to_string();
        assert_eq!(key_set("["), not_json);
        assert_eq!(
            key_set(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#),
            "key 0: symmetric (oct) keys do not belong in a public JWKS"
        );
        assert_eq!(
            key_set(
                r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "alg": "RS256"}]}"#
            ),
            "key 0: alg RS256 does not match the key type"
        );
        assert_eq!(
            key_set(r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "RSA1_5"}]}"#),
            "key 0: unsupported alg RSA1_5"
        );
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
}
