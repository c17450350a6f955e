//! Token reservations in Redis (one primary or a Cluster), shared by every
//! replica:
//!
//! - per limit, an entry `request id -> tokens` in a hash next to the
//!   limit's counter, `portcullis:q:{<key>}:reserved` (the same hash tag,
//!   so the same Cluster slot as the counter). Settling runs one script per
//!   slot that, per limit, deletes the entry and applies the difference to
//!   the counter in one step: whichever replica deletes it applies it, so
//!   a settlement counts once however many replicas (or sweepers) try;
//! - per request, a record `portcullis:r:{<request id>}` (the JSON
//!   [`Reservation`]) with its own TTL (the reservation's plus
//!   [`RECORD_GRACE_MS`]), which ext_proc on any replica reads;
//! - one sorted set `portcullis:r:expiring`, request ids scored by expiry
//!   (Redis time, milliseconds). Sweepers claim expired ids with a script
//!   that reads and removes them at once, so each goes to one replica.
//!
//! The record is written first, with `SET NX`: a request id an open
//! reservation holds is not taken over by a second request (its `Check`
//! is refused instead, `pipeline/reserve.rs`). A crash between the charge
//! and these writes leaves the estimate charged (as `keep_estimate`
//! would): it errs towards refusing, never admits more.

use std::collections::HashMap;
use std::sync::Arc;

use redis::cluster_routing::Slot;

use super::{Reservation, ReservationStore, RECORD_GRACE_MS};
use crate::quota::redis::{error, redis_key, unreachable};
use crate::quota::StoreError;
use crate::shared_redis::SharedRedis;

/// Prefix of reservation records.
pub const RECORD_PREFIX: &str = "portcullis:r:";
/// The sorted set of open reservations by expiry.
pub const EXPIRING: &str = "portcullis:r:expiring";

/// Records per-limit entries. KEYS: entry hashes. ARGV[1]: request id,
/// ARGV[2]: the hashes' minimum TTL (ms), ARGV[2 + i]: tokens of KEYS[i].
const RESERVE: &str = r#"
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[1], ARGV[2 + i])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
return 1
"#;

/// Adds a request id to the expiry set at Redis time + ARGV[1] ms; the set
/// lives at least ARGV[3] ms more (it carries nothing once its members'
/// records are gone).
const EXPIRE_AT: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[1]), ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"#;

/// Claims up to ARGV[1] expired ids: read and removed in one step.
const CLAIM: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do redis.call('ZREM', KEYS[1], id) end
return ids
"#;

/// Settles limits of one slot. KEYS: pairs (counter, entry hash). ARGV[1]:
/// the request id; per pair, emission_us and the tokens to settle at.
/// Per pair it answers the tokens the entry held, or -1 when the entry was
/// gone (settled already). The difference moves the counter's TAT the way
/// `LocalStore::adjust` does: back (never below now) or forward past the
/// burst.
const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS / 2 do
  local counter, entries = KEYS[2 * i - 1], KEYS[2 * i]
  local emission = tonumber(ARGV[2 * i])
  local target = tonumber(ARGV[2 * i + 1])
  local held = redis.call('HGET', entries, ARGV[1])
  if not held then
    out[i] = -1
  else
    redis.call('HDEL', entries, ARGV[1])
    held = tonumber(held)
    out[i] = held
    local delta = target - held
    if delta ~= 0 then
      local tat = tonumber(redis.call('GET', counter) or '0')
      if tat < now then tat = now end
      local new_tat = tat + delta * emission
      if new_tat <= now then
        redis.call('DEL', counter)
      else
        local ttl = math.max(math.ceil((new_tat - now) / 1000), 1)
        redis.call('SET', counter, string.format('%d', new_tat), 'PX', ttl)
      end
    end
  end
end
return out
"#;

/// Reservations in a Redis shared with the quota counters.
pub struct RedisReservations {
    redis: Arc<SharedRedis>,
    reserve: redis::Script,
    expire_at: redis::Script,
    claim: redis::Script,
    settle: redis::Script,
}

impl std::fmt::Debug for RedisReservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReservations").finish_non_exhaustive()
    }
}

fn entries_key(key: &str) -> String {
    format!("{}:reserved", redis_key(key))
}

fn record_key(request_id: &str) -> String {
    format!("{RECORD_PREFIX}{{{request_id}}}")
}

impl RedisReservations {
    /// Reservations on `redis` (the quota store's connection).
    pub fn on(redis: Arc<SharedRedis>) -> RedisReservations {
        RedisReservations {
            redis,
            reserve: redis::Script::new(RESERVE),
            expire_at: redis::Script::new(EXPIRE_AT),
            claim: redis::Script::new(CLAIM),
            settle: redis::Script::new(SETTLE),
        }
    }

