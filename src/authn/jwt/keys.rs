//! Key material: the algorithms an issuer's configuration names, JWKS
//! documents (from a file or fetched), and HMAC secrets. A JWKS key is used
//! only to verify signatures, only if it says it may (`use`, `key_ops`), and
//! only for the algorithms its type, its `alg` and the issuer all allow;
//! every other key is skipped (and reported once), never a reason to refuse
//! the issuer's other keys.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::Digest;

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
    /// The file is not a JWKS with a key we can use.
    #[error("issuer '{issuer}': {path} is not valid: {problem}")]
    Malformed {
        issuer: String,
        path: PathBuf,
        problem: BadKeySet,
    },
    /// The HMAC secret is shorter than [`MIN_HMAC_SECRET_BYTES`].
    #[error("issuer '{issuer}': {path} is not valid: the HMAC secret must be at least {min} bytes (it has {length}; {rule})", min = MIN_HMAC_SECRET_BYTES, rule = crate::authn::secret::RULE)]
    ShortSecret {
        issuer: String,
        path: PathBuf,
        length: usize,
    },
}

/// Why a JWKS document cannot be used at all. One key that cannot be used
/// does not make the document unusable (RFC 7517 section 5: members and
/// keys that are not understood are ignored): see [`SkippedKey`].
#[derive(Debug, thiserror::Error)]
pub enum BadKeySet {
    /// Not JSON.
    #[error("{0}")]
    NotJson(serde_json::Error),
    /// JSON, but not an object with a `keys` array.
    #[error("not a JWK Set: it needs a \"keys\" array")]
    NotJwks,
    #[error("it has no keys")]
    NoKeys,
    /// Keys, but not one that can verify this issuer's tokens.
    #[error("none of its keys can verify this issuer's tokens: {}", describe(.0))]
    NoUsableKey(Vec<SkippedKey>),
}

/// The skipped keys, for a message: the first few, then how many more.
fn describe(skipped: &[SkippedKey]) -> String {
    const SHOWN: usize = 5;
    let mut text: Vec<String> = skipped
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect();
    if skipped.len() > SHOWN {
        text.push(format!("and {} more", skipped.len() - SHOWN));
    }
    text.join("; ")
}

/// A key of a JWKS that is not used, and why. The others still are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {index}{}: {reason}", .kid.as_ref().map(|k| format!(" (kid {k:?})")).unwrap_or_default())]
pub struct SkippedKey {
    /// Its position in the document's `keys`.
    pub index: usize,
    /// Its `kid`, if it has a string one.
    pub kid: Option<String>,
    /// Why it is not used.
    pub reason: UnusableKey,
    /// SHA-256 of the key as published, so that it is reported once however
    /// often the document is fetched again.
    pub fingerprint: [u8; 32],
}

/// Why one JWK cannot verify this issuer's tokens (RFC 7517 sections 4.1 to
/// 4.4: its type, intended use, operations and algorithm).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnusableKey {
    /// Not a JSON object, or a member of the wrong JSON type.
    #[error("not a JWK: {0}")]
    NotAJwk(&'static str),
    /// `use` is `enc`: for encrypting to the provider, never for signatures.
    #[error("an encryption key (use: enc) never verifies signatures")]
    EncryptionKey,
    /// `use` is neither `sig` nor `enc`.
    #[error("use {0:?} is not sig")]
    UnknownUse(String),
    /// `key_ops` lists operations, and `verify` is not one of them.
    #[error("its key_ops do not include verify")]
    NoVerifyOperation,
    /// `alg` names a JWE key-management or content-encryption algorithm.
    #[error("alg {0} is an encryption algorithm, not a signature algorithm")]
    EncryptionAlgorithm(String),
    /// `alg` names no signature algorithm we verify (e.g. ES512, ES256K).
    #[error("unsupported alg {0}")]
    UnsupportedAlg(String),
    /// The declared `alg` is not of the key's family.
    #[error("alg {0:?} does not match the key type")]
    AlgorithmMismatch(Algorithm),
    #[error("unsupported elliptic curve {0}")]
    UnsupportedCurve(String),
    #[error("symmetric (oct) keys do not belong in a public JWKS")]
    SymmetricKey,
    #[error("unsupported key type {0}")]
    UnsupportedKeyType(String),
    /// An RSA modulus shorter than 2048 bits (RFC 7518 section 3.3).
    #[error("an RSA key of {0} bits is too small (at least 2048)")]
    WeakRsaKey(usize),
    /// The key's parameters do not make a key (bad base64url, missing
    /// members).
    #[error("its key parameters do not decode: {0}")]
    Undecodable(String),
    /// A good key for algorithms the issuer does not accept.
    #[error("it verifies {0}, which this issuer's algorithms do not include")]
    AlgorithmNotAllowed(String),
}

