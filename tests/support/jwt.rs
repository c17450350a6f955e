//! JSON Web Tokens signed with the fixture keys (`tests/fixtures/keys`):
//! valid ones for the fixture issuer, and raw ones for attacks.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::paths::fixture;

/// The issuer of the fixture keys (`tests/fixtures/keys`).
pub const ISSUER: &str = "https://idp.test.portcullis/";
/// The audience Portcullis accepts for [`ISSUER`].
pub const AUDIENCE: &str = "portcullis";

/// A fixture signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// ES256, kid `test-es256`, in the issuer's JWKS.
    Es256,
    /// RS256, kid `test-rs256`, in the issuer's JWKS.
    Rs256,
    /// ES256 key that is NOT in the JWKS, sent with kid `test-es256`: a
    /// forged signature on an otherwise well-formed token.
    UntrustedEs256,
}

impl Key {
    fn pem(self) -> PathBuf {
        fixture(match self {
            Key::Es256 => "keys/test-es256.pem",
            Key::Rs256 => "keys/test-rs256.pem",
            Key::UntrustedEs256 => "keys/untrusted-es256.pem",
        })
    }

    fn kid(self) -> &'static str {
        match self {
            Key::Es256 | Key::UntrustedEs256 => "test-es256",
            Key::Rs256 => "test-rs256",
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Claims of a valid token from the fixture issuer for `sub` in `org`,
/// issued now, expiring in ten minutes. Adjust fields for negative cases.
pub fn claims(sub: &str, org: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "org": org,
        "iat": now,
        "exp": now + 600,
    })
}

/// Signs `claims` with `key` (its algorithm and kid in the header).
pub fn mint(claims: Value, key: Key) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = std::fs::read(key.pem()).expect("read fixture key");
    let (algorithm, encoding) = match key {
        Key::Es256 | Key::UntrustedEs256 => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem).expect("EC PEM"),
        ),
        Key::Rs256 => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&pem).expect("RSA PEM"),
        ),
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(key.kid().to_string());
    jsonwebtoken::encode(&header, &claims, &encoding).expect("sign JWT")
}

/// A valid bearer token from the fixture issuer for `sub` (org `acme`).
pub fn token(sub: &str) -> String {
    mint(claims(sub, "acme"), Key::Es256)
}

/// Signs `header` and `payload`, given as raw JSON text (so that tests can
/// write what no serializer would: duplicate members, odd headers), with an
/// ES256 fixture key (`keys/<pem>`).
pub fn sign_raw_es256(header: &str, payload: &str, pem: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let key = jsonwebtoken::EncodingKey::from_ec_pem(
        &std::fs::read(fixture(&format!("keys/{pem}"))).expect("fixture key"),
    )
    .expect("EC PEM");
    let message = format!("{}.{}", b64(header), b64(payload));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::ES256)
            .expect("sign");
    format!("{message}.{signature}")
}

/// `message` as a tonic request carrying a valid bearer token for `sub`
/// (org `acme`): how the tests call the admin API as someone.
pub fn as_user<T>(message: T, sub: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token(sub))
            .parse()
            .expect("a bearer token is valid metadata"),
    );
    request
}
