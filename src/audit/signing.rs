//! Public-key checkpoints: Ed25519 (RFC 8032) signatures over the chain's
//! head, so that an auditor verifies a trail with the public key alone,
//! where the HMAC of `chain` needs the secret. Keys are read from PEM files
//! as OpenSSL writes them: the private key as PKCS#8 (`openssl genpkey
//! -algorithm ed25519`), the public key as SubjectPublicKeyInfo (`openssl
//! pkey -pubout`). Signing and verification are `ring`'s (already in the
//! dependency tree through rustls). It does not read or write audit files.

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

/// Domain separation of Ed25519 checkpoint statements.
const DOMAIN: &[u8] = b"portcullis-audit-checkpoint-ed25519-v1\n";
/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before
/// the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The statement a checkpoint signs: "the chain up to record `seq` ends in
/// `head`", with the domain prefix.
pub(crate) fn statement(seq: u64, head: &str) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(format!("{seq}:{head}").as_bytes());
    m
}

/// The id a checkpoint names its key by: the first 16 hex digits of
/// SHA-256 over the 32 raw public key bytes.
pub fn key_id(public: &[u8]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// The body of the one PEM block labelled `label` in `text`.
fn pem_body(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("no `{begin}` block"))?;
    let rest = &text[start + begin.len()..];
    let stop = rest.find(&end).ok_or_else(|| format!("no `{end}` line"))?;
    let b64: String = rest[..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the {label} block is not base64: {e}"))
}

/// The Ed25519 private key that signs checkpoints. `Debug` never shows it.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(id {}, ***)", self.id)
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key file (`-----BEGIN PRIVATE KEY-----`).
    /// Errors name the file and say how to make a key; they never show it.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let how = "make one with `openssl genpkey -algorithm ed25519 -out audit-signing.pem`";
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let der = pem_body(&text, "PRIVATE KEY")
            .map_err(|e| format!("{}: {e}; {how}", path.display()))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| {
            format!(
                "{}: not an Ed25519 PKCS#8 private key; {how}",
                path.display()
            )
        })?;
        Ok(Self::from_pair(pair))
    }

    /// A key from PKCS#8 DER bytes (tests generate keys this way).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(Self::from_pair)
            .map_err(|_| "not an Ed25519 PKCS#8 private key".to_string())
    }

    fn from_pair(pair: Ed25519KeyPair) -> Self {
        let id = key_id(pair.public_key().as_ref());
        SigningKey { pair, id }
    }

    /// The key's id (see [`key_id`]).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The 32 raw public key bytes, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_raw(self.pair.public_key().as_ref()).expect("32 bytes")
    }

    /// Signs "the chain up to record `seq` ends in `head`": 64 bytes, hex.
    pub fn sign(&self, seq: u64, head: &str) -> String {
        hex::encode(self.pair.sign(&statement(seq, head)).as_ref())
    }
}

/// An Ed25519 public key that verifies checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    raw: [u8; 32],
    id: String,
}

impl PublicKey {
    /// A key from its 32 raw bytes.
    pub fn from_raw(raw: &[u8]) -> Option<Self> {
        let raw: [u8; 32] = raw.try_into().ok()?;
        Some(PublicKey {
            id: key_id(&raw),
            raw,
        })
    }

    /// Reads a SubjectPublicKeyInfo PEM file (`-----BEGIN PUBLIC KEY-----`,
    /// as `openssl pkey -in audit-signing.pem -pubout` writes it).
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let how =
            "write it with `openssl pkey -in audit-signing.pem -pubout -out audit-signing.pub.pem`";
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let der =
            pem_body(&text, "PUBLIC KEY").map_err(|e| format!("{}: {e}; {how}", path.display()))?;
        der.strip_prefix(&SPKI_PREFIX[..])
            .and_then(Self::from_raw)
            .ok_or_else(|| format!("{}: not an Ed25519 public key; {how}", path.display()))
    }

    /// The key's id (see [`key_id`]).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The 32 raw bytes, hex (as `signing_key` records carry them).
    pub fn hex(&self) -> String {
        hex::encode(self.raw)
    }

    /// The SubjectPublicKeyInfo PEM text of this key.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// True when `signature` (hex) signs "the chain up to `seq` ends in
    /// `head`" under this key.
    pub fn verify(&self, seq: u64, head: &str, signature: &str) -> bool {
        self.verify_message(&statement(seq, head), signature)
    }

    /// True when `signature` (hex) is this key's Ed25519 signature of
    /// `message`.
    pub fn verify_message(&self, message: &[u8], signature: &str) -> bool {
        let Ok(sig) = hex::decode(signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(message, &sig)
            .is_ok()
    }
}