impl UnusableKey {
    /// A stable, bounded code (the `reason` label of the skipped-keys metric).
    pub fn code(&self) -> &'static str {
        match self {
            UnusableKey::NotAJwk(_) => "not_a_jwk",
            UnusableKey::EncryptionKey => "encryption_key",
            UnusableKey::UnknownUse(_) => "unknown_use",
            UnusableKey::NoVerifyOperation => "no_verify_operation",
            UnusableKey::EncryptionAlgorithm(_) => "encryption_algorithm",
            UnusableKey::UnsupportedAlg(_) => "unsupported_algorithm",
            UnusableKey::AlgorithmMismatch(_) => "algorithm_mismatch",
            UnusableKey::UnsupportedCurve(_) => "unsupported_curve",
            UnusableKey::SymmetricKey => "symmetric_key",
            UnusableKey::UnsupportedKeyType(_) => "unsupported_key_type",
            UnusableKey::WeakRsaKey(_) => "weak_key",
            UnusableKey::Undecodable(_) => "undecodable",
            UnusableKey::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
        }
    }
}

/// One verification key: a signing key of the issuer (`use` absent or
/// `sig`, `key_ops` absent or with `verify`) for at least one of the
/// issuer's algorithms.
#[derive(Debug)]
pub struct Key {
    pub(super) kid: Option<String>,
    /// The algorithms this key may verify: its type, curve and `alg` allow
    /// them, and so does the issuer's configuration.
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) key: DecodingKey,
}

/// A JWKS document as one issuer can use it.
#[derive(Debug)]
pub struct KeySet {
    /// The keys that verify this issuer's tokens (never empty).
    pub keys: Vec<Key>,
    /// The keys that do not, each with why.
    pub skipped: Vec<SkippedKey>,
}

pub(super) fn load_keys(
    ic: &IssuerConfig,
    path: &PathBuf,
    allowed: &[Algorithm],
) -> Result<Vec<Key>, JwksError> {
    let text = std::fs::read(path).map_err(|source| JwksError::Unreadable {
        issuer: ic.issuer.clone(),
        path: path.clone(),
        source,
    })?;
    let set = parse_key_set(&text, allowed).map_err(|problem| JwksError::Malformed {
        issuer: ic.issuer.clone(),
        path: path.clone(),
        problem,
    })?;
    report_skipped(&ic.issuer, &path.display().to_string(), &set.skipped);
    Ok(set.keys)
}

/// Logs each skipped key (what and why) and counts it in
/// `portcullis_jwks_keys_skipped_total`; the caller makes sure a key is
/// reported once.
pub(crate) fn report_skipped(issuer: &str, source: &str, skipped: &[SkippedKey]) {
    for s in skipped {
        let reason = s.reason.code();
        // Keys not meant for verifying signatures (encryption keys, which
        // Keycloak publishes by default) and keys for an algorithm the
        // issuer does not accept are routine; anything else looks like a
        // signing key this service cannot use, which tokens may soon need.
        let routine = matches!(
            s.reason,
            UnusableKey::EncryptionKey
                | UnusableKey::EncryptionAlgorithm(_)
                | UnusableKey::NoVerifyOperation
                | UnusableKey::AlgorithmNotAllowed(_)
        );
        if routine {
            tracing::info!(target: "portcullis::authn", issuer, source, key = s.index, kid = s.kid.as_deref(), reason, detail = %s.reason, "JWKS key not used");
        } else {
            tracing::warn!(target: "portcullis::authn", issuer, source, key = s.index, kid = s.kid.as_deref(), reason, detail = %s.reason, "JWKS key skipped; the issuer's other keys are used");
        }
        crate::metrics::global().jwks_key_skipped(issuer, reason);
    }
}

