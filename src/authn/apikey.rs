//! API keys: a secret in a request header (`x-api-key` by default) that
//! names an App, its org and its scopes. Keys are stored only as SHA-256
//! hashes in a keys file outside the policy directory, compared in constant
//! time; a key may expire, be revoked, and an app may hold several keys at
//! once (rotation). The file is re-read when it changes; a broken edit keeps
//! the last good keys. It does not decide what an App may do.
//!
//! A key looks like `pck_<id>_<secret>`: the public `id` (12 hex digits)
//! finds the entry, the whole key is hashed and compared.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::{entity_uid, AuthMethod, AuthnFailure, Identity, TokenFacts};
use crate::authn::config::ApiKeyConfig;

pub(crate) const PREFIX: &str = "pck_";
pub(crate) const ID_HEX_LEN: usize = 12;
const SECRET_BYTES: usize = 32;

/// One stored key (a line of the keys file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    /// The key's public id (the part after `pck_`).
    pub id: String,
    /// Hex SHA-256 of the whole key.
    pub sha256: String,
    /// The App the key authenticates.
    pub app: String,
    /// The App's organisation.
    pub org: String,
    /// Scopes granted (`context.token.scopes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Seconds since the epoch after which the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// A revoked key is refused (deleting the entry works too).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<StoredKey>,
}

/// A keys file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    /// The file could not be read.
    #[error("cannot read API keys file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a valid keys file.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A freshly generated key: give `key` to the client once, store `stored`.
#[derive(Debug)]
pub struct NewKey {
    /// The secret key, shown once.
    pub key: String,
    /// What the keys file keeps.
    pub stored: StoredKey,
}

/// Generates a key for `app` in `org`.
pub fn generate(app: &str, org: &str, scopes: Vec<String>, expires_at: Option<u64>) -> NewKey {
    let mut id = [0u8; ID_HEX_LEN / 2];
    let mut secret = [0u8; SECRET_BYTES];
    aws_lc_rs::rand::fill(&mut id).expect("the system random generator works");
    aws_lc_rs::rand::fill(&mut secret).expect("the system random generator works");
    let id = hex::encode(id);
    let key = format!(
        "{PREFIX}{id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let stored = StoredKey {
        id,
        sha256: hex::encode(sha2::Sha256::digest(key.as_bytes())),
        app: app.to_string(),
        org: org.to_string(),
        scopes,
        expires_at,
        revoked: false,
    };
    NewKey { key, stored }
}

/// The keys, swapped whole on reload.
#[derive(Debug)]
struct Keys {
    by_id: HashMap<String, Vec<StoredKey>>,
    modified: Option<SystemTime>,
}

/// Verifies API keys against the keys file.
#[derive(Debug)]
pub struct ApiKeyVerifier {
    path: PathBuf,
    header: String,
    principal_type: String,
    org_type: String,
    keys: ArcSwap<Keys>,
}

impl ApiKeyVerifier {
    /// Loads the keys file named in the config.
    pub fn new(config: &ApiKeyConfig, path: &Path) -> Result<Self, KeysFileError> {
        Ok(ApiKeyVerifier {
            path: path.to_path_buf(),
            header: config.header.to_ascii_lowercase(),
            principal_type: config.principal_type.clone(),
            org_type: config.org_type.clone(),
            keys: ArcSwap::from_pointee(load(path)?),
        })
    }

    /// The (lower-case) header that carries keys.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Re-reads the file if it changed since the last load. A broken file
    /// keeps the last good keys; the error is returned for logging.
    pub fn reload_if_changed(&self) -> Result<bool, KeysFileError> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified.is_some() && modified == self.keys.load().modified {
            return Ok(false);
        }
        self.keys.store(Arc::new(load(&self.path)?));
        Ok(true)
    }

    /// Watches the file (by modification time) until `cancel`, so that a
    /// revocation takes effect within about `interval`.
    pub async fn watch(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        crate::time::every(interval, cancel, || async {
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(path = %self.path.display(), "API keys reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "API keys file rejected; keeping the last good keys")
                }
            }
        })
        .await
    }

    /// Verifies a presented key at `now_epoch`.
    pub fn verify(&self, presented: &str, now_epoch: u64) -> Result<Identity, AuthnFailure> {
        let (id, hash) = parse(presented)?;
        let keys = self.keys.load();
        let entry = keys
            .by_id
            .get(id)
            .and_then(|candidates| candidates.iter().find(|k| k.matches(&hash)));
        let Some(entry) = entry else {
            return Err(unknown());
        };
        entry.grant(now_epoch, &self.principal_type, &self.org_type)
    }
}

