//! The Redis quota store: one Lua script, the same GCRA as `gcra.rs`, run
//! atomically by Redis over every key of a request, with time from the
//! Redis server (`TIME`), so replicas with skewed clocks cannot split or
//! double count. Concurrent requests to one target (the primary, or one
//! Cluster slot) are batched into one script call (`batch.rs`), each
//! judged in turn, so a burst costs a handful of round trips.
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
//! charged (errs towards refusing). A Cluster's charge runs on a task of
//! its own (see `enforce.rs`), so a caller that gives up or goes away
//! cannot cut it between a charge and its refund; a single primary's is
//! answered by its batch worker (`QuotaStore::submit`), which runs to the
//! end whatever the caller does. `quota_mode` limits are judged over all
//! slots (refunded the same way when all of them are over). Fixed windows
//! and post-hoc charges are never refunded: they count whatever the verdict.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use redis::aio::ConnectionLike;
use redis::cluster_routing::Slot;

use crate::shared_redis::{Connection, SharedRedis};

mod batch;
use batch::{Batches, Epoch, Job, Reply, REPLICA_GRACE_STALLS, SCRIPT};

use super::breaker::Silence;
use super::{Charge, Charged, Completion, LimitState, QuotaStore, StoreError};

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

/// The hasher that turns a Cluster slot into a shard id.
const SLOT_IDS: std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher> =
    std::hash::BuildHasherDefault::new();

/// Prefix of every key Portcullis writes.
pub const KEY_PREFIX: &str = "portcullis:q:";