pub(super) fn load_secret(ic: &IssuerConfig, path: &Path) -> Result<Vec<Key>, JwksError> {
    let secret = crate::authn::secret::read(path).map_err(|source| JwksError::Unreadable {
        issuer: ic.issuer.clone(),
        path: path.to_path_buf(),
        source,
    })?;
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(JwksError::ShortSecret {
            issuer: ic.issuer.clone(),
            path: path.to_path_buf(),
            length: secret.len(),
        });
    }
    Ok(vec![Key {
        kid: None,
        algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        key: DecodingKey::from_secret(&secret),
    }])
}

/// Parses a JWKS document into the keys that verify tokens with one of the
/// `allowed` algorithms. Keys that cannot (encryption keys, other key types
/// and curves, other algorithms, broken parameters) are skipped, each with
/// its reason; the document is refused only when no key is left.
pub(crate) fn parse_key_set(bytes: &[u8], allowed: &[Algorithm]) -> Result<KeySet, BadKeySet> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(BadKeySet::NotJson)?;
    let list = doc
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or(BadKeySet::NotJwks)?;
    if list.is_empty() {
        return Err(BadKeySet::NoKeys);
    }
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (index, jwk) in list.iter().enumerate() {
        match usable_key(jwk, allowed) {
            Ok(key) => keys.push(key),
            Err(reason) => skipped.push(SkippedKey {
                index,
                kid: jwk.get("kid").and_then(|k| k.as_str()).map(str::to_string),
                reason,
                fingerprint: sha2::Sha256::digest(jwk.to_string().as_bytes()).into(),
            }),
        }
    }
    if keys.is_empty() {
        return Err(BadKeySet::NoUsableKey(skipped));
    }
    Ok(KeySet { keys, skipped })
}

/// JWE algorithms (RFC 7518 sections 4 and 5, and the RSA-OAEP variants
/// providers publish): a key declaring one is for encryption.
const ENCRYPTION_ALGORITHMS: &[&str] = &[
    "RSA1_5",
    "RSA-OAEP",
    "RSA-OAEP-256",
    "RSA-OAEP-384",
    "RSA-OAEP-512",
    "A128KW",
    "A192KW",
    "A256KW",
    "dir",
    "ECDH-ES",
    "ECDH-ES+A128KW",
    "ECDH-ES+A192KW",
    "ECDH-ES+A256KW",
    "A128GCMKW",
    "A192GCMKW",
    "A256GCMKW",
    "PBES2-HS256+A128KW",
    "PBES2-HS384+A192KW",
    "PBES2-HS512+A256KW",
    "A128CBC-HS256",
    "A192CBC-HS384",
    "A256CBC-HS512",
    "A128GCM",
    "A192GCM",
    "A256GCM",
];

