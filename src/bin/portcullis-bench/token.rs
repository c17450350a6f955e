//! This run's token signing key: its public half is the in-process
//! server's issuer key, and it mints the mix's bearer tokens. With
//! `--token-key-file` it is read from a file that `--write-token-key` wrote,
//! so a separately started server can trust it too.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;

pub const ISSUER: &str = "https://bench.portcullis.invalid/";
pub const AUDIENCE: &str = "portcullis-bench";

/// A key generated for this run; its public half is the in-process
/// server's issuer key.
pub struct TokenKey {
    pkcs8: Vec<u8>,
    pub jwks: serde_json::Value,
}

impl TokenKey {
    pub fn generate() -> anyhow::Result<Self> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| anyhow::anyhow!("generate an ECDSA key"))?;
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| anyhow::anyhow!("serialise the key"))?
            .as_ref()
            .to_vec();
        Self::from_pkcs8(pkcs8)
    }

    /// The key in `path` (PKCS#8 DER, as `write` leaves it), so that a
    /// server started separately (`--target`) trusts the tokens this run
    /// mints.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let pkcs8 = std::fs::read(path)
            .with_context(|| format!("read the token key {}", path.display()))?;
        Self::from_pkcs8(pkcs8)
            .with_context(|| format!("{}: not a P-256 PKCS#8 key", path.display()))
    }

    /// Writes the private key to `path` (PKCS#8 DER) and its JWKS to
    /// `<path>.jwks.json`, for a server's `jwks_file` (issuer `ISSUER`,
    /// audience `AUDIENCE`, `org_claim: org`).
    pub fn write(&self, path: &Path) -> anyhow::Result<PathBuf> {
        std::fs::write(path, &self.pkcs8)
            .with_context(|| format!("write the token key {}", path.display()))?;
        let mut jwks = path.as_os_str().to_owned();
        jwks.push(".jwks.json");
        let jwks = PathBuf::from(jwks);
        std::fs::write(&jwks, self.jwks.to_string())
            .with_context(|| format!("write {}", jwks.display()))?;
        Ok(jwks)
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> anyhow::Result<Self> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
            .map_err(|_| anyhow::anyhow!("not an ECDSA P-256 PKCS#8 key"))?;
        let point = pair.public_key().as_ref();
        anyhow::ensure!(
            point.len() == 65 && point[0] == 4,
            "uncompressed P-256 point"
        );
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "bench",
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        }]});
        Ok(TokenKey { pkcs8, jwks })
    }

    pub fn mint(&self, sub: &str, org: &str, nonce: u64) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("bench".into());
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "org": org,
            "iat": now, "exp": now + 3600, "jti": nonce.to_string(),
        });
        Ok(jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        )?)
    }
}
