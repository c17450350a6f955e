//! The in-process quota store: GCRA state in a sharded map, with bounded
//! memory. Atomic across keys by locking every shard a request touches, in
//! shard order (so two requests can never deadlock).
//!
//! Memory: a key costs one 128-bit hash and one TAT. A state whose TAT has
//! passed is a full bucket, the same as no state, so it is dropped whenever
//! a shard reaches its share of `max_keys`; if a shard is still full of live
//! keys, the key closest to full is dropped (forgiving at most the little
//! quota it still had used) and counted.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::gcra::assess;
use super::{Charge, Charged, LimitState, QuotaStore, StoreError};
use crate::time::Clock;

const SHARDS: usize = 64;

/// In-process GCRA counters.
#[derive(Debug)]
pub struct LocalStore {
    shards: Vec<Mutex<HashMap<u128, u64>>>,
    per_shard: usize,
    hashers: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
    clock: Arc<dyn Clock>,
    evicted_live: AtomicU64,
}

impl LocalStore {
    /// A store holding at most about `max_keys` keys.
    pub fn new(max_keys: usize, clock: Arc<dyn Clock>) -> LocalStore {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (max_keys / SHARDS).max(1),
            hashers: Default::default(),
            clock,
            evicted_live: AtomicU64::new(0),
        }
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live keys dropped because memory was full.
    pub fn evicted_live(&self) -> u64 {
        self.evicted_live.load(Ordering::Relaxed)
    }

    fn hash(&self, key: &str) -> u128 {
        let a = self.hashers.0.hash_one(key) as u128;
        let b = self.hashers.1.hash_one(key) as u128;
        (a << 64) | b
    }

    /// The synchronous check-and-charge.
    pub fn charge_now(&self, charges: &[Charge]) -> Result<Charged, StoreError> {
        let hashes: Vec<u128> = charges.iter().map(|c| self.hash(&c.key)).collect();
        let mut shard_ids: Vec<usize> = hashes.iter().map(|h| (*h as usize) % SHARDS).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        // A poisoned shard still holds valid integers: keep using it.
        let mut guards: Vec<(usize, std::sync::MutexGuard<'_, HashMap<u128, u64>>)> = shard_ids
            .iter()
            .map(|&i| (i, self.shards[i].lock().unwrap_or_else(|p| p.into_inner())))
            .collect();
        let now = self.clock.now_us();
        let shard_of = |h: u128| {
            let i = (h as usize) % SHARDS;
            let pos = guards.iter().position(|(id, _)| *id == i).expect("locked");
            pos
        };
        let positions: Vec<usize> = hashes.iter().map(|h| shard_of(*h)).collect();

        // Charges on the same key within one request see each other.
        let mut pending: HashMap<u128, u64> = HashMap::new();
        let mut assessments = Vec::with_capacity(charges.len());
        for ((charge, hash), pos) in charges.iter().zip(&hashes).zip(&positions) {
            let tat = pending
                .get(hash)
                .copied()
                .or_else(|| guards[*pos].1.get(hash).copied())
                .unwrap_or(0);
            let a = assess(tat, now, charge.rate, charge.cost);
            if !a.over && charge.cost > 0 {
                pending.insert(*hash, a.new_tat);
            }
            assessments.push(a);
        }
        let allowed = charges
            .iter()
            .zip(&assessments)
            .all(|(c, a)| c.shadow || !a.over);
        if allowed {
            for (hash, tat) in &pending {
                let pos = positions[hashes.iter().position(|h| h == hash).expect("hashed")];
                let shard = &mut guards[pos].1;
                if !shard.contains_key(hash) && shard.len() >= self.per_shard {
                    shard.retain(|_, t| *t > now);
                    if shard.len() >= self.per_shard {
                        // Drop the eighth closest to full at once, so a shard
                        // full of live keys is not rescanned on every insert.
                        let mut tats: Vec<u64> = shard.values().copied().collect();
                        let nth = tats.len() / 8;
                        let (_, threshold, _) = tats.select_nth_unstable(nth);
                        let threshold = *threshold;
                        let before = shard.len();
                        shard.retain(|_, t| *t > threshold);
                        self.evicted_live
                            .fetch_add((before - shard.len()) as u64, Ordering::Relaxed);
                    }
                }
                shard.insert(*hash, *tat);
            }
        }
        let states = charges
            .iter()
            .zip(&assessments)
            .map(|(c, a)| {
                // Nothing was charged when the request was refused: report
                // the state as it stays.
                let (remaining, reset_us) = if allowed || a.over || c.cost == 0 {
                    (a.remaining, a.reset_us)
                } else {
                    let before = assess(a.new_tat - c.cost * c.rate.emission_us, now, c.rate, 0);
                    (before.remaining, before.reset_us)
                };
                LimitState {
                    over: a.over,
                    remaining,
                    reset_us,
                    retry_us: a.retry_us,
                }
            })
            .collect();
        Ok(Charged { allowed, states })
    }
}

#[tonic::async_trait]
impl QuotaStore for LocalStore {
    async fn charge(&self, charges: &[Charge]) -> Result<Charged, StoreError> {
        self.charge_now(charges)
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::gcra::Rate;
    use crate::time::ManualClock;

    fn charge(key: &str, requests: u64, cost: u64) -> Charge {
        Charge {
            key: key.into(),
            rate: Rate::new(requests, 60_000_000, requests),
            cost,
            shadow: false,
        }
    }

    #[test]
    fn a_million_distinct_keys_stay_within_the_bound() {
        let clock = ManualClock::at(1_000_000_000);
        let store = LocalStore::new(64 * 1024, clock.clone());
        for i in 0..1_000_000u32 {
            let c = charge(&format!("d|user={i}"), 10, 1);
            assert!(store.charge_now(&[c]).unwrap().allowed);
            if i % 100_000 == 0 {
                clock.advance(std::time::Duration::from_secs(61));
            }
        }
        assert!(store.len() <= 64 * 1024, "{}", store.len());
    }

    #[test]
    fn expired_keys_are_dropped_before_live_ones() {
        let clock = ManualClock::at(1_000_000_000);
        let store = LocalStore::new(SHARDS, clock.clone());
        let first = charge("d|user=a", 2, 2);
        assert!(
            store
                .charge_now(std::slice::from_ref(&first))
                .unwrap()
                .allowed
        );
        clock.advance(std::time::Duration::from_secs(61));
        for i in 0..10 * SHARDS {
            store
                .charge_now(&[charge(&format!("d|user={i}"), 10, 1)])
                .unwrap();
        }
        assert!(store.len() <= SHARDS);
    }

    #[test]
    fn a_refused_request_reports_state_as_it_stays() {
        let clock = ManualClock::at(1_000_000_000);
        let store = LocalStore::new(1000, clock);
        let a = charge("d|user=a", 10, 3);
        let b = charge("d|org=o", 2, 3);
        let r = store.charge_now(&[a.clone(), b]).unwrap();
        assert!(!r.allowed);
        assert_eq!(r.states[0].remaining, 10);
        assert!(!r.states[0].over);
        assert!(r.states[1].over);
        let r = store.charge_now(&[a]).unwrap();
        assert_eq!(r.states[0].remaining, 7);
    }
}
