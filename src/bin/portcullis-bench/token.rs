//! This run's token signing key: its public half is the in-process
//! server's issuer key, and it mints the mix's bearer tokens.

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
