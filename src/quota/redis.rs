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
//! The connection is a `ConnectionManager` (one multiplexed connection that
//! reconnects after errors), created lazily so that Portcullis starts and
//! serves in its failure mode while Redis is down. A `READONLY` reply (a
//! failed-over primary) drops the connection so the next call reconnects.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Charge, Charged, LimitState, QuotaStore, StoreError};

/// The GCRA of `gcra::assess` over all KEYS, all or nothing.
///
/// ARGV: per key, 4 values: emission_us, tolerance_us, cost, shadow (0|1).
/// Returns: allowed (0|1), then per key: over, remaining, reset_us, retry_us.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tats, news, over = {}, {}, {}
local out = {0}
local allowed = 1
for i = 1, n do
  local emission = tonumber(ARGV[(i - 1) * 4 + 1])
  local tolerance = tonumber(ARGV[(i - 1) * 4 + 2])
  local cost = tonumber(ARGV[(i - 1) * 4 + 3])
  local shadow = ARGV[(i - 1) * 4 + 4] == '1'
  local tat = news[KEYS[i]] or tonumber(redis.call('GET', KEYS[i]) or '0')
  local base = math.max(tat, now)
  local new_tat = base + cost * emission
  local ahead = new_tat - now
  local remaining, reset, retry
  if ahead > tolerance then
    over[i] = 1
    remaining = math.floor(math.max(tolerance - (base - now), 0) / emission)
    reset = base - now
    retry = ahead - tolerance
    if not shadow then allowed = 0 end
  else
    over[i] = 0
    remaining = math.floor((tolerance - ahead) / emission)
    reset = ahead
    retry = 0
    if cost > 0 then news[KEYS[i]] = new_tat end
  end
  tats[i] = base
  out[#out + 1] = over[i]
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
out[1] = allowed
if allowed == 1 then
  for key, new_tat in pairs(news) do
    local ttl = math.max(math.ceil((new_tat - now) / 1000), 1)
    redis.call('SET', key, string.format('%d', new_tat), 'PX', ttl)
  end
else
  -- Nothing was charged: report each state as it stays.
  for i = 1, n do
    if over[i] == 0 then
      local emission = tonumber(ARGV[(i - 1) * 4 + 1])
      local tolerance = tonumber(ARGV[(i - 1) * 4 + 2])
      out[(i - 1) * 4 + 3] = math.floor((tolerance - (tats[i] - now)) / emission)
      out[(i - 1) * 4 + 4] = tats[i] - now
    end
  end
end
return out
"#;

/// Prefix of every key Portcullis writes.
pub const KEY_PREFIX: &str = "portcullis:q:";

/// Quota counters in Redis.
pub struct RedisStore {
    client: redis::Client,
    config: ConnectionManagerConfig,
    connection: Mutex<Option<ConnectionManager>>,
    script: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `url` (`redis://host:port/db`); connects on first use.
    /// `timeout` bounds connecting and each command.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| {
            format!("quotas.redis_url is not a Redis URL (redis://host:port/db): {e}")
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        Ok(RedisStore {
            client,
            config,
            connection: Mutex::new(None),
            script: redis::Script::new(SCRIPT),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(c);
        }
        let c = ConnectionManager::new_with_config(self.client.clone(), self.config.clone())
            .await
            .map_err(error)?;
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }
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
        let mut con = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        for c in charges {
            invocation
                .key(format!("{KEY_PREFIX}{{{}}}", c.key))
                .arg(c.rate.emission_us)
                .arg(c.rate.tolerance_us)
                .arg(c.cost)
                .arg(u8::from(c.shadow));
        }
        let reply: Vec<i64> = match invocation.invoke_async(&mut con).await {
            Ok(r) => r,
            Err(e) => {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) {
                    *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
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

    fn name(&self) -> &'static str {
        "redis"
    }
}
