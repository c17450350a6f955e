//! Counting failed authentication attempts: per source address and per
//! presented identity, in a sliding-start window. A source past the
//! threshold is blocked for a cool-down (429 + Retry-After). An identity
//! past the threshold is reported, not blocked: anyone can present a
//! victim's name, and blocking it would hand attackers a lockout.
//!
//! The store is a trait with two implementations: in process (here) and
//! Redis (`failures_redis.rs`), so that replicas share counts and blocks.
//! Time is passed in (`now`), so the in-process rules are tested without
//! sleeping; the Redis store keeps time on the Redis server instead.
//!
//! A source that fails again after its block ended, still inside the same
//! window, is blocked again at once: the count is past the threshold.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::authn::config::FailureConfig;

/// What a failure is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FailureKey {
    /// The client's address.
    Source(IpAddr),
    /// The identity the credential claimed (unverified), e.g. an API key id.
    Identity(String),
}

/// Where failures are counted. Neither operation fails: a store that
/// cannot reach its backend answers in its documented degraded mode.
#[tonic::async_trait]
pub trait FailureStore: Send + Sync + std::fmt::Debug {
    /// If `key` is blocked at `now`, how long until it is not.
    async fn blocked_for(&self, key: &FailureKey, now: Instant) -> Option<Duration>;
    /// Counts one failure for `key`; returns true when this failure reached
    /// the threshold (reported once per window). With `block`, a key at or
    /// past the threshold is blocked for the cool-down from now.
    async fn record_failure(&self, key: &FailureKey, now: Instant, block: bool) -> bool;
    /// The store's name for logs (`local`, `redis`).
    fn name(&self) -> &'static str;
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

/// Counts in this process (the default; no dependencies).
#[derive(Debug)]
pub struct InProcessFailures {
    threshold: u32,
    window: Duration,
    cool_down: Duration,
    max_tracked: usize,
    /// A std mutex: held for a map update, never across an await.
    entries: Mutex<HashMap<FailureKey, Entry>>,
}

impl InProcessFailures {
    /// A store with the configured threshold, window and cool-down.
    pub fn new(config: &FailureConfig) -> Self {
        InProcessFailures {
            threshold: config.threshold,
            window: Duration::from_secs(config.window_seconds),
            cool_down: Duration::from_secs(config.block_seconds),
            max_tracked: config.max_tracked,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self, e: &Entry, now: Instant) -> bool {
        e.blocked_until.is_some_and(|u| u > now)
            || now.saturating_duration_since(e.window_start) < self.window
    }
}

impl InProcessFailures {
    /// [`FailureStore::blocked_for`], without the async wrapper.
    pub fn blocked_for_now(&self, key: &FailureKey, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let until = entries.get(key)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// [`FailureStore::record_failure`], without the async wrapper.
    pub fn record_failure_now(&self, key: &FailureKey, now: Instant, block: bool) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.max_tracked && !entries.contains_key(key) {
            // Bounded memory: forget what no longer matters; if a flood of
            // distinct keys still fills the map, stop tracking new ones
            // rather than grow without bound.
            entries.retain(|_, e| self.live(e, now));
            if entries.len() >= self.max_tracked {
                return false;
            }
        }
        let e = entries.entry(key.clone()).or_insert(Entry {
            window_start: now,
            count: 0,
            blocked_until: None,
        });
        if now.saturating_duration_since(e.window_start) >= self.window {
            e.window_start = now;
            e.count = 0;
        }
        e.count = e.count.saturating_add(1);
        if block && e.count >= self.threshold {
            e.blocked_until = Some(now + self.cool_down);
        }
        e.count == self.threshold
    }
}

#[tonic::async_trait]
impl FailureStore for InProcessFailures {
    async fn blocked_for(&self, key: &FailureKey, now: Instant) -> Option<Duration> {
        self.blocked_for_now(key, now)
    }

    async fn record_failure(&self, key: &FailureKey, now: Instant, block: bool) -> bool {
        self.record_failure_now(key, now, block)
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> InProcessFailures {
        InProcessFailures::new(&FailureConfig {
            enabled: true,
            threshold: 3,
            window_seconds: 60,
            block_seconds: 300,
            max_tracked: 4,
            ..FailureConfig::default()
        })
    }

    fn ip(n: u8) -> FailureKey {
        FailureKey::Source(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn source_is_blocked_after_threshold_and_unblocked_after_cool_down() {
        let s = store();
        let t0 = Instant::now();
        assert!(!s.record_failure_now(&ip(1), t0, true));
        assert!(!s.record_failure_now(&ip(1), t0 + Duration::from_secs(1), true));
        assert_eq!(s.blocked_for_now(&ip(1), t0), None);
        assert!(s.record_failure_now(&ip(1), t0 + Duration::from_secs(2), true));
        assert_eq!(
            s.blocked_for_now(&ip(1), t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            s.blocked_for_now(&ip(1), t0 + Duration::from_secs(101)),
            Some(Duration::from_secs(201))
        );
        assert_eq!(
            s.blocked_for_now(&ip(2), t0),
            None,
            "other sources unaffected"
        );
        assert_eq!(
            s.blocked_for_now(&ip(1), t0 + Duration::from_secs(302)),
            None
        );
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_block() {
        let s = store();
        let t0 = Instant::now();
        for i in 0..10 {
            s.record_failure_now(&ip(1), t0 + Duration::from_secs(31 * i), true);
        }
        assert_eq!(
            s.blocked_for_now(&ip(1), t0 + Duration::from_secs(310)),
            None
        );
    }

    #[test]
    fn failing_again_after_the_block_inside_the_window_blocks_again() {
        let s = InProcessFailures::new(&FailureConfig {
            window_seconds: 600,
            block_seconds: 10,
            ..FailureConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..20 {
            s.record_failure_now(&ip(1), t0, true);
        }
        assert!(s.blocked_for_now(&ip(1), t0).is_some());
        let later = t0 + Duration::from_secs(11);
        assert_eq!(s.blocked_for_now(&ip(1), later), None);
        // Reported once per window, but blocked again at the next failure.
        assert!(!s.record_failure_now(&ip(1), later, true));
        assert_eq!(
            s.blocked_for_now(&ip(1), later),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn identities_are_reported_but_not_blocked() {
        let s = store();
        let t0 = Instant::now();
        let id = FailureKey::Identity("apikey:0123456789ab".into());
        let crossed: Vec<bool> = (0..3)
            .map(|_| s.record_failure_now(&id, t0, false))
            .collect();
        assert_eq!(crossed, [false, false, true]);
        assert_eq!(s.blocked_for_now(&id, t0), None);
    }

    #[test]
    fn tracking_is_bounded() {
        let s = store();
        let t0 = Instant::now();
        for n in 0..50 {
            s.record_failure_now(&ip(n), t0, true);
        }
        assert!(s.entries.lock().unwrap().len() <= 4);
        // Once the window has passed, room is made again.
        s.record_failure_now(&ip(99), t0 + Duration::from_secs(61), true);
        assert!(s.entries.lock().unwrap().contains_key(&ip(99)));
    }
}
