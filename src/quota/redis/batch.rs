//! Batching for the Redis quota store: the quota script (which judges a
//! batch of requests one after the other, atomically) and the queue per
//! target that coalesces concurrent requests into one script call.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use tokio::sync::{mpsc, oneshot};

use super::{error, redis_key, unreachable};
use crate::quota::breaker::Silence;
use crate::quota::{Charge, Charged, Completion, LimitState, StoreError};
use crate::shared_redis::SharedRedis;

/// The GCRA of `gcra::assess` over all keys of one request, all or
/// nothing; or, per key, envoyproxy/ratelimit's fixed window (every hit
/// counted). One call carries a batch of requests, judged one after the
/// other (each sees what the ones before it charged), at one Redis time.
///
/// ARGV[1]: the number of requests R; ARGV[2..R+1]: each request's number
/// of keys; then, per key of each request in order, 4 values: a, b, cost,
/// flags. KEYS: every request's keys, in order. Flags: 1 shadow, 2 quota
/// mode, 4 post-hoc, 8 fixed window. GCRA: a = emission_us, b =
/// tolerance_us. Fixed window: a = window_us, b = limit; the counter is
/// `KEYS[i]:<window start>` (same hash tag, same slot).
/// Returns, per request: allowed (0|1), then per key: over, remaining,
/// reset_us, retry_us. `allowed` follows `quota::passes`: every enforced
/// key fits, and some quota-mode key fits if there are any. Each key is
/// read (`GET`) at most once per call and written (`SET ... PX`) at most
/// once, at the end, with what the last request left in it: a burst on one
/// key costs a handful of commands per call, not two per request.
pub(super) const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local band = bit.band
-- Each key is read at most once per call and written at most once, at the
-- end: `val` holds its value as the requests so far left it, and
-- `expires` (microseconds, Redis time) marks the keys to write.
local val, expires = {}, {}
local function get(key)
  local v = val[key]
  if v == nil then
    v = tonumber(redis.call('GET', key) or '0')
    val[key] = v
  end
  return v
end
local all, nall = {}, 0
-- A batch's requests mostly carry the same few numbers (the same limit,
-- cost 1): each distinct argument is converted once per call.
local nums = {}
local function num(s)
  local v = nums[s]
  if v == nil then
    v = tonumber(s)
    nums[s] = v
  end
  return v
end
-- Scratch tables shared by the requests of the call, left empty (`news`,
-- `always`) or overwritten before being read (`tats`) by each.
local news, always, tats = {}, {}, {}
-- One request: keys KEYS[k0 + 1 .. k0 + n], values from ARGV[a0 + 1].
local function request(k0, a0, n)
  local first = nall + 1
  nall = nall + 1 + 4 * n
  all[first] = 0
  local enforced_ok, quotas, quota_ok = true, false, false
  for i = 1, n do
    local j = a0 + (i - 1) * 4
    local a, b = num(ARGV[j + 1]), num(ARGV[j + 2])
    local cost, flags = num(ARGV[j + 3]), num(ARGV[j + 4])
    local key = KEYS[k0 + i]
    local over, remaining, reset, retry
    if band(flags, 8) ~= 0 then
      -- Every hit counts, whatever the verdict: written as it is counted.
      local start = now - now % a
      local wkey = key .. ':' .. string.format('%d', start)
      local count = get(wkey) + cost
      if cost > 0 then
        val[wkey] = count
        expires[wkey] = start + a
      end
      reset = start + a - now
      if count > b then
        over, remaining, retry = 1, 0, reset
      else
        over, remaining, retry = 0, b - count, 0
      end
    else
      local tat = news[key] or get(key)
      local base = math.max(tat, now)
      local new_tat = base + cost * a
      local ahead = new_tat - now
      local post_hoc = band(flags, 4) ~= 0
      if ahead > b then
        over = 1
        remaining = math.floor(math.max(b - (base - now), 0) / a)
        reset = base - now
        retry = ahead - b
        if post_hoc and cost > 0 then
          -- Work already done: recorded past the burst, whatever the verdict.
          news[key] = new_tat
          always[key] = true
        end
      else
        over = 0
        remaining = math.floor((b - ahead) / a)
        reset = ahead
        retry = 0
        if cost > 0 then
          news[key] = new_tat
          if post_hoc then
            always[key] = true
          end
        end
      end
      tats[i] = base
    end
    if band(flags, 1) == 0 then
      if band(flags, 2) ~= 0 then
        quotas = true
        if over == 0 then quota_ok = true end
      elseif over == 1 then
        enforced_ok = false
      end
    end
    local o = first + (i - 1) * 4
    all[o + 1], all[o + 2], all[o + 3], all[o + 4] = over, remaining, reset, retry
  end
  local allowed = enforced_ok and (quota_ok or not quotas)
  if allowed then all[first] = 1 end
  -- Emptied as it is read (assigning nil to an existing field while
  -- traversing is allowed), for the next request.
  for key, new_tat in pairs(news) do
    if allowed or always[key] then
      val[key] = new_tat
      expires[key] = new_tat
    end
    news[key] = nil
    always[key] = nil
  end
  if not allowed then
    -- Nothing else was charged: report each state as it stays.
    for i = 1, n do
      local j = a0 + (i - 1) * 4
      local flags = num(ARGV[j + 4])
      local cost = num(ARGV[j + 3])
      local o = first + (i - 1) * 4
      if all[o + 1] == 0 and band(flags, 12) == 0 and cost > 0 then
        local emission, tolerance = num(ARGV[j + 1]), num(ARGV[j + 2])
        all[o + 2] = math.floor((tolerance - (tats[i] - now)) / emission)
        all[o + 3] = tats[i] - now
      end
    end
  end