/// One JWK as a verification key, or why it is not one. Reads the members
/// that say what a key is for from the JSON itself (RFC 7517 sections
/// 4.1-4.4), so that a member this library does not model cannot make a
/// key look usable.
fn usable_key(jwk: &serde_json::Value, allowed: &[Algorithm]) -> Result<Key, UnusableKey> {
    use serde_json::Value;
    use Algorithm::*;
    let object = jwk
        .as_object()
        .ok_or(UnusableKey::NotAJwk("not a JSON object"))?;
    let string = |name: &'static str, problem: &'static str| match object.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(UnusableKey::NotAJwk(problem)),
    };
    if object.get("kid").is_some_and(|k| !k.is_string()) {
        return Err(UnusableKey::NotAJwk("its kid is not a string"));
    }
    match string("use", "its use is not a string")? {
        None | Some("sig") => {}
        Some("enc") => return Err(UnusableKey::EncryptionKey),
        Some(other) => return Err(UnusableKey::UnknownUse(other.to_string())),
    }
    if let Some(ops) = object.get("key_ops") {
        let ops = ops
            .as_array()
            .filter(|ops| ops.iter().all(Value::is_string))
            .ok_or(UnusableKey::NotAJwk(
                "its key_ops is not an array of strings",
            ))?;
        if !ops.iter().any(|op| op == "verify") {
            return Err(UnusableKey::NoVerifyOperation);
        }
    }
    let declared = string("alg", "its alg is not a string")?;
    if let Some(alg) = declared {
        if ENCRYPTION_ALGORITHMS.contains(&alg) {
            return Err(UnusableKey::EncryptionAlgorithm(alg.to_string()));
        }
    }
    let kty =
        string("kty", "its kty is not a string")?.ok_or(UnusableKey::NotAJwk("it has no kty"))?;
    let curve = || string("crv", "its crv is not a string").map(Option::unwrap_or_default);
    let family: Vec<Algorithm> = match kty {
        "RSA" => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        "EC" => match curve()? {
            "P-256" => vec![ES256],
            "P-384" => vec![ES384],
            other => return Err(UnusableKey::UnsupportedCurve(other.to_string())),
        },
        "OKP" => match curve()? {
            "Ed25519" => vec![EdDSA],
            other => return Err(UnusableKey::UnsupportedCurve(other.to_string())),
        },
        "oct" => return Err(UnusableKey::SymmetricKey),
        other => return Err(UnusableKey::UnsupportedKeyType(other.to_string())),
    };
    let algorithms = match declared {
        None => family,
        Some(name) => {
            let alg: Algorithm = name
                .parse()
                .map_err(|_| UnusableKey::UnsupportedAlg(name.to_string()))?;
            if !family.contains(&alg) {
                return Err(UnusableKey::AlgorithmMismatch(alg));
            }
            vec![alg]
        }
    };
    let usable: Vec<Algorithm> = algorithms
        .iter()
        .copied()
        .filter(|a| allowed.contains(a))
        .collect();
    if usable.is_empty() {
        let names: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
        return Err(UnusableKey::AlgorithmNotAllowed(names.join(", ")));
    }
    let parsed: Jwk =
        serde_json::from_value(jwk.clone()).map_err(|e| UnusableKey::Undecodable(e.to_string()))?;
    if let AlgorithmParameters::RSA(rsa) = &parsed.algorithm {
        let bits = modulus_bits(&rsa.n)
            .ok_or_else(|| UnusableKey::Undecodable("n is not base64url".to_string()))?;
        if bits < 2048 {
            return Err(UnusableKey::WeakRsaKey(bits));
        }
    }
    let key =
        DecodingKey::from_jwk(&parsed).map_err(|e| UnusableKey::Undecodable(e.to_string()))?;
    Ok(Key {
        kid: parsed.common.key_id.clone(),
        algorithms: usable,
        key,
    })
}

