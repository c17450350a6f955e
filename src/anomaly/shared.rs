//! Anomaly blocks shared by every replica through Redis: a block imposed on
//! one replica is written to one sorted set (`portcullis:ab`, member
//! `p:<principal>` or `s:<address>`, score the block's end in milliseconds
//! since the epoch), and every replica reads the set's live members four
//! times a second and imposes them too. A source blocked for failing on
//! one replica is then refused by all of them within a quarter of a
//! second. While Redis does not answer, each replica keeps its own blocks
//! (as before); the set expires with its longest block.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Subject;
use crate::shared_redis::SharedRedis;

/// The sorted set of live blocks.
pub const KEY: &str = "portcullis:ab";

/// How often a replica reads the blocks of the others.
pub const POLL: Duration = Duration::from_millis(250);

/// Adds blocks: KEYS[1] the set; ARGV: member, end (ms), ... Drops ended
/// ones and keeps the set for as long as its longest block.
const ADD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local latest = 0
for i = 1, #ARGV, 2 do
  local ends = tonumber(ARGV[i + 1])
  redis.call('ZADD', KEYS[1], 'GT', ends, ARGV[i])
  if ends > latest then latest = ends end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = redis.call('PTTL', KEYS[1])
if latest - now > ttl then
  redis.call('PEXPIRE', KEYS[1], math.max(latest - now, 1))
end
return 1
"#;

/// Blocks in Redis, shared by every replica.
pub struct SharedBlocks {
    redis: Arc<SharedRedis>,
    timeout: Duration,
    add: redis::Script,
}

impl std::fmt::Debug for SharedBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBlocks").finish_non_exhaustive()
    }
}

fn member(subject: &Subject) -> String {
    match subject {
        Subject::Principal(p) => format!("p:{p}"),
        Subject::Source(ip) => format!("s:{ip}"),
    }
}

fn subject(member: &str) -> Option<Subject> {
    match member.split_once(':')? {
        ("p", p) => Some(Subject::Principal(p.to_string())),
        ("s", ip) => ip.parse::<IpAddr>().ok().map(Subject::Source),
        _ => None,
    }
}

impl SharedBlocks {
    /// Blocks in `redis`, each call bounded by `timeout`.
    pub fn new(redis: Arc<SharedRedis>, timeout: Duration) -> SharedBlocks {
        SharedBlocks {
            redis,
            timeout,
            add: redis::Script::new(ADD),
        }
    }

    /// Writes blocks (subject, end in microseconds since the epoch), on a
    /// task of its own (the caller does not wait for Redis).
    pub fn publish(self: &Arc<Self>, blocks: Vec<(Subject, u64)>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = Arc::clone(self);
        rt.spawn(async move {
            let mut invocation = shared.add.prepare_invoke();
            invocation.key(KEY);
            for (s, until_us) in &blocks {
                invocation.arg(member(s)).arg(until_us / 1000);
            }
            let result = tokio::time::timeout(shared.timeout, async {
                let mut con = shared.redis.connection().await.map_err(|e| e.to_string())?;
                invocation
                    .invoke_async::<i64>(&mut con)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
            if !matches!(result, Ok(Ok(_))) {
                tracing::warn!(target: "portcullis::anomaly", "an anomaly block could not be shared through Redis; it holds on this replica");
            }
        });
    }

    /// The live blocks of every replica: (subject, end in microseconds
    /// since the epoch), given `now_us` on the caller's clock.
    pub async fn read(&self, now_us: u64) -> Result<Vec<(Subject, u64)>, String> {
        let now_ms = now_us / 1000;
        let members: Vec<(String, u64)> = tokio::time::timeout(self.timeout, async {
            let mut con = self.redis.connection().await.map_err(|e| e.to_string())?;
            redis::cmd("ZRANGEBYSCORE")
                .arg(KEY)
                .arg(format!("({now_ms}"))
                .arg("+inf")
                .arg("WITHSCORES")
                .query_async::<Vec<(String, u64)>>(&mut con)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))??;
        Ok(members
            .into_iter()
            .filter_map(|(m, ends_ms)| subject(&m).map(|s| (s, ends_ms * 1000)))
            .collect())
    }
}
