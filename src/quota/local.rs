//! The in-process quota store: GCRA state (or envoyproxy/ratelimit's fixed
//! window counts) in a sharded map, with bounded memory. Atomic across keys
//! by locking every shard a request touches, in shard order (so two
//! requests can never deadlock).
//!
//! Memory: a key costs one 128-bit hash, one TAT (or window end) and one
//! count. A state whose TAT (or window) has passed is a full bucket, the same as no state, so it is dropped whenever
//! a shard reaches its share of `max_keys`; if a shard is still full of live
//! keys, the key closest to full is dropped (forgiving at most the little
//! quota it still had used) and counted.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use super::gcra::{assess, Assessment};
use super::{Charge, Charged, LimitState, QuotaStore, StoreError};
use crate::time::Clock;

const SHARDS: usize = 64;

/// Charges one request usually makes; more spill to the heap.
const INLINE: usize = 4;

/// A shard's map: keys are already 128-bit keyed hashes of the counter
/// key (SipHash-1-3-128 under a random key, see [`KeyHasher`]), so the
/// map uses their bits as they are instead of hashing them again.
type Shard = HashMap<u128, Cell, BuildHasherDefault<PreHashed>>;

/// The `Hasher` of [`Shard`]: folds a key that is itself a keyed hash.
#[derive(Debug, Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys reach this hasher; kept total for any input.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = (n as u64) ^ ((n >> 64) as u64);
    }
}

/// Counter keys to 128-bit keyed hashes, the keys of [`Shard`]s: SipHash-1-3
/// with 128-bit output (`siphasher`'s `SipHasher13::finish128`), a keyed
/// pseudo-random function, under a key drawn at start. Two counter keys
/// share a counter only on a collision of 128 bits that no client can aim
/// at without the key. (It was two 64-bit `RandomState` hashes: the same
/// strength, twice the work.)
#[derive(Debug)]
struct KeyHasher(siphasher::sip128::SipHasher13);

impl KeyHasher {
    /// A hasher under a fresh random key, derived from two of the
    /// standard library's randomly seeded `RandomState`s.
    fn random() -> KeyHasher {
        use std::collections::hash_map::RandomState;
        let (k0, k1) = (
            RandomState::new().hash_one(0u8),
            RandomState::new().hash_one(1u8),
        );
        KeyHasher(siphasher::sip128::SipHasher13::new_with_keys(k0, k1))
    }

    fn hash(&self, value: impl std::hash::Hash) -> u128 {
        use siphasher::sip128::Hasher128 as _;
        let mut h = self.0;
        value.hash(&mut h);
        h.finish128().as_u128()
    }
}

/// In-process GCRA counters.
#[derive(Debug)]
pub struct LocalStore {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: KeyHasher,
    clock: Arc<dyn Clock>,
    evicted_live: AtomicU64,
}

impl LocalStore {
    /// A store holding at most about `max_keys` keys.
    pub fn new(max_keys: usize, clock: Arc<dyn Clock>) -> LocalStore {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: (max_keys / SHARDS).max(1),
            hasher: KeyHasher::random(),
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
        self.hasher.hash(key)
    }

    fn hash_window(&self, key: &str, start: u64) -> u128 {
        self.hasher.hash((key, start))
    }