/// The key that signs checkpoints: from a PKCS#8 file
/// (`audit.signing_key_file`), or in a PKCS#11 token
/// (`audit.signing_key_pkcs11`). Both sign the same Ed25519 statement.
#[derive(Debug)]
pub enum Signer {
    /// A private key this process holds.
    File(SigningKey),
    /// A key in a token: the process holds a session, never the key.
    Token(super::pkcs11::TokenKey),
}

impl Signer {
    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            Signer::File(k) => k.public_key(),
            Signer::Token(k) => k.public_key().clone(),
        }
    }

    /// Signs "the chain up to record `seq` ends in `head`": 64 bytes,
    /// hex. A file's key never fails; a token's fails when the token is
    /// unavailable (the error says why).
    pub fn sign(&self, seq: u64, head: &str) -> Result<String, String> {
        match self {
            Signer::File(k) => Ok(k.sign(seq, head)),
            Signer::Token(k) => k.sign(seq, head),
        }
    }
}

/// A fresh key pair as PKCS#8 DER (for tests and tools).
pub fn generate_pkcs8() -> Vec<u8> {
    Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .expect("the system RNG works")
        .as_ref()
        .to_vec()
}

/// PKCS#8 DER as a `PRIVATE KEY` PEM text.
pub fn pkcs8_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_the_public_key_only_and_only_for_its_statement() {
        let key = SigningKey::from_pkcs8(&generate_pkcs8()).unwrap();
        let public = key.public_key();
        assert_eq!(public.id(), key.id());
        let sig = key.sign(41, "ab12");
        assert!(public.verify(41, "ab12", &sig));
        assert!(!public.verify(42, "ab12", &sig), "another seq");
        assert!(!public.verify(41, "ab13", &sig), "another head");
        let other = SigningKey::from_pkcs8(&generate_pkcs8()).unwrap();
        assert!(!other.public_key().verify(41, "ab12", &sig), "another key");
        assert!(!public.verify(41, "ab12", "zz"), "not hex");
    }

    #[test]
    fn pem_files_round_trip_and_bad_ones_say_how_to_make_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("k.pem");
        std::fs::write(&private, pkcs8_pem(&generate_pkcs8())).unwrap();
        let key = SigningKey::from_file(&private).unwrap();
        assert!(!format!("{key:?}").contains("PRIVATE"));
        let public = dir.path().join("k.pub.pem");
        std::fs::write(&public, key.public_key().to_pem()).unwrap();
        assert_eq!(PublicKey::from_file(&public).unwrap(), key.public_key());

        std::fs::write(&private, "not a key").unwrap();
        let err = SigningKey::from_file(&private).unwrap_err();
        assert!(err.contains("openssl genpkey -algorithm ed25519"), "{err}");
        // A private key where a public one is expected.
        std::fs::write(&public, pkcs8_pem(&generate_pkcs8())).unwrap();
        let err = PublicKey::from_file(&public).unwrap_err();
        assert!(err.contains("-pubout"), "{err}");
    }

    #[test]
    fn keys_written_by_openssl_are_read() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1) and its
        // `openssl pkey -pubout` (SPKI).
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHMTfEhfAOES5AN9/j+DC+tFw6auc4ZXcQkrI/MumeU8\n-----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAtGM8uPFb0ji2HPj7+cXDoS127H3+7fwY8Ph2dCN7OvY=\n-----END PUBLIC KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pem"), private).unwrap();
        std::fs::write(dir.path().join("k.pub.pem"), public).unwrap();
        let key = SigningKey::from_file(&dir.path().join("k.pem")).unwrap();
        let public = PublicKey::from_file(&dir.path().join("k.pub.pem")).unwrap();
        assert_eq!(key.public_key(), public);
        assert!(public.verify(7, "ff", &key.sign(7, "ff")));
    }
}