    async fn connection(&self) -> Result<crate::shared_redis::Connection, StoreError> {
        self.redis
            .connection()
            .await
            .map_err(|e| unreachable("redis", e))
    }

    /// The limits' indices grouped so that each group is one script call:
    /// all of them on one primary, one group per slot in a Cluster.
    fn groups(&self, r: &Reservation) -> Vec<Vec<usize>> {
        if !self.redis.is_cluster() {
            return vec![(0..r.limits.len()).collect()];
        }
        let mut slots: Vec<(Slot, Vec<usize>)> = Vec::new();
        for (i, l) in r.limits.iter().enumerate() {
            let slot = Slot::for_key(redis_key(&l.key));
            match slots.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => slots.push((slot, vec![i])),
            }
        }
        slots.into_iter().map(|(_, m)| m).collect()
    }

    fn failed(&self, e: redis::RedisError) -> StoreError {
        self.redis.note_error(&e);
        error(e)
    }
}

#[tonic::async_trait]
impl ReservationStore for RedisReservations {
    async fn reserve(&self, r: &Reservation) -> Result<bool, StoreError> {
        let mut con = self.connection().await?;
        let keep_ms = r.ttl_ms + RECORD_GRACE_MS;
        // The record first, only if absent: of two reservations under one
        // request id, the one whose record is written holds it; the other
        // writes nothing.
        let json = serde_json::to_string(r).expect("a reservation serialises");
        let written: Option<String> = redis::cmd("SET")
            .arg(record_key(&r.request_id))
            .arg(json)
            .arg("NX")
            .arg("PX")
            .arg(keep_ms)
            .query_async(&mut con)
            .await
            .map_err(|e| self.failed(e))?;
        if written.is_none() {
            return Ok(false);
        }
        for group in self.groups(r) {
            let mut call = self.reserve.prepare_invoke();
            call.arg(&r.request_id).arg(keep_ms);
            for &i in &group {
                call.key(entries_key(&r.limits[i].key))
                    .arg(r.limits[i].reserved);
            }
            call.invoke_async::<i64>(&mut con)
                .await
                .map_err(|e| self.failed(e))?;
        }
        self.expire_at
            .prepare_invoke()
            .key(EXPIRING)
            .arg(r.ttl_ms)
            .arg(&r.request_id)
            .arg(keep_ms)
            .invoke_async::<i64>(&mut con)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(true)
    }

    async fn get(&self, request_id: &str) -> Result<Option<Reservation>, StoreError> {
        let mut con = self.connection().await?;
        let text: Option<String> = redis::cmd("GET")
            .arg(record_key(request_id))
            .query_async(&mut con)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    async fn settle(
        &self,
        r: &Reservation,
        targets: &[u64],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let mut con = self.connection().await?;
        let mut held: HashMap<usize, Option<u64>> = HashMap::new();
        for group in self.groups(r) {
            let mut call = self.settle.prepare_invoke();
            call.arg(&r.request_id);
            for &i in &group {
                let l = &r.limits[i];
                call.key(redis_key(&l.key))
                    .key(entries_key(&l.key))
                    .arg(l.emission_us)
                    .arg(targets[i]);
            }
            let answer: Vec<i64> = call
                .invoke_async(&mut con)
                .await
                .map_err(|e| self.failed(e))?;
            for (&i, v) in group.iter().zip(answer) {
                held.insert(i, u64::try_from(v).ok());
            }
        }
        // The record and the expiry entry: no longer needed by anyone
        // (the per-limit entries decided what counted).
        let cleanup = async {
            redis::cmd("DEL")
                .arg(record_key(&r.request_id))
                .query_async::<i64>(&mut con)
                .await?;
            redis::cmd("ZREM")
                .arg(EXPIRING)
                .arg(&r.request_id)
                .query_async::<i64>(&mut con)
                .await
        };
        if let Err(e) = cleanup.await {
            tracing::debug!(target: "portcullis::quota", error = %e, "reservation record not removed; it expires on its own");
        }
        Ok((0..r.limits.len())
            .map(|i| held.get(&i).copied().flatten())
            .collect())
    }

    async fn claim_expired(&self, n: usize) -> Result<Vec<Reservation>, StoreError> {
        let mut con = self.connection().await?;
        let ids: Vec<String> = self
            .claim
            .prepare_invoke()
            .key(EXPIRING)
            .arg(n)
            .invoke_async(&mut con)
            .await
            .map_err(|e| self.failed(e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let text: Option<String> = redis::cmd("GET")
                .arg(record_key(&id))
                .query_async(&mut con)
                .await
                .map_err(|e| self.failed(e))?;
            // Gone: settled meanwhile (or lost with its TTL: the estimate
            // stays charged).
            if let Some(r) = text.and_then(|t| serde_json::from_str(&t).ok()) {
                out.push(r);
            }
        }
        Ok(out)
    }
}
