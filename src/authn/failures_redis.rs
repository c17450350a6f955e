//! Failed-attempt counts and blocks in Redis, shared by every replica: a
//! source that fails on one replica is blocked on all of them. The rules
//! are those of `InProcessFailures` (threshold within a window, then a
//! cool-down); one Lua script applies them atomically, one round trip per
//! check or record, with time from the Redis server (`TIME`), so replicas'
//! clocks do not matter.
//!
//! Keys: `portcullis:f:{src:<ip>}` and `portcullis:f:{id:<sha256>}`, one
//! hash per source or presented identity, each its own hash tag (so each
//! call touches one Cluster slot). The identity is hashed: it is attacker
//! input. Every key expires when its window and block are over, so memory
//! is bounded by the failure rate, not by `max_tracked`.
//!
//! When Redis does not answer within the timeout, counting falls back to
//! the in-process store (fail open towards Redis, not towards attackers):
//! each replica still blocks a source that keeps failing against it, with
//! the same threshold, until Redis answers again. Refusing every request
//! while Redis is down would turn a Redis outage into an outage of every
//! API, and a block is a brake on guessing, not the protection itself
//! (credentials still have to verify). Degraded operations are counted and
//! the switch to and from degraded mode is logged. After Redis fails to
//! answer it is not asked again for a second (the fallback answers at
//! once), so an unresponsive Redis costs one timeout per second, not one
//! per request.
//!
//! A block Redis reported is remembered locally until it ends, so a
//! blocked source hammering a replica costs no Redis round trips. A source
//! Redis called unblocked is taken as unblocked for `unblocked_cache_ms`
//! (default 1 s; 0 asks every time), so a busy client does not pay a round
//! trip per request; a block set through another replica reaches this one
//! within that time. A failure recorded here always goes to Redis, and
//! drops the cached answer for its key.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;

use super::failures::{FailureKey, FailureStore, InProcessFailures};
use crate::authn::config::FailureConfig;
use crate::shared_redis::SharedRedis;

/// ARGV: op (`check` | `record`), threshold, window_ms, block_ms,
/// block (0|1). Returns {blocked_ms, reached}: blocked_ms > 0 while the
/// key is blocked; reached is 1 when this failure reached the threshold.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = redis.call('HMGET', KEYS[1], 'start', 'count', 'until')
local blocked_until = f[3] and tonumber(f[3]) or 0
if blocked_until > now then
  return {blocked_until - now, 0}
end
if ARGV[1] == 'check' then
  return {0, 0}
end
local threshold = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local block_ms = tonumber(ARGV[4])
local start = f[1] and tonumber(f[1]) or 0
local count = f[2] and tonumber(f[2]) or 0
if now - start >= window then
  start = now
  count = 0
end
count = count + 1
local reached = 0
if count == threshold then reached = 1 end
local blocked = 0
blocked_until = 0
if ARGV[5] == '1' and count >= threshold then
  blocked_until = now + block_ms
  blocked = block_ms
end
redis.call('HSET', KEYS[1], 'start', start, 'count', count, 'until', blocked_until)
redis.call('PEXPIRE', KEYS[1], math.max(start + window - now, blocked_until - now, 1))
return {blocked, reached}
"#;

/// After Redis fails to answer, how long the fallback answers alone.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Prefix of every failure key.
pub const KEY_PREFIX: &str = "portcullis:f:";

/// Failure counts and blocks in Redis, with an in-process fallback.
pub struct RedisFailures {
    redis: Arc<SharedRedis>,
    timeout: Duration,
    script: redis::Script,
    threshold: u32,
    window_ms: u64,
    block_ms: u64,
    /// Blocks Redis reported, until they end.
    known_blocks: moka::sync::Cache<FailureKey, Instant>,
    /// Keys Redis called unblocked, briefly.
    known_unblocked: Option<moka::sync::Cache<FailureKey, ()>>,
    /// Counts while Redis does not answer.
    fallback: InProcessFailures,
    degraded: AtomicU64,
    healthy: AtomicBool,
    /// Redis is not asked before this (after it failed to answer).
    retry_at: Mutex<Option<Instant>>,
    retry_after_error: Duration,
    calls: AtomicU64,
}

impl std::fmt::Debug for RedisFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFailures")
            .field("timeout", &self.timeout)
            .field("degraded", &self.degraded_operations())
            .finish_non_exhaustive()
    }
}