impl StoredKey {
    /// True when `hash` (SHA-256 of a presented key) is this key's, compared
    /// in constant time.
    pub(crate) fn matches(&self, hash: &[u8; 32]) -> bool {
        hex::decode(&self.sha256)
            .map(|stored| bool::from(stored.as_slice().ct_eq(hash)))
            .unwrap_or(false)
    }

    /// The identity this key grants at `now_epoch`, unless it is revoked or
    /// expired.
    pub(crate) fn grant(
        &self,
        now_epoch: u64,
        principal_type: &str,
        org_type: &str,
    ) -> Result<Identity, AuthnFailure> {
        if self.revoked {
            return Err(AuthnFailure::new(
                "api_key_revoked",
                "the API key has been revoked; use a current key",
            ));
        }
        if self.expires_at.is_some_and(|at| at <= now_epoch) {
            return Err(AuthnFailure::new(
                "api_key_expired",
                "the API key has expired; use a current key",
            ));
        }
        let principal = entity_uid(principal_type, &self.app)
            .ok_or_else(|| AuthnFailure::new("bad_api_key_app", "the API key cannot be used"))?;
        let parents = entity_uid(org_type, &self.org).into_iter().collect();
        Ok(Identity::with_token(
            principal,
            parents,
            AuthMethod::ApiKey,
            TokenFacts {
                scopes: self.scopes.iter().cloned().collect(),
                claims: Default::default(),
                mfa: false,
            },
        ))
    }
}

/// The refusal for a key no store knows (or whose secret does not match).
pub(crate) fn unknown() -> AuthnFailure {
    AuthnFailure::new("unknown_api_key", "the API key is not valid")
}

/// A presented key's public id and SHA-256.
pub(crate) fn parse(presented: &str) -> Result<(&str, [u8; 32]), AuthnFailure> {
    let id = parse_id(presented).ok_or_else(|| {
        AuthnFailure::new(
            "malformed_api_key",
            "the API key is malformed; send the key exactly as issued",
        )
    })?;
    Ok((id, sha2::Sha256::digest(presented.as_bytes()).into()))
}

/// The public id of a well-formed key.
fn parse_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == ID_HEX_LEN && id.bytes().all(|b| b.is_ascii_hexdigit());
    let secret_ok = secret.len() >= 32
        && secret.len() <= 64
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some(id)
}