end
local r = tonumber(ARGV[1])
local k0, a0 = 0, 1 + r
for j = 1, r do
  local n = tonumber(ARGV[1 + j])
  request(k0, a0, n)
  k0 = k0 + n
  a0 = a0 + 4 * n
end
for key, at in pairs(expires) do
  local ttl = math.max(math.ceil((at - now) / 1000), 1)
  redis.call('SET', key, string.format('%d', val[key]), 'PX', ttl)
end
return all
"#;

/// Most keys one batched script call carries.
const MAX_BATCH_KEYS: usize = 1024;

/// One request's charges waiting for a batch, and where its answer goes.
pub(super) struct Job {
    pub(super) charges: Vec<Charge>,
    pub(super) reply: Reply,
}

/// Where a job's answer goes.
pub(super) enum Reply {
    /// To a caller awaiting it.
    Channel(oneshot::Sender<Result<Charged, StoreError>>),
    /// To a completion ([`crate::quota::QuotaStore::submit`]), called on
    /// the batch's task.
    Then(Completion),
}

impl Job {
    pub(super) fn answer(self, answer: Result<Charged, StoreError>) {
        match self.reply {
            // The caller may have gone: fine.
            Reply::Channel(tx) => {
                let _ = tx.send(answer);
            }
            Reply::Then(then) => then.complete(self.charges, answer),
        }
    }
}

/// What a batch needs to reach Redis.
#[derive(Clone)]
pub(super) struct Batches {
    pub(super) redis: Arc<SharedRedis>,
    pub(super) script: redis::Script,
    /// The silences' clock.
    pub(super) epoch: Epoch,
    /// On a Cluster: how long a script call goes without a reply to any
    /// call of its slot before its slot's primary is sent a liveness
    /// `ROLE` on the witness connection ([`Witness`]); a quarter of the
    /// stall threshold (`quotas.stall_ms`), so that a live primary's
    /// answer comes before the threshold.
    pub(super) witness_every: Duration,
    /// On a Cluster: how long after its first answer as a replica a
    /// slot's witness target still counts as alive ([`ReplicaGrace`]).
    pub(super) replica_grace: Duration,
}

/// The origin of the silences' clock (Tokio's, so that tests with a
/// paused clock see it too).
#[derive(Debug, Clone, Copy)]
pub(super) struct Epoch(pub(super) tokio::time::Instant);