impl RedisFailures {
    /// A store on `redis`; each call is bounded by `timeout`.
    pub fn new(config: &FailureConfig, redis: Arc<SharedRedis>, timeout: Duration) -> Self {
        RedisFailures {
            redis,
            timeout,
            script: redis::Script::new(SCRIPT),
            threshold: config.threshold,
            window_ms: config.window_seconds.saturating_mul(1000),
            block_ms: config.block_seconds.saturating_mul(1000),
            known_blocks: moka::sync::Cache::builder()
                .max_capacity(config.max_tracked as u64)
                .time_to_live(Duration::from_secs(config.block_seconds))
                .build(),
            known_unblocked: (config.unblocked_cache_ms > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(config.max_tracked as u64)
                    .time_to_live(Duration::from_millis(config.unblocked_cache_ms))
                    .build()
            }),
            fallback: InProcessFailures::new(config),
            degraded: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            retry_at: Mutex::new(None),
            retry_after_error: RETRY_AFTER_ERROR,
            calls: AtomicU64::new(0),
        }
    }

    /// Waits `pause` (instead of a second) after a Redis failure before
    /// asking Redis again.
    pub fn with_retry_after_error(mut self, pause: Duration) -> Self {
        self.retry_after_error = pause;
        self
    }

    /// Calls sent to Redis since start.
    pub fn redis_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Operations answered by the in-process fallback since start.
    pub fn degraded_operations(&self) -> u64 {
        self.degraded.load(Ordering::Relaxed)
    }

    async fn call(
        &self,
        key: &FailureKey,
        record: bool,
        block: bool,
    ) -> Result<(u64, bool), String> {
        let retry_at = *self.retry_at.lock().unwrap_or_else(|p| p.into_inner());
        if retry_at.is_some_and(|at| Instant::now() < at) {
            return Err("Redis failed to answer moments ago; not asked".into());
        }
        let result = self.call_redis(key, record, block).await;
        *self.retry_at.lock().unwrap_or_else(|p| p.into_inner()) = result
            .is_err()
            .then(|| Instant::now() + self.retry_after_error);
        result
    }

    async fn call_redis(
        &self,
        key: &FailureKey,
        record: bool,
        block: bool,
    ) -> Result<(u64, bool), String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(redis_key(key))
            .arg(if record { "record" } else { "check" })
            .arg(self.threshold)
            .arg(self.window_ms)
            .arg(self.block_ms)
            .arg(u8::from(block));
        let answer = tokio::time::timeout(self.timeout, async {
            let mut con = self.redis.connection().await.map_err(|e| e.to_string())?;
            invocation
                .invoke_async::<Vec<i64>>(&mut con)
                .await
                .map_err(|e| {
                    self.redis.note_error(&e);
                    e.to_string()
                })
        })
        .await
        .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))??;
        match answer.as_slice() {
            [blocked_ms, reached] => Ok((u64::try_from(*blocked_ms).unwrap_or(0), *reached == 1)),
            other => Err(format!(
                "the failure script answered {} values",
                other.len()
            )),
        }
    }

    fn answered(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(
                target: "portcullis::authn",
                "Redis answers again: failure counts are shared again"
            );
        }
    }

    fn degrade(&self, error: &str) {
        self.degraded.fetch_add(1, Ordering::Relaxed);
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                target: "portcullis::authn",
                error,
                "Redis does not answer: counting authentication failures in this process until it does"
            );
        }
    }

    fn remember_block(&self, key: &FailureKey, now: Instant, blocked_ms: u64) {
        if blocked_ms > 0 {
            self.known_blocks
                .insert(key.clone(), now + Duration::from_millis(blocked_ms));
        }
    }
}

#[tonic::async_trait]
impl FailureStore for RedisFailures {
    async fn blocked_for(&self, key: &FailureKey, now: Instant) -> Option<Duration> {
        if let Some(until) = self.known_blocks.get(key).filter(|u| *u > now) {
            return Some(until - now);
        }
        // Blocks counted while Redis was away still hold.
        if let Some(left) = self.fallback.blocked_for_now(key, now) {
            return Some(left);
        }
        if let Some(unblocked) = &self.known_unblocked {
            if unblocked.contains_key(key) {
                return None;
            }
        }
        match self.call(key, false, false).await {
            Ok((blocked_ms, _)) => {
                self.answered();
                self.remember_block(key, now, blocked_ms);
                if let (0, Some(unblocked)) = (blocked_ms, &self.known_unblocked) {
                    unblocked.insert(key.clone(), ());
                }
                (blocked_ms > 0).then(|| Duration::from_millis(blocked_ms))
            }
            Err(e) => {
                self.degrade(&e);
                None
            }
        }
    }

    async fn record_failure(&self, key: &FailureKey, now: Instant, block: bool) -> bool {
        if let Some(unblocked) = &self.known_unblocked {
            unblocked.invalidate(key);
        }
        match self.call(key, true, block).await {
            Ok((blocked_ms, reached)) => {
                self.answered();
                self.remember_block(key, now, blocked_ms);
                reached
            }
            Err(e) => {
                self.degrade(&e);
                self.fallback.record_failure_now(key, now, block)
            }
        }
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// The Redis key of a failure record: its own hash tag.
pub fn redis_key(key: &FailureKey) -> String {
    match key {
        FailureKey::Source(ip) => format!("{KEY_PREFIX}{{src:{ip}}}"),
        FailureKey::Identity(id) => {
            let digest = sha2::Sha256::digest(id.as_bytes());
            format!("{KEY_PREFIX}{{id:{}}}", hex::encode(&digest[..16]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_is_its_own_hash_tag_and_identities_are_hashed() {
        assert_eq!(
            redis_key(&FailureKey::Source([192, 0, 2, 7].into())),
            "portcullis:f:{src:192.0.2.7}"
        );
        let v6 = redis_key(&FailureKey::Source("2001:db8::1".parse().unwrap()));
        assert_eq!(v6, "portcullis:f:{src:2001:db8::1}");
        // Attacker-chosen identities (braces, length) never shape the key.
        let hostile = format!("jwt:{{x}}#{}", "a".repeat(300));
        let key = redis_key(&FailureKey::Identity(hostile));
        assert_eq!(key.len(), "portcullis:f:{id:}".len() + 32);
        assert_eq!(key.matches('{').count(), 1);
        assert_ne!(key, redis_key(&FailureKey::Identity("jwt:{x}#b".into())));
    }
}