fn load(path: &Path) -> Result<Keys, KeysFileError> {
    let invalid = |message: String| KeysFileError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let file: KeysFile = if text.trim().is_empty() {
        KeysFile { keys: Vec::new() }
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| invalid(crate::yaml::message_in(&e, &text)))?
    };
    let mut problems = Vec::new();
    let mut by_id: HashMap<String, Vec<StoredKey>> = HashMap::new();
    for (i, key) in file.keys.into_iter().enumerate() {
        let at = format!("keys[{i}]");
        if key.id.len() != ID_HEX_LEN || !key.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            problems.push(format!("{at}.id: must be {ID_HEX_LEN} hex digits"));
        }
        if key.sha256.len() != 64 || hex::decode(&key.sha256).is_err() {
            problems.push(format!("{at}.sha256: must be 64 hex digits"));
        }
        if key.app.is_empty() || key.org.is_empty() {
            problems.push(format!("{at}: app and org must not be empty"));
        }
        by_id.entry(key.id.clone()).or_default().push(key);
    }
    if !problems.is_empty() {
        return Err(invalid(problems.join("; ")));
    }
    Ok(Keys { by_id, modified })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(entries: &[StoredKey]) -> (tempfile::TempDir, ApiKeyVerifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let text = serde_yaml_ng::to_string(&serde_json::json!({ "keys": entries })).unwrap();
        std::fs::write(&path, text).unwrap();
        let v = ApiKeyVerifier::new(&ApiKeyConfig::default(), &path).unwrap();
        (dir, v)
    }

    #[test]
    fn generated_key_verifies_to_its_app_org_and_scopes() {
        let k = generate("scorer", "acme", vec!["models:invoke".into()], None);
        let (_d, v) = verifier(std::slice::from_ref(&k.stored));
        let id = v.verify(&k.key, 0).unwrap();
        assert_eq!(id.principal.to_string(), r#"App::"scorer""#);
        assert_eq!(id.parents[0].to_string(), r#"Org::"acme""#);
        assert_eq!(id.method, AuthMethod::ApiKey);
        assert!(id.token.scopes.contains("models:invoke"));
        // The file holds no secret: only the hash.
        assert!(!serde_yaml_ng::to_string(&k.stored)
            .unwrap()
            .contains(&k.key[16..]));
    }

    #[test]
    fn unknown_revoked_expired_and_malformed_keys_are_refused() {
        let good = generate("a", "acme", vec![], None);
        let mut revoked = generate("a", "acme", vec![], None);
        revoked.stored.revoked = true;
        let mut expired = generate("a", "acme", vec![], Some(100));
        expired.stored.expires_at = Some(100);
        let (_d, v) = verifier(&[
            good.stored.clone(),
            revoked.stored.clone(),
            expired.stored.clone(),
        ]);
        let other = generate("a", "acme", vec![], None);
        assert_eq!(
            v.verify(&other.key, 0).unwrap_err().reason,
            "unknown_api_key"
        );
        // Same id, different secret: still unknown.
        let forged = format!(
            "{}_{}",
            &good.key[..PREFIX.len() + ID_HEX_LEN],
            "A".repeat(43)
        );
        assert_eq!(v.verify(&forged, 0).unwrap_err().reason, "unknown_api_key");
        assert_eq!(
            v.verify(&revoked.key, 0).unwrap_err().reason,
            "api_key_revoked"
        );
        assert!(v.verify(&expired.key, 99).is_ok());
        assert_eq!(
            v.verify(&expired.key, 100).unwrap_err().reason,
            "api_key_expired"
        );
        assert_eq!(
            v.verify("hunter2", 0).unwrap_err().reason,
            "malformed_api_key"
        );
        assert!(v.verify(&good.key, 0).is_ok());
    }

    #[test]
    fn an_app_may_hold_several_keys() {
        let old = generate("a", "acme", vec![], None);
        let new = generate("a", "acme", vec![], None);
        let (_d, v) = verifier(&[old.stored.clone(), new.stored.clone()]);
        assert!(v.verify(&old.key, 0).is_ok());
        assert!(v.verify(&new.key, 0).is_ok());
    }

    #[test]
    fn reload_applies_revocation_and_keeps_last_good_on_a_broken_file() {
        let k = generate("a", "acme", vec![], None);
        let (dir, v) = verifier(std::slice::from_ref(&k.stored));
        let path = dir.path().join("keys.yaml");
        assert!(v.verify(&k.key, 0).is_ok());
        std::fs::write(&path, "keys: [ {id: nope} ]\n").unwrap();
        // Force a different mtime reading regardless of file system
        // granularity: the verifier compares for equality only.
        v.keys.rcu(|k| Keys {
            by_id: k.by_id.clone(),
            modified: None,
        });
        assert!(v.reload_if_changed().is_err());
        assert!(v.verify(&k.key, 0).is_ok(), "last good keys stay");
        let mut revoked = k.stored.clone();
        revoked.revoked = true;
        std::fs::write(
            &path,
            serde_yaml_ng::to_string(&serde_json::json!({ "keys": [revoked] })).unwrap(),
        )
        .unwrap();
        assert!(v.reload_if_changed().unwrap());
        assert_eq!(v.verify(&k.key, 0).unwrap_err().reason, "api_key_revoked");
    }
}