impl Epoch {
    /// Microseconds since the origin.
    pub(super) fn now_us(self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// Liveness checks of one Cluster slot's primary on the store's witness
/// connection (`SharedRedis::witness`): while a script call of the slot
/// has had no reply to any call of the slot for
/// [`Batches::witness_every`], one `ROLE` (never two at a time), whose
/// reply (see [`Sign`]) is noted in the slot's silence
/// ([`Silence::alive`]). `ROLE`, not `PING`: a node that answers as a
/// replica says the witness's slot map is stale (the slot moved). Such an
/// answer counts as alive only for a short grace ([`ReplicaGrace`]), while
/// a new witness connection is made in the background
/// (`SharedRedis::renew_witness`) and put in place of the stale one, so
/// that after a failover the checks ask the new primary, not the old one,
/// and go on meanwhile. The cluster client stops every call, to
/// every primary, while it refreshes its slot map after a `MOVED` reply
/// (a failover: 4 to 12 ms measured on this project's 2-core machine, with
/// the stall threshold at 10 ms), and such a silence of the client alone
/// must not be judged the primary's stall: the breaker would open and the
/// burst be decided by the `local` mode (over-admission across replicas).
/// A primary that is paused or unreachable answers the `ROLE` no more
/// than the calls, so it is judged down as soon as before.
struct Witness {
    /// Routes to the slot's primary as the witness connection knows it.
    route: Route,
    /// A `ROLE` is under way.
    asking: Arc<AtomicBool>,
    /// Since when the target has answered as a replica.
    grace: Arc<ReplicaGrace>,
}

/// How many stall thresholds (`quotas.stall_ms`) a Cluster slot's
/// witness target that answers `ROLE` as a replica still counts as alive
/// ([`ReplicaGrace`]): 80 ms at the default 10 ms, against slot-map
/// refreshes of 4 to 34 ms measured after a failover on this project's
/// 2-core machine.
pub(crate) const REPLICA_GRACE_STALLS: u32 = 8;

/// How long a witness target that answers `ROLE` as a replica still
/// counts as a sign of the slot's life: from its first such answer since
/// it last answered as a primary, for `grace_us` (eight stall thresholds,
/// [`Batches::replica_grace`]). Within it the slot moved moments ago (a
/// failover: the cluster client is following the move) and the node is
/// the one that held it; after it, the witness's slot map should have
/// been made again, and a replica's answer says nothing of the slot's
/// primary (which could be paused).
#[derive(Debug)]
struct ReplicaGrace {
    /// The first replica answer's time plus one (µs on the silences'
    /// clock); 0: none since the last primary answer.
    since: AtomicU64,
    grace_us: u64,
}

impl ReplicaGrace {
    fn new(grace: Duration) -> Self {
        ReplicaGrace {
            since: AtomicU64::new(0),
            grace_us: grace.as_micros() as u64,
        }
    }

    /// Whether `sign`, read at `now_us`, shows the slot alive.
    fn alive(&self, sign: Sign, now_us: u64) -> bool {
        match sign {
            Sign::Primary => {
                self.since.store(0, Ordering::SeqCst);
                true
            }
            Sign::None => false,
            Sign::Replica => {
                let first = match self.since.compare_exchange(
                    0,
                    now_us + 1,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => now_us,
                    Err(since) => since - 1,
                };
                now_us.saturating_sub(first) < self.grace_us
            }
        }
    }
}

impl Witness {
    /// Awaits `call`, asking the primary whenever the slot's silence
    /// reaches `witness_every` meanwhile.
    async fn during<T>(
        &self,
        batches: &Batches,
        silence: &Arc<Silence>,
        call: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(call);
        loop {
            tokio::select! {
                biased;
                answer = &mut call => return answer,
                _ = tokio::time::sleep(batches.witness_every) => self.ask(batches, silence),
            }
        }
    }

    fn ask(&self, batches: &Batches, silence: &Arc<Silence>) {
        let every_us = batches.witness_every.as_micros() as u64;
        if silence.silent_us(batches.now_us()) < every_us {
            return;
        }
        let Some(mut con) = batches.redis.witness() else {
            return;
        };
        if self.asking.swap(true, Ordering::SeqCst) {
            return;
        }
        let (asking, grace, silence, epoch) = (
            Arc::clone(&self.asking),
            Arc::clone(&self.grace),
            Arc::clone(silence),
            batches.epoch,
        );
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(self.route));
        let redis = Arc::clone(&batches.redis);
        batches.redis.spawn(async move {
            let asked = tokio::time::Instant::now();
            let reply = con.route_command(redis::cmd("ROLE"), routing).await;
            let sign = sign_of_life(&reply);
            let now = epoch.now_us();
            let alive = grace.alive(sign, now);
            if alive {
                silence.alive(now);
            }
            if sign == Sign::Replica {
                // The witness's slot map is stale (the slot moved): a new
                // witness, made meanwhile, learns the slot's primary.
                redis.renew_witness();
            }
            tracing::debug!(
                target: "portcullis::quota",
                sign = ?sign,
                alive,
                after_us = asked.elapsed().as_micros() as u64,
                "liveness ROLE on the witness connection"
            );
            asking.store(false, Ordering::SeqCst);
        });
    }
}

/// What a `ROLE` reply on the witness connection says of the slot's
/// primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    /// The node answered as a primary (or with an error reply of its own:
    /// `LOADING`, `BUSY`): alive.
    Primary,
    /// The node answered as a replica: the slot moved (a failover under
    /// way or done) and the witness's slot map is stale. Alive once: the
    /// main connection is following the move; the witness is made again.
    Replica,
    /// No reply of the server's: a timeout, a lost connection.
    None,
}