/// Quota counters in Redis (one primary, or a Redis Cluster).
///
/// Concurrent requests to the same target (the primary, or one Cluster
/// slot) are batched: many requests in one script call, judged one after
/// the other inside it, so a burst costs a handful of round trips and
/// scripts instead of one each.
pub struct RedisStore {
    redis: Arc<SharedRedis>,
    batches: Batches,
    /// One queue per target: `None` for a single primary, else the slot.
    queues: Mutex<HashMap<Option<Slot>, mpsc::UnboundedSender<Job>>>,
    /// How long each target has been silent, by shard id
    /// ([`QuotaStore::shard`]).
    silences: Mutex<HashMap<u64, Arc<Silence>>>,
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
            batches: Batches {
                redis: Arc::clone(&redis),
                script: redis::Script::new(SCRIPT),
                epoch: Epoch(tokio::time::Instant::now()),
                witness_every: crate::quota::DEFAULT_STALL / 4,
                replica_grace: crate::quota::DEFAULT_STALL * REPLICA_GRACE_STALLS,
            },
            redis,
            queues: Mutex::new(HashMap::new()),
            silences: Mutex::new(HashMap::new()),
            refund: redis::Script::new(REFUND),
        }
    }

    /// This store with the stall threshold of the breaker over it
    /// (`quotas.stall_ms`; [`crate::quota::DEFAULT_STALL`] until set): on
    /// a Cluster, a script call without a reply for a quarter of it
    /// sends its slot's primary a liveness check (`ROLE`) on a connection
    /// of its own (`SharedRedis::witness`), so that a silence of the
    /// cluster client alone (refreshing its slot map after a failover)
    /// is not judged a stall; a node that answers it as a replica (the
    /// slot moved) counts as alive for `REPLICA_GRACE_STALLS` (8) stall
    /// thresholds from its first such answer.
    pub fn with_stall(mut self, stall: Duration) -> Self {
        self.batches.witness_every = (stall / 4).max(Duration::from_micros(250));
        self.batches.replica_grace = stall * REPLICA_GRACE_STALLS;
        self
    }

    /// One request's charges (all on one target), in the target's next
    /// batch.
    async fn batched(
        &self,
        slot: Option<Slot>,
        charges: Vec<Charge>,
    ) -> Result<Charged, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(
            slot,
            Job {
                charges,
                reply: Reply::Channel(reply),
            },
        );
        answer.await.unwrap_or_else(|_| {
            Err(StoreError {
                store: "redis",
                message: "the batch ended without an answer".into(),
                gone: false,
            })
        })
    }

    /// Queues `job` for the target's batch worker, starting one if there
    /// is none (or it ended: its runtime went away). A job no worker takes
    /// is answered with an error at once.
    fn enqueue(&self, slot: Option<Slot>, mut job: Job) {
        for _ in 0..2 {
            let queue = {
                let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                queues
                    .entry(slot)
                    .or_insert_with(|| {
                        // A new worker: a silence of its own (what an
                        // ended one left outstanding is not outstanding).
                        let silence = Arc::new(Silence::default());
                        self.silences
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(shard_id(slot), Arc::clone(&silence));
                        // On a Cluster, the witness asks the primary of
                        // the job's first key (all of them in `slot`).
                        let key = slot.and(job.charges.first()).map(|c| redis_key(&c.key));
                        self.batches.start(silence, key.as_deref())
                    })
                    .clone()
            };
            match queue.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    job = back;
                    self.queues
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&slot);
                }
            }
        }
        job.answer(Err(StoreError {
            store: "redis",
            message: "no batch worker could be started".into(),
            gone: false,
        }));
    }

    async fn charge_cluster(&self, charges: &[Charge]) -> Result<Charged, StoreError> {
        let slots = by_slot(charges);
        let mut states: Vec<Option<LimitState>> = vec![None; charges.len()];
        let mut charged_groups: Vec<&Vec<usize>> = Vec::new();
        let mut refused = false;
        for (slot, members) in &slots {
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
            let result = match self.batched(Some(*slot), group).await {
                Ok(r) => r,
                Err(e) => {
                    self.refund_groups(charges, &states, &charged_groups).await;
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
            self.refund_groups(charges, &states, &charged_groups).await;
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
        charges: &[Charge],
        states: &[Option<LimitState>],
        groups: &[&Vec<usize>],
    ) {
        let mut con = match self.redis.connection().await {
            Ok(con) => con,
            Err(e) => {
                tracing::warn!(target: "portcullis::quota", error = %e, "quota refund failed; the charge stays");
                return;
            }
        };
        for members in groups {
            if let Err(e) = self.refund_keys(&mut con, charges, states, members).await {
                tracing::warn!(target: "portcullis::quota", error = %e, "quota refund failed; the charge stays");
            }
        }
    }

    /// Gives back what an allowed answer charged `members` (keys that can
    /// share one script call: one slot in a Cluster).
    async fn refund_keys<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        charges: &[Charge],
        states: &[Option<LimitState>],
        members: &[usize],
    ) -> Result<(), StoreError> {
        let mut invocation = self.refund.prepare_invoke();
        let mut any = false;
        for &i in members {
            let c = &charges[i];
            if states[i].is_some_and(|s| super::was_charged(c, &s)) {
                invocation
                    .key(redis_key(&c.key))
                    .arg(c.cost * c.rate.emission_us);
                any = true;
            }
        }
        if any {
            if let Err(e) = invocation.invoke_async::<i64>(con).await {
                self.redis.note_error(&e);
                return Err(error(e));
            }
        }
        Ok(())
    }
}

/// The shard id of a target: 0 for a single primary, else derived from
/// the Cluster slot.
fn shard_id(slot: Option<Slot>) -> u64 {
    use std::hash::BuildHasher;
    // `Slot` does not expose its number; its hash (a fixed, unkeyed
    // hasher) tells the 16,384 slots apart (tested).
    slot.map_or(0, |slot| SLOT_IDS.hash_one(slot))
}

/// The charges' indices grouped by Cluster slot, in the request's order.
fn by_slot(charges: &[Charge]) -> Vec<(Slot, Vec<usize>)> {
    let mut slots: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, c) in charges.iter().enumerate() {
        let slot = Slot::for_key(redis_key(&c.key));
        match slots.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(i),
            None => slots.push((slot, vec![i])),
        }
    }
    slots
}