    /// Moves a GCRA key by `delta` units at once: a negative delta gives
    /// back (the state never goes below a full bucket), a positive one
    /// charges work already done, past the burst if need be. Settles a
    /// token reservation (`reserve.rs`).
    pub fn adjust(&self, key: &str, emission_us: u64, delta: i64) {
        if delta == 0 {
            return;
        }
        let now = self.clock.now_us();
        let hash = self.hash(key);
        let mut shard = self.shards[(hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let tat = shard
            .get(&hash)
            .map(|c| c.until)
            .filter(|t| *t > now)
            .unwrap_or(0);
        let moved = delta.unsigned_abs().saturating_mul(emission_us);
        let new_tat = if delta < 0 {
            tat.saturating_sub(moved)
        } else {
            tat.max(now).saturating_add(moved)
        };
        if new_tat <= now {
            shard.remove(&hash);
        } else {
            shard.insert(
                hash,
                Cell {
                    until: new_tat,
                    count: 0,
                },
            );
        }
    }

    /// The synchronous check-and-charge.
    pub fn charge_now(&self, charges: &[Charge]) -> Result<Charged, StoreError> {
        let now = self.clock.now_us();
        // A fixed window's counter is its own key: the window's start is
        // part of the hash, so a new window starts from zero.
        let hashes: SmallVec<[u128; INLINE]> = charges
            .iter()
            .map(|c| match c.window {
                None => self.hash(&c.key),
                Some(w) => self.hash_window(&c.key, w.start(now)),
            })
            .collect();
        let mut shard_ids: SmallVec<[usize; INLINE]> =
            hashes.iter().map(|h| (*h as usize) % SHARDS).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        // A poisoned shard still holds valid integers: keep using it.
        let mut guards: SmallVec<[(usize, std::sync::MutexGuard<'_, Shard>); INLINE]> = shard_ids
            .iter()
            .map(|&i| (i, self.shards[i].lock().unwrap_or_else(|p| p.into_inner())))
            .collect();
        let shard_of = |h: u128| {
            let i = (h as usize) % SHARDS;
            guards.iter().position(|(id, _)| *id == i).expect("locked")
        };
        let positions: SmallVec<[usize; INLINE]> = hashes.iter().map(|h| shard_of(*h)).collect();

        // Charges on the same key within one request see each other.
        // Per key: the cell to write, and whether it is written whatever
        // the verdict (fixed windows, post-hoc charges). A request has a
        // handful of charges: a linear search beats a map.
        let mut pending: SmallVec<[Pending; INLINE]> = SmallVec::new();
        let mut assessments: SmallVec<[Assessment; INLINE]> = SmallVec::new();
        for ((charge, hash), pos) in charges.iter().zip(&hashes).zip(&positions) {
            let earlier = pending.iter().position(|p| p.hash == *hash);
            let stored = earlier
                .map(|i| pending[i].cell)
                .or_else(|| guards[*pos].1.get(hash).copied())
                .filter(|c| c.until > now)
                .unwrap_or_default();
            let earlier_always = earlier.is_some_and(|i| pending[i].always);
            let mut write = |cell: Cell, always: bool| match earlier {
                Some(i) => {
                    pending[i].cell = cell;
                    pending[i].always = always;
                }
                None => pending.push(Pending {
                    hash: *hash,
                    position: *pos,
                    cell,
                    always,
                }),
            };
            let a = match charge.window {
                Some(w) => {
                    let end = w.start(now) + w.window_us;
                    let count = stored.count + charge.cost;
                    let over = count > w.limit;
                    if charge.cost > 0 {
                        write(Cell { until: end, count }, true);
                    }
                    Assessment {
                        over,
                        new_tat: end,
                        remaining: w.limit.saturating_sub(count),
                        reset_us: end - now,
                        retry_us: if over { end - now } else { 0 },
                    }
                }
                None => {
                    let a = assess(stored.until, now, charge.rate, charge.cost);
                    if charge.cost > 0 && (!a.over || charge.post_hoc) {
                        let tat = if a.over {
                            // Work already done is recorded past the burst.
                            stored.until.max(now) + charge.cost * charge.rate.emission_us
                        } else {
                            a.new_tat
                        };
                        let always = charge.post_hoc || earlier_always;
                        write(
                            Cell {
                                until: tat,
                                count: 0,
                            },
                            always,
                        );
                    }
                    a
                }
            };
            assessments.push(a);
        }
        let allowed = super::passes(charges.iter().zip(assessments.iter().map(|a| a.over)));
        for p in &pending {
            if !allowed && !p.always {
                continue;
            }
            let shard = &mut guards[p.position].1;
            if !shard.contains_key(&p.hash) && shard.len() >= self.per_shard {
                shard.retain(|_, c| c.until > now);
                if shard.len() >= self.per_shard {
                    // Drop the eighth closest to full at once, so a shard
                    // full of live keys is not rescanned on every insert.
                    let mut untils: Vec<u64> = shard.values().map(|c| c.until).collect();
                    let nth = untils.len() / 8;
                    let (_, threshold, _) = untils.select_nth_unstable(nth);
                    let threshold = *threshold;
                    let before = shard.len();
                    shard.retain(|_, c| c.until > threshold);
                    self.evicted_live
                        .fetch_add((before - shard.len()) as u64, Ordering::Relaxed);
                }
            }
            shard.insert(p.hash, p.cell);
        }
        let states = charges
            .iter()
            .zip(&assessments)
            .map(|(c, a)| {
                // Nothing was charged when the request was refused: report
                // the state as it stays.
                let kept = allowed || a.over || c.cost == 0 || c.always_recorded();
                let (remaining, reset_us) = if kept {
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

/// A cell one request will write: its key's hash, the index of its
/// shard's guard, the cell, and whether it is written whatever the verdict.
#[derive(Debug, Clone, Copy)]
struct Pending {
    hash: u128,
    position: usize,
    cell: Cell,
    always: bool,
}

/// One key's state: for GCRA `until` is the theoretical arrival time (the
/// bucket is full again then); for a fixed window `until` is the window's
/// end and `count` its hits. Past `until` a cell is the same as none.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    until: u64,
    count: u64,
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
        Charge::gcra(key, Rate::new(requests, 60_000_000, requests), cost)
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
    fn more_charges_than_fit_inline_count_each_key_once_per_charge() {
        let clock = ManualClock::at(1_000_000_000);
        let store = LocalStore::new(1000, clock);
        // Nine charges over five keys: every third charge repeats a key.
        let charges: Vec<Charge> = (0..9)
            .map(|i| charge(&format!("d|k={}", i % 5), 10, 1))
            .collect();
        assert!(charges.len() > INLINE);
        let r = store.charge_now(&charges).unwrap();
        assert!(r.allowed);
        let remaining: Vec<u64> = r.states.iter().map(|s| s.remaining).collect();
        assert_eq!(remaining, [9, 9, 9, 9, 9, 8, 8, 8, 8]);
        let again = store.charge_now(&charges[..1]).unwrap();
        assert_eq!(again.states[0].remaining, 7);
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