/// Reads a `ROLE` reply: `["master", offset, replicas]` or `["slave",
/// host, port, state, offset]` (Redis `ROLE`).
fn sign_of_life(reply: &redis::RedisResult<redis::Value>) -> Sign {
    match reply {
        Ok(redis::Value::Array(parts)) => match parts.first() {
            Some(redis::Value::BulkString(role)) if role.as_slice() == b"slave" => Sign::Replica,
            _ => Sign::Primary,
        },
        Ok(_) => Sign::Primary,
        Err(e) => match e.kind() {
            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension => Sign::Primary,
            _ => Sign::None,
        },
    }
}

impl Batches {
    /// Microseconds on the clock of the targets' silences.
    pub(super) fn now_us(&self) -> u64 {
        self.epoch.now_us()
    }

    /// Coalesces the requests sent on the returned queue: one script call
    /// at a time per target; the requests that arrive while it is under
    /// way wait and go together in the next call, each call's send and
    /// reply noted in `silence`. Ends when the queue's senders are gone.
    ///
    /// One call at a time makes the batches as large as the load: the
    /// longer a call takes (a Redis across a network), the more requests
    /// the next one carries. With Redis on the server's core,
    /// ShouldRateLimit at concurrency 64 answered 36,058 and 35,935 req/s
    /// against 33,567 and 33,973 with two calls under way (about 16
    /// requests per call against 9.5; interleaved runs, 2026-12-05).
    ///
    /// `cluster_key`: on a Cluster, a key of the worker's slot, whose
    /// primary the worker's [`Witness`] asks.
    pub(super) fn start(
        &self,
        silence: Arc<Silence>,
        cluster_key: Option<&str>,
    ) -> mpsc::UnboundedSender<Job> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let batches = self.clone();
        let witness = cluster_key.map(|key| Witness {
            route: Route::with_key(key, SlotAddr::Master),
            asking: Arc::new(AtomicBool::new(false)),
            grace: Arc::new(ReplicaGrace::new(batches.replica_grace)),
        });
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // As the audit writer does: let the other tasks that are
                // ready run first (requests decided on this worker queue
                // their charges meanwhile, and the second pass takes the
                // ones whose frames the first pass read), so one call
                // takes them all. With Redis on the server's core at
                // concurrency 64: 13.4 requests per call and 0.47 of the
                // empty handler's ShouldRateLimit throughput without, 20
                // and 0.53 with one pass, 27.5 and 0.55 with two.
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                let mut keys = first.charges.len();
                let mut jobs = vec![first];
                while keys < MAX_BATCH_KEYS {
                    match rx.try_recv() {
                        Ok(job) => {
                            keys += job.charges.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                batches.send(jobs, &silence, witness.as_ref()).await;
            }
        });
        tx
    }

    /// One script call for `jobs`; each job gets its own answer.
    async fn send(&self, jobs: Vec<Job>, silence: &Arc<Silence>, witness: Option<&Witness>) {
        // Counted from before the connection is had: a Redis that accepts
        // connections but answers nothing (paused) is silent there too.
        silence.sent(self.now_us());
        let call = async {
            match self.redis.connection().await {
                Ok(mut con) => self.run(&mut con, &jobs).await,
                Err(e) => Err(unreachable("redis", e)),
            }
        };
        let answers = match witness {
            Some(w) => w.during(self, silence, call).await,
            None => call.await,
        };
        // Any reply of Redis's own (an answer, or an error it sent) says
        // it is alive; a lost connection does not.
        let replied = answers.as_ref().map_or_else(|e| !e.gone, |_| true);
        silence.ended(self.now_us(), replied);
        match answers {
            Ok(answers) => {
                for (job, answer) in jobs.into_iter().zip(answers) {
                    job.answer(Ok(answer));
                }
            }
            Err(e) => {
                for job in jobs {
                    job.answer(Err(e.clone()));
                }
            }
        }
    }

    async fn run<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        jobs: &[Job],
    ) -> Result<Vec<Charged>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(jobs.len());
        for job in jobs {
            invocation.arg(job.charges.len());
        }
        for c in jobs.iter().flat_map(|j| &j.charges) {
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
        let expected: usize = jobs.iter().map(|j| 1 + 4 * j.charges.len()).sum();
        if reply.len() != expected {
            return Err(StoreError {
                store: "redis",
                message: format!(
                    "the quota script answered {} values, not {expected}",
                    reply.len()
                ),
                gone: false,
            });
        }
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        let mut rest = &reply[..];
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            let (this, next) = rest.split_at(1 + 4 * job.charges.len());
            rest = next;
            let states = this[1..]
                .chunks(4)
                .map(|s| LimitState {
                    over: s[0] == 1,
                    remaining: u(s[1]),
                    reset_us: u(s[2]),
                    retry_us: u(s[3]),
                })
                .collect();
            answers.push(Charged {
                allowed: this[0] == 1,
                states,
            });
        }
        Ok(answers)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{sign_of_life, ReplicaGrace, Sign};

    fn bulk(s: &str) -> redis::Value {
        redis::Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_primary_or_an_error_the_server_sent_is_a_sign_of_life() {
        let primary = redis::Value::Array(vec![
            bulk("master"),
            redis::Value::Int(3129659),
            redis::Value::Array(vec![]),
        ]);
        assert_eq!(sign_of_life(&Ok(primary)), Sign::Primary);
        let loading = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
            "LOADING Redis is loading the dataset in memory",
        ));
        assert_eq!(sign_of_life(&Err(loading)), Sign::Primary);
    }

    #[test]
    fn a_replica_at_the_witness_target_means_the_slot_moved() {
        let replica = redis::Value::Array(vec![
            bulk("slave"),
            bulk("127.0.0.1"),
            redis::Value::Int(9753),
            bulk("connected"),
            redis::Value::Int(3167038),
        ]);
        assert_eq!(sign_of_life(&Ok(replica)), Sign::Replica);
    }

    #[test]
    fn a_lost_connection_or_a_timeout_is_no_sign_of_life() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            sign_of_life(&Err(redis::RedisError::from(reset))),
            Sign::None
        );
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(
            sign_of_life(&Err(redis::RedisError::from(timeout))),
            Sign::None
        );
        let none =
            redis::RedisError::from((redis::ErrorKind::ClusterConnectionNotFound, "no connection"));
        assert_eq!(sign_of_life(&Err(none)), Sign::None);
    }

    #[test]
    fn a_replica_answer_counts_as_alive_only_within_the_grace_from_the_first() {
        let grace = ReplicaGrace::new(Duration::from_millis(80));
        assert!(grace.alive(Sign::Replica, 1_000));
        assert!(grace.alive(Sign::Replica, 80_999));
        // Counted from the first replica answer, not the latest.
        assert!(!grace.alive(Sign::Replica, 81_000));
        assert!(!grace.alive(Sign::Replica, 500_000));
        assert!(!grace.alive(Sign::None, 500_001));
    }

    #[test]
    fn a_primary_answer_starts_the_replica_grace_again() {
        let grace = ReplicaGrace::new(Duration::from_millis(80));
        assert!(grace.alive(Sign::Replica, 0));
        assert!(!grace.alive(Sign::Replica, 100_000));
        assert!(grace.alive(Sign::Primary, 100_001));
        assert!(grace.alive(Sign::Replica, 200_000));
        assert!(grace.alive(Sign::Replica, 279_999));
        assert!(!grace.alive(Sign::Replica, 280_000));
    }
}