/// The size of an RSA modulus given as base64url, in bits.
fn modulus_bits(n: &str) -> Option<usize> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .ok()?;
    let first = bytes.iter().position(|b| *b != 0)?;
    Some((bytes.len() - first - 1) * 8 + (8 - bytes[first].leading_zeros() as usize))
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

        let all = [Algorithm::ES256, Algorithm::RS256];
        let key_set = |text: &str| {
            parse_key_set(text.as_bytes(), &all)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(key_set(r#"{"keys": []}"#), "it has no keys");
        let not_json = serde_json::from_str::<serde_json::Value>("[")
            .unwrap_err()
            .to_string();
        assert_eq!(key_set("["), not_json);
        assert_eq!(key_set("[]"), "not a JWK Set: it needs a \"keys\" array");
        assert_eq!(
            key_set(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#),
            "none of its keys can verify this issuer's tokens: key 0: symmetric (oct) keys do not belong in a public JWKS"
        );
        assert_eq!(
            key_set(
                r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "alg": "RS256", "kid": "k1"}]}"#
            ),
            "none of its keys can verify this issuer's tokens: key 0 (kid \"k1\"): alg RS256 does not match the key type"
        );
        assert_eq!(
            key_set(r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "RSA1_5"}, {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "use": "enc"}]}"#),
            "none of its keys can verify this issuer's tokens: key 0: alg RSA1_5 is an encryption algorithm, not a signature algorithm; key 1: an encryption key (use: enc) never verifies signatures"
        );
    }

    /// The reason each key of `keys` (JSON array text) is skipped, by
    /// code, for an issuer accepting `allowed`.
    fn skipped(keys: &str, allowed: &[Algorithm]) -> Vec<&'static str> {
        let signing = std::fs::read_to_string(fixture("test-issuer.jwks.json")).unwrap();
        let signing: serde_json::Value = serde_json::from_str(&signing).unwrap();
        let mut list: Vec<serde_json::Value> = serde_json::from_str(keys).unwrap();
        list.push(signing["keys"][0].clone());
        let doc = serde_json::json!({ "keys": list });
        let set = parse_key_set(doc.to_string().as_bytes(), allowed).unwrap();
        assert_eq!(set.keys.len(), 1, "the ES256 signing key stays usable");
        set.skipped.iter().map(|s| s.reason.code()).collect()
    }

    #[test]
    fn every_kind_of_foreign_key_is_skipped_with_its_own_reason() {
        let n = rsa_modulus();
        let keys = format!(
            r#"[
            {{"kty": "RSA", "alg": "RSA-OAEP", "use": "enc", "n": "{n}", "e": "AQAB"}},
            {{"kty": "RSA", "alg": "RSA-OAEP-256", "n": "{n}", "e": "AQAB"}},
            {{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "use": "enc"}},
            {{"kty": "RSA", "use": "tls", "n": "{n}", "e": "AQAB"}},
            {{"kty": "RSA", "key_ops": ["encrypt", "wrapKey"], "n": "{n}", "e": "AQAB"}},
            {{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "alg": "ES512"}},
            {{"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}},
            {{"kty": "OKP", "crv": "X25519", "x": "AA", "use": "enc"}},
            {{"kty": "OKP", "crv": "X25519", "x": "AA"}},
            {{"kty": "oct", "k": "c2VjcmV0"}},
            {{"kty": "AKP", "alg": "ML-DSA-44", "pub": "AA"}},
            {{"kty": "RSA", "alg": "RS999", "n": "{n}", "e": "AQAB"}},
            {{"kty": "RSA", "n": "AQAB", "e": "AQAB"}},
            {{"kty": "RSA", "n": "!!", "e": "AQAB"}},
            {{"kty": "RSA", "e": "AQAB", "x5c": ["AA"]}},
            {{"kty": "RSA", "kid": 7, "n": "{n}", "e": "AQAB"}},
            {{"kty": "RSA", "alg": "PS256", "n": "{n}", "e": "AQAB"}},
            "not an object"
        ]"#
        );
        assert_eq!(
            skipped(&keys, &[Algorithm::ES256, Algorithm::RS256]),
            [
                "encryption_key",
                "encryption_algorithm",
                "encryption_key",
                "unknown_use",
                "no_verify_operation",
                "unsupported_curve",
                "unsupported_curve",
                "encryption_key",
                "unsupported_curve",
                "symmetric_key",
                "unsupported_key_type",
                "unsupported_algorithm",
                "weak_key",
                "undecodable",
                "undecodable",
                "not_a_jwk",
                "algorithm_not_allowed",
                "not_a_jwk",
            ]
        );
    }

    #[test]
    fn a_key_for_verifying_or_for_signatures_is_used_and_narrowed_to_the_issuers_algorithms() {
        let n = rsa_modulus();
        let doc = format!(
            r#"{{"keys": [
            {{"kty": "RSA", "use": "sig", "kid": "a", "n": "{n}", "e": "AQAB"}},
            {{"kty": "RSA", "key_ops": ["verify"], "kid": "b", "n": "{n}", "e": "AQAB", "x5c": ["not checked"], "issuer": "https://login.example/v2.0"}},
            {{"kty": "RSA", "use": "sig", "key_ops": ["sign", "verify"], "kid": "c", "alg": "PS256", "n": "{n}", "e": "AQAB"}}
        ]}}"#
        );
        let set = parse_key_set(doc.as_bytes(), &[Algorithm::RS256, Algorithm::PS256]).unwrap();
        assert!(set.skipped.is_empty(), "{:?}", set.skipped);
        let algorithms: Vec<_> = set.keys.iter().map(|k| k.algorithms.clone()).collect();
        assert_eq!(
            algorithms,
            [
                vec![Algorithm::RS256, Algorithm::PS256],
                vec![Algorithm::RS256, Algorithm::PS256],
                vec![Algorithm::PS256],
            ]
        );
    }

    /// A 2048-bit RSA modulus (the fixture key's).
    fn rsa_modulus() -> String {
        let text = std::fs::read_to_string(fixture("test-issuer.jwks.json")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["keys"][1]["n"].as_str().unwrap().to_string()
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

    /// An HS256 issuer whose secret file holds `file`, and a token signed
    /// with `secret`; the verification's outcome.
    fn hmac_outcome(file: &[u8], secret: &[u8]) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, file).unwrap();
        let mut ic = issuer_config(fixture("unused"));
        ic.jwks_file = None;
        ic.hmac_secret_file = Some(path);
        ic.algorithms = vec!["HS256".into()];
        let config = AuthnConfig {
            jwt: vec![ic],
            ..AuthnConfig::default()
        };
        let v = JwtVerifier::new(&config).map_err(|e| e[0].to_string())?;
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        verify(&v, &t).map(|_| ()).map_err(|e| e.reason.to_string())
    }

    #[test]
    fn secret_file_ending_in_a_tab_keeps_all_32_bytes() {
        // `head -c 32 /dev/urandom` ends in a tab one time in 256.
        let mut secret = [0xa7u8; 32];
        secret[31] = b'\t';
        assert_eq!(hmac_outcome(&secret, &secret), Ok(()));
    }

    #[test]
    fn secret_file_ending_in_newline_space_verifies_with_all_40_bytes() {
        let mut secret = vec![0x3cu8; 38];
        secret.extend_from_slice(b"\n ");
        assert_eq!(hmac_outcome(&secret, &secret), Ok(()));
        assert_eq!(
            hmac_outcome(&secret, &secret[..38]),
            Err("bad_signature".into()),
            "the trailing bytes are part of the secret"
        );
    }

    #[test]
    fn a_text_secret_loses_one_final_line_ending_and_nothing_else() {
        let text = b"0123456789abcdef0123456789abcdef";
        assert_eq!(
            hmac_outcome(b"0123456789abcdef0123456789abcdef\n", text),
            Ok(())
        );
        assert_eq!(
            hmac_outcome(b"0123456789abcdef0123456789abcdef\r\n", text),
            Ok(())
        );
        let spaced = b" 0123456789abcdef0123456789abcdef \n";
        assert_eq!(hmac_outcome(spaced, &spaced[..34]), Ok(()));
        let err = hmac_outcome(b"0123456789abcdef0123456789abcde\n", text).unwrap_err();
        assert!(err.contains("at least 32 bytes (it has 31;"), "{err}");
    }

    #[test]
    fn symmetric_algorithms_need_a_secret() {
        assert!(parse_algorithm("HS256", false).is_err());
        assert!(parse_algorithm("HS256", true).is_ok());
        assert!(parse_algorithm("RS256", true).is_err());
        assert!(parse_algorithm("ES256", false).is_ok());
    }
}
