//! Shared fixtures for the JWT verifier's unit tests: the test issuer's
//! keys, its configuration, and helpers that sign and verify tokens.

use std::path::PathBuf;
use std::time::Instant;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::JwtVerifier;
use crate::authn::config::{AuthnConfig, IssuerConfig};
use crate::authn::{AuthnFailure, Identity};

pub(super) const ISS: &str = "https://idp.test.portcullis/";

pub(super) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

pub(super) fn issuer_config(jwks_file: PathBuf) -> IssuerConfig {
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
        roles_claim: vec!["roles".into()],
        scope_claims: vec!["scope".into(), "scp".into()],
        tolerated_audiences: Vec::new(),
        audience_claim: "aud".into(),
        role_type: "Role".into(),
        context_claims: vec!["tier".into()],
        mfa_amr_values: vec!["mfa".into()],
        mfa_acr_values: vec!["urn:acr:mfa".into()],
    }
}

pub(super) fn verifier_with(ic: IssuerConfig) -> JwtVerifier {
    let config = AuthnConfig {
        jwt: vec![ic],
        ..AuthnConfig::default()
    };
    JwtVerifier::new(&config).unwrap()
}

pub(super) fn verifier() -> JwtVerifier {
    verifier_with(issuer_config(fixture("test-issuer.jwks.json")))
}

pub(super) fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub(super) fn verify(v: &JwtVerifier, token: &str) -> Result<Identity, AuthnFailure> {
    block(v.verify(token, now(), Instant::now()))
}

pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(super) fn sign(alg: Algorithm, kid: Option<&str>, pem: &str, claims: Value) -> String {
    let pem = std::fs::read(fixture(pem)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

pub(super) fn claims() -> Value {
    json!({"iss": ISS, "aud": "portcullis", "sub": "alice", "org": "acme",
           "exp": now() + 300, "iat": now()})
}

pub(super) fn reason(token: &str) -> &'static str {
    verify(&verifier(), token).unwrap_err().reason
}

/// Key `index` of the fixture issuer's JWKS (0: `test-es256`, 1:
/// `test-rs256`).
pub(super) fn fixture_jwk(index: usize) -> Value {
    let text = std::fs::read_to_string(fixture("test-issuer.jwks.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["keys"][index].clone()
}

/// The public JWK (`kty`, `crv`, `x`, `y`) of the P-256 private key in the
/// fixture file `pem`.
pub(super) fn ec_public_jwk(pem: &str) -> Value {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use base64::Engine;
    let text = std::fs::read_to_string(fixture(pem)).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
}

/// A verifier for the fixture issuer whose JWKS file holds `keys`, and the
/// directory holding that file.
pub(super) fn verifier_with_keys(keys: Vec<Value>) -> (JwtVerifier, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
    (verifier_with(issuer_config(path)), dir)
}
