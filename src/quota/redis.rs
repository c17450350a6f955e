//! The Redis quota store: one Lua script, the same GCRA as `gcra.rs`, run
//! atomically by Redis over every key of a request in one round trip, with
//! time from the Redis server (`TIME`), so replicas with skewed clocks
//! cannot split or double count.
//!
//! The script is sent once and then called by hash (`EVALSHA`); the `redis`
//! crate's `Script` resends it on `NOSCRIPT` (after a restart or
//! `SCRIPT FLUSH`). Every key written gets a TTL equal to the time until its
//! bucket is full again, after which it carries no information.
//!
//! The connection is a [`SharedRedis`] (see `shared_redis.rs`), made
//! lazily in the background and shared with the authentication stores
//! that use the same Redis. A `READONLY` reply (a failed-over primary)
//! drops the connection so the next call reconnects.
//!
//! Redis Cluster: every key is its own hash tag (`portcullis:q:{<key>}`),
//! so keys spread over the slots. The keys of one request that share a slot
//! are charged by one script call, atomically. Keys in different slots are
//! charged slot by slot (in the request's order); when a later slot refuses, the
//! slots already charged are refunded (compensation), so a refused request
//! consumes nothing once the call returns. Between a charge and its refund a
//! concurrent request may see the temporary charge and be refused (never
//! over-admitted); if the refund itself fails, the earlier slots stay
//! charged (errs towards refusing). `quota_mode` limits are judged over all
//! slots (refunded the same way when all of them are over). Fixed windows
//! and post-hoc charges are never refunded: they count whatever the verdict.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;

use crate::shared_redis::{Connection, SharedRedis};

use super::{Charge, Charged, LimitState, QuotaStore, StoreError};