/// The key the readiness probe writes (as `portcullis:q:{readyz}`, under
/// the quota keys' prefix, so that an ACL that lets the quota keys be
/// written lets it be too). No counter key has this form: theirs hold a
/// `|`.
pub const READINESS_KEY: &str = "readyz";

pub(crate) fn redis_key(key: &str) -> String {
    format!("{KEY_PREFIX}{{{key}}}")
}

pub(crate) fn error(e: redis::RedisError) -> StoreError {
    let gone = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
    StoreError {
        store: "redis",
        message: e.to_string(),
        gone,
    }
}

pub(crate) fn unreachable(store: &'static str, e: crate::shared_redis::Unreachable) -> StoreError {
    StoreError {
        store,
        message: e.to_string(),
        gone: true,
    }
}

#[tonic::async_trait]
impl QuotaStore for RedisStore {
    async fn charge(&self, charges: &[Charge]) -> Result<Charged, StoreError> {
        if self.redis.is_cluster() {
            self.charge_cluster(charges).await
        } else {
            self.batched(None, charges.to_vec()).await
        }
    }

    async fn refund(&self, charges: &[Charge], states: &[LimitState]) -> Result<(), StoreError> {
        let connection = self
            .redis
            .connection()
            .await
            .map_err(|e| unreachable("redis", e))?;
        let states: Vec<Option<LimitState>> = states.iter().copied().map(Some).collect();
        match connection {
            Connection::Single(mut con) => {
                let all: Vec<usize> = (0..charges.len()).collect();
                self.refund_keys(&mut con, charges, &states, &all).await
            }
            Connection::Cluster(mut con) => {
                for (_, members) in by_slot(charges) {
                    self.refund_keys(&mut con, charges, &states, &members)
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// A single primary's charges go in its next batch, answered on the
    /// batch worker's task. A Cluster's keys may span slots, charged one
    /// after the other with refunds: that takes a task of its own.
    fn submits(&self, _charges: &[Charge]) -> bool {
        !self.redis.is_cluster()
    }

    fn submit(&self, charges: Vec<Charge>, then: Completion) {
        self.enqueue(
            None,
            Job {
                charges,
                reply: Reply::Then(then),
            },
        );
    }

    fn remote(&self) -> bool {
        true
    }

    /// One shard per Cluster slot (an id derived from the slot); one for a
    /// single primary.
    fn shard(&self, key: &str) -> u64 {
        shard_id(
            self.redis
                .is_cluster()
                .then(|| Slot::for_key(redis_key(key))),
        )
    }

    /// Measured per target by its batch worker: from the script calls it
    /// sent and the replies it had.
    fn silent_for(&self, shard: u64) -> Duration {
        let silence = self
            .silences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
            .cloned();
        silence.map_or(Duration::ZERO, |s| {
            Duration::from_micros(s.silent_us(self.batches.now_us()))
        })
    }

    /// A write, not a `PING`: a Redis at `maxmemory` with `noeviction`, a
    /// demoted primary (`READONLY`) or a user whose ACL refuses the quota
    /// keys answers `PING` while refusing every charge. The probe sets
    /// [`READINESS_KEY`] (its own slot in a Cluster: one primary is
    /// probed) for ten seconds.
    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self
            .redis
            .connection()
            .await
            .map_err(|e| unreachable(self.name(), e))?;
        if let Err(e) = redis::cmd("SET")
            .arg(redis_key(READINESS_KEY))
            .arg(1)
            .arg("PX")
            .arg(10_000)
            .query_async::<()>(&mut connection)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cluster_slot_has_a_shard_of_its_own() {
        use std::hash::BuildHasher;
        let ids: std::collections::HashSet<u64> = (0..16384)
            .map(|n| SLOT_IDS.hash_one(Slot::new(n).expect("a slot number")))
            .collect();
        assert_eq!(ids.len(), 16384);
    }
}
