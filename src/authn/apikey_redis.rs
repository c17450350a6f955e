//! API keys kept in Redis, so that a revocation applies to every replica
//! at once (the next request), without a reload. The records are those of
//! the keys file, one Redis hash per key:
//!
//! `portcullis:apikey:{<id>}` -> `sha256`, `app`, `org`, `scopes`
//! (space-separated), `expires_at` (seconds since the epoch, optional),
//! `revoked` (`1`, optional).
//!
//! A presented key `pck_<id>_<secret>` is looked up by its public id (its
//! own hash tag: one key, one Cluster slot, one round trip), and its
//! SHA-256 compared with the record's in constant time, exactly as for the
//! keys file. There is no local cache: every lookup asks Redis, which is
//! what makes a revocation immediate. When Redis does not answer within the
//! timeout the key cannot be checked: a 503-class refusal
//! (`authentication_unavailable`), never an acceptance, and not counted as
//! the caller's failed attempt.
//!
//! Writing keys (`portcullis apikey new --redis`, `apikey revoke`) goes
//! through [`store`] and [`revoke`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;

use super::apikey::{parse, unknown, StoredKey};
use super::{AuthnFailure, Identity};
use crate::authn::config::ApiKeyConfig;
use crate::shared_redis::SharedRedis;

/// Prefix of every API key record.
pub const KEY_PREFIX: &str = "portcullis:apikey:";

/// Writes a record unless one with that id exists. ARGV: field, value, ...
const STORE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"#;

/// Marks an existing record revoked.
const REVOKE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'revoked', '1')
return 1
"#;

/// Verifies API keys against records in Redis.
pub struct RedisKeys {
    redis: Arc<SharedRedis>,
    timeout: Duration,
    header: String,
    principal_type: String,
    org_type: String,
}

impl std::fmt::Debug for RedisKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKeys")
            .field("header", &self.header)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisKeys {
    /// Keys in `redis`; each lookup is bounded by `timeout`.
    pub fn new(config: &ApiKeyConfig, redis: Arc<SharedRedis>, timeout: Duration) -> Self {
        RedisKeys {
            redis,
            timeout,
            header: config.header.to_ascii_lowercase(),
            principal_type: config.principal_type.clone(),
            org_type: config.org_type.clone(),
        }
    }

    /// The (lower-case) header that carries keys.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Verifies a presented key at `now_epoch`.
    pub async fn verify(&self, presented: &str, now_epoch: u64) -> Result<Identity, AuthnFailure> {
        let (id, hash) = parse(presented)?;
        let fields = tokio::time::timeout(self.timeout, async {
            let mut con = self.redis.connection().await.map_err(|e| e.to_string())?;
            redis::cmd("HGETALL")
                .arg(redis_key(id))
                .query_async::<HashMap<String, String>>(&mut con)
                .await
                .map_err(|e| {
                    self.redis.note_error(&e);
                    e.to_string()
                })
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", self.timeout.as_millis())));
        let fields = fields.map_err(|error| {
            tracing::warn!(target: "portcullis::authn", error, "API key lookup in Redis failed");
            AuthnFailure::unavailable(
                "api_keys_unavailable",
                "API keys cannot be checked right now; try again shortly",
            )
        })?;
        if fields.is_empty() {
            return Err(unknown());
        }
        let entry = from_fields(id, &fields).map_err(|problem| {
            tracing::error!(target: "portcullis::authn", key_id = id, problem, "malformed API key record in Redis");
            AuthnFailure::new("bad_api_key_record", "the API key cannot be used")
        })?;
        if !entry.matches(&hash) {
            return Err(unknown());
        }
        entry.grant(now_epoch, &self.principal_type, &self.org_type)
    }
}

/// The Redis key of the record for key id `id`.
pub fn redis_key(id: &str) -> String {
    format!("{KEY_PREFIX}{{{id}}}")
}

/// The record's fields and values, in a fixed order.
pub fn fields(key: &StoredKey) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("sha256", key.sha256.clone()),
        ("app", key.app.clone()),
        ("org", key.org.clone()),
        ("scopes", key.scopes.join(" ")),
    ];
    if let Some(at) = key.expires_at {
        f.push(("expires_at", at.to_string()));
    }
    if key.revoked {
        f.push(("revoked", "1".into()));
    }
    f
}

/// The `HSET` command (argument by argument) that stores `key`, for an
/// operator who writes Redis by other means.
pub fn hset_command(key: &StoredKey) -> Vec<String> {
    let mut argv = vec!["HSET".to_string(), redis_key(&key.id)];
    for (field, value) in fields(key) {
        argv.push(field.to_string());
        argv.push(value);
    }
    argv
}

/// Stores `key` unless a record with its id exists; true when stored.
pub async fn store<C: ConnectionLike + Send>(
    con: &mut C,
    key: &StoredKey,
) -> redis::RedisResult<bool> {
    let script = redis::Script::new(STORE);
    let mut invocation = script.prepare_invoke();
    invocation.key(redis_key(&key.id));
    for (field, value) in fields(key) {
        invocation.arg(field).arg(value);
    }
    Ok(invocation.invoke_async::<i64>(con).await? == 1)
}

/// Marks the key with public id `id` revoked; false when there is no such
/// key. Refused from the next request on.
pub async fn revoke<C: ConnectionLike + Send>(con: &mut C, id: &str) -> redis::RedisResult<bool> {
    let script = redis::Script::new(REVOKE);
    let mut invocation = script.prepare_invoke();
    invocation.key(redis_key(id));
    Ok(invocation.invoke_async::<i64>(con).await? == 1)
}

fn from_fields(id: &str, fields: &HashMap<String, String>) -> Result<StoredKey, String> {
    let get = |name: &str| {
        fields
            .get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| format!("field '{name}' is missing"))
    };
    let expires_at = match fields.get("expires_at") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| "field 'expires_at' is not seconds since the epoch".to_string())?,
        ),
    };
    Ok(StoredKey {
        id: id.to_string(),
        sha256: get("sha256")?,
        app: get("app")?,
        org: get("org")?,
        scopes: fields
            .get("scopes")
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        expires_at,
        revoked: fields.get("revoked").is_some_and(|v| v != "0"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::apikey::generate;

    #[test]
    fn a_record_round_trips_through_its_fields() {
        let mut k = generate(
            "scorer",
            "acme",
            vec!["models:invoke".into(), "x".into()],
            Some(9),
        );
        k.stored.revoked = true;
        let map: HashMap<String, String> = fields(&k.stored)
            .into_iter()
            .map(|(f, v)| (f.to_string(), v))
            .collect();
        assert_eq!(from_fields(&k.stored.id, &map).unwrap(), k.stored);
        let argv = hset_command(&k.stored);
        assert_eq!(argv[1], format!("portcullis:apikey:{{{}}}", k.stored.id));
        assert!(
            !argv.iter().any(|a| a.contains(&k.key[17..])),
            "no secret in Redis"
        );
    }

    #[test]
    fn a_malformed_record_says_what_is_wrong() {
        let map: HashMap<String, String> =
            [("app".to_string(), "a".to_string())].into_iter().collect();
        assert_eq!(
            from_fields("0123456789ab", &map).unwrap_err(),
            "field 'sha256' is missing"
        );
    }
}