/// The GCRA of `gcra::assess` over all KEYS, all or nothing; or, per key,
/// envoyproxy/ratelimit's fixed window (every hit counted).
///
/// ARGV: per key, 4 values: a, b, cost, flags. Flags: 1 shadow, 2 quota
/// mode, 4 post-hoc, 8 fixed window. GCRA: a = emission_us, b =
/// tolerance_us. Fixed window: a = window_us, b = limit; the counter is
/// `KEYS[i]:<window start>` (same hash tag, same slot).
/// Returns: allowed (0|1), then per key: over, remaining, reset_us, retry_us.
/// `allowed` follows `quota::passes`: every enforced key fits, and some
/// quota-mode key fits if there are any.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tats, news, always, counts, over = {}, {}, {}, {}, {}
local out = {0}
local enforced_ok, quotas, quota_ok = true, false, false
local function bit(flags, b) return math.floor(flags / b) % 2 == 1 end
for i = 1, n do
  local a = tonumber(ARGV[(i - 1) * 4 + 1])
  local b = tonumber(ARGV[(i - 1) * 4 + 2])
  local cost = tonumber(ARGV[(i - 1) * 4 + 3])
  local flags = tonumber(ARGV[(i - 1) * 4 + 4])
  local remaining, reset, retry
  if bit(flags, 8) then
    local start = now - now % a
    local key = KEYS[i] .. ':' .. string.format('%d', start)
    local count = (counts[key] and counts[key][1]) or tonumber(redis.call('GET', key) or '0')
    count = count + cost
    if cost > 0 then counts[key] = {count, start + a} end
    reset = start + a - now
    if count > b then
      over[i] = 1
      remaining = 0
      retry = reset
    else
      over[i] = 0
      remaining = b - count
      retry = 0
    end
  else
    local tat = news[KEYS[i]] or tonumber(redis.call('GET', KEYS[i]) or '0')
    local base = math.max(tat, now)
    local new_tat = base + cost * a
    local ahead = new_tat - now
    if ahead > b then
      over[i] = 1
      remaining = math.floor(math.max(b - (base - now), 0) / a)
      reset = base - now
      retry = ahead - b
      if bit(flags, 4) and cost > 0 then
        -- Work already done: recorded past the burst, whatever the verdict.
        news[KEYS[i]] = new_tat
        always[KEYS[i]] = true
      end
    else
      over[i] = 0
      remaining = math.floor((b - ahead) / a)
      reset = ahead
      retry = 0
      if cost > 0 then
        news[KEYS[i]] = new_tat
        if bit(flags, 4) then always[KEYS[i]] = true end
      end
    end
    tats[i] = base
  end
  if not bit(flags, 1) then
    if bit(flags, 2) then
      quotas = true
      if over[i] == 0 then quota_ok = true end
    elseif over[i] == 1 then
      enforced_ok = false
    end
  end
  out[#out + 1] = over[i]
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
local allowed = enforced_ok and (quota_ok or not quotas)
if allowed then out[1] = 1 end
for key, new_tat in pairs(news) do
  if allowed or always[key] then
    local ttl = math.max(math.ceil((new_tat - now) / 1000), 1)
    redis.call('SET', key, string.format('%d', new_tat), 'PX', ttl)
  end
end
for key, c in pairs(counts) do
  local ttl = math.max(math.ceil((c[2] - now) / 1000), 1)
  redis.call('SET', key, string.format('%d', c[1]), 'PX', ttl)
end
if not allowed then
  -- Nothing else was charged: report each state as it stays.
  for i = 1, n do
    local flags = tonumber(ARGV[(i - 1) * 4 + 4])
    local cost = tonumber(ARGV[(i - 1) * 4 + 3])
    if over[i] == 0 and not bit(flags, 8) and not bit(flags, 4) and cost > 0 then
      local emission = tonumber(ARGV[(i - 1) * 4 + 1])
      local tolerance = tonumber(ARGV[(i - 1) * 4 + 2])
      out[(i - 1) * 4 + 3] = math.floor((tolerance - (tats[i] - now)) / emission)
      out[(i - 1) * 4 + 4] = tats[i] - now
    end
  end
end
return out
"#;

/// Gives back what a charge took: ARGV per key: emission_us * cost.
const REFUND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local new_tat = tat - tonumber(ARGV[i])
  if new_tat <= now then
    redis.call('DEL', KEYS[i])
  else
    local ttl = math.max(math.ceil((new_tat - now) / 1000), 1)
    redis.call('SET', KEYS[i], string.format('%d', new_tat), 'PX', ttl)
  end
end
return 1
"#;

/// Prefix of every key Portcullis writes.
pub const KEY_PREFIX: &str = "portcullis:q:";

/// Quota counters in Redis (one primary, or a Redis Cluster).
pub struct RedisStore {
    redis: Arc<SharedRedis>,
    script: redis::Script,
    refund: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `url` (`redis://host:port/db`); connects on first use.
    /// `timeout` bounds each command.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, String> {
        Ok(RedisStore::on(Arc::new(SharedRedis::single(
            url,
            timeout,
            "quotas.redis_url",
        )?)))
    }

    /// A store on a Redis Cluster reached through `seeds`.
    pub fn cluster(seeds: &[String], timeout: Duration) -> Result<RedisStore, String> {
        Ok(RedisStore::on(Arc::new(SharedRedis::cluster(
            seeds,
            timeout,
            "quotas.redis_urls",
        )?)))
    }

    /// A store on a Redis shared with other stores.
    pub fn on(redis: Arc<SharedRedis>) -> RedisStore {
        RedisStore {
            redis,
            script: redis::Script::new(SCRIPT),
            refund: redis::Script::new(REFUND),
        }
    }

    async fn run<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        charges: &[&Charge],
    ) -> Result<Charged, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for c in charges {
            let (a, b) = match c.window {
                Some(w) => (w.window_us, w.limit),
                None => (c.rate.emission_us, c.rate.tolerance_us),
            };
            let flags = u8::from(c.shadow)
                | u8::from(c.quota) << 1
                | u8::from(c.post_hoc) << 2
                | u8::from(c.window.is_some()) << 3;
            invocation
                .key(redis_key(&c.key))
                .arg(a)
                .arg(b)
                .arg(c.cost)
                .arg(flags);
        }
        let reply: Vec<i64> = match invocation.invoke_async(con).await {
            Ok(r) => r,
            Err(e) => {
                self.redis.note_error(&e);
                return Err(error(e));
            }
        };
        if reply.len() != 1 + 4 * charges.len() {
            return Err(StoreError {
                store: "redis",
                message: format!("the quota script answered {} values", reply.len()),
            });
        }
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        let states = reply[1..]
            .chunks(4)
            .map(|s| LimitState {
                over: s[0] == 1,
                remaining: u(s[1]),
                reset_us: u(s[2]),
                retry_us: u(s[3]),
            })
            .collect();
        Ok(Charged {
            allowed: reply[0] == 1,
            states,
        })
    }

    async fn charge_cluster(
        &self,
        con: &mut ClusterConnection,
        charges: &[Charge],
    ) -> Result<Charged, StoreError> {
        let mut slots: Vec<(Slot, Vec<usize>)> = Vec::new();
        for (i, c) in charges.iter().enumerate() {
            let slot = Slot::for_key(redis_key(&c.key));
            match slots.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => slots.push((slot, vec![i])),
            }
        }
        let mut states: Vec<Option<LimitState>> = vec![None; charges.len()];
        let mut charged_groups: Vec<&Vec<usize>> = Vec::new();
        let mut refused = false;
        for (_, members) in &slots {
            let group: Vec<Charge> = members
                .iter()
                .map(|&i| Charge {
                    // After a refusal: only report, charge nothing (but
                    // what is always recorded still is).
                    cost: if refused && !charges[i].always_recorded() {
                        0
                    } else {
                        charges[i].cost
                    },
                    // Quota mode spans slots: a slot cannot judge it, so
                    // each slot charges a quota limit when it fits (as a
                    // shadow one) and the verdict is taken over all slots.
                    shadow: charges[i].shadow || charges[i].quota,
                    ..charges[i].clone()
                })
                .collect();
            let refs: Vec<&Charge> = group.iter().collect();
            let result = self.run(con, &refs).await;
            let result = match result {
                Ok(r) => r,
                Err(e) => {
                    self.refund_groups(con, charges, &states, &charged_groups)
                        .await;
                    return Err(e);
                }
            };
            for (&i, state) in members.iter().zip(&result.states) {
                states[i] = Some(*state);
            }
            if refused {
                // Reported with cost 0: show the real cost's verdict.
                for &i in members.iter().filter(|&&i| !charges[i].always_recorded()) {
                    let c = &charges[i];
                    let st = states[i].as_mut().expect("set above");
                    let ahead = c.cost * c.rate.emission_us + st.reset_us;
                    st.over = ahead > c.rate.tolerance_us;
                    st.retry_us = ahead.saturating_sub(c.rate.tolerance_us);
                }
            } else if result.allowed {
                charged_groups.push(members);
            } else {
                refused = true;
            }
        }
        if !refused {
            let over = states.iter().map(|s| s.is_some_and(|s| s.over));
            refused = !super::passes(charges.iter().zip(over));
        }
        if refused {
            self.refund_groups(con, charges, &states, &charged_groups)
                .await;
            for members in &charged_groups {
                for &i in *members {
                    let c = &charges[i];
                    let st = states[i].as_mut().expect("charged");
                    if !st.over && c.cost > 0 && !c.always_recorded() {
                        st.remaining = (st.remaining + c.cost).min(c.rate.burst());
                        st.reset_us = st.reset_us.saturating_sub(c.cost * c.rate.emission_us);
                    }
                }
            }
        }
        Ok(Charged {
            allowed: !refused,
            states: states
                .into_iter()
                .map(|s| s.expect("every charge answered"))
                .collect(),
        })
    }

    async fn refund_groups(
        &self,
        con: &mut ClusterConnection,
        charges: &[Charge],
        states: &[Option<LimitState>],
        groups: &[&Vec<usize>],
    ) {
        for members in groups {
            let mut invocation = self.refund.prepare_invoke();
            let mut any = false;
            for &i in *members {
                let c = &charges[i];
                let charged =
                    states[i].is_some_and(|s| !s.over) && c.cost > 0 && !c.always_recorded();
                if charged {
                    invocation
                        .key(redis_key(&c.key))
                        .arg(c.cost * c.rate.emission_us);
                    any = true;
                }
            }
            if any {
                if let Err(e) = invocation.invoke_async::<i64>(con).await {
                    tracing::warn!(target: "portcullis::quota", error = %e, "quota refund failed; the charge stays");
                }
            }
        }
    }
}

fn redis_key(key: &str) -> String {
    format!("{KEY_PREFIX}{{{key}}}")
}

fn error(e: redis::RedisError) -> StoreError {
    StoreError {
        store: "redis",
        message: e.to_string(),
    }
}

#[tonic::async_trait]
impl QuotaStore for RedisStore {
    async fn charge(&self, charges: &[Charge]) -> Result<Charged, StoreError> {
        let connection = self.redis.connection().await.map_err(|e| StoreError {
            store: "redis",
            message: e.to_string(),
        })?;
        match connection {
            Connection::Single(mut con) => {
                let refs: Vec<&Charge> = charges.iter().collect();
                self.run(&mut con, &refs).await
            }
            Connection::Cluster(mut con) => self.charge_cluster(&mut con, charges).await,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.redis.connection().await.map_err(|e| StoreError {
            store: self.name(),
            message: e.to_string(),
        })?;
        if let Err(e) = redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
        {
            self.redis.note_error(&e);
            return Err(error(e));
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        if self.redis.is_cluster() {
            "redis_cluster"
        } else {
            "redis"
        }
    }
}
