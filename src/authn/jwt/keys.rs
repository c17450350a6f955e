//! Key material: the algorithms an issuer's configuration names, JWKS
//! documents (from a file or fetched), and HMAC secrets. Every key must be
//! usable, and says which algorithms it may verify.

use std::path::PathBuf;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::authn::config::IssuerConfig;

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
    parse_key_set(text.as_bytes()).map_err(|message| JwksError::Malformed {
        issuer: ic.issuer.clone(),
        path: path.clone(),
        message,
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
    use crate::authn::config::AuthnConfig;
    use crate::authn::jwt::fixtures::*;
    use crate::authn::jwt::JwtVerifier;
    use jsonwebtoken::{EncodingKey, Header};

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
