//! Counting failed authentication attempts: per source address and per
//! presented identity, in a sliding-start window. A source past the
//! threshold is blocked for a cool-down (429 + Retry-After). An identity
//! past the threshold is reported, not blocked: anyone can present a
//! victim's name, and blocking it would hand attackers a lockout.
//!
//! The store is a trait because a second implementation is due: Redis,
//! so that replicas share blocks. Time is passed in (`now`), so the rules
//! are tested without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::FailureConfig;

/// What a failure is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FailureKey {
    /// The client's address.
    Source(IpAddr),
    /// The identity the credential claimed (unverified), e.g. an API key id.
    Identity(String),
}

/// Where failures are counted.
pub trait FailureStore: Send + Sync + std::fmt::Debug {
    /// If `key` is blocked at `now`, how long until it is not.
    fn blocked_for(&self, key: &FailureKey, now: Instant) -> Option<Duration>;
    /// Counts one failure for `key`; returns true when this failure crossed
    /// the threshold (the key is blocked from now, if blocking applies).
    fn record_failure(&self, key: &FailureKey, now: Instant, block: bool) -> bool;
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

impl FailureStore for InProcessFailures {
    fn blocked_for(&self, key: &FailureKey, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let until = entries.get(key)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    fn record_failure(&self, key: &FailureKey, now: Instant, block: bool) -> bool {
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
        if e.count == self.threshold {
            if block {
                e.blocked_until = Some(now + self.cool_down);
            }
            return true;
        }
        false
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
        })
    }

    fn ip(n: u8) -> FailureKey {
        FailureKey::Source(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn source_is_blocked_after_threshold_and_unblocked_after_cool_down() {
        let s = store();
        let t0 = Instant::now();
        assert!(!s.record_failure(&ip(1), t0, true));
        assert!(!s.record_failure(&ip(1), t0 + Duration::from_secs(1), true));
        assert_eq!(s.blocked_for(&ip(1), t0), None);
        assert!(s.record_failure(&ip(1), t0 + Duration::from_secs(2), true));
        assert_eq!(
            s.blocked_for(&ip(1), t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            s.blocked_for(&ip(1), t0 + Duration::from_secs(101)),
            Some(Duration::from_secs(201))
        );
        assert_eq!(s.blocked_for(&ip(2), t0), None, "other sources unaffected");
        assert_eq!(s.blocked_for(&ip(1), t0 + Duration::from_secs(302)), None);
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_block() {
        let s = store();
        let t0 = Instant::now();
        for i in 0..10 {
            s.record_failure(&ip(1), t0 + Duration::from_secs(31 * i), true);
        }
        assert_eq!(s.blocked_for(&ip(1), t0 + Duration::from_secs(310)), None);
    }

    #[test]
    fn identities_are_reported_but_not_blocked() {
        let s = store();
        let t0 = Instant::now();
        let id = FailureKey::Identity("apikey:0123456789ab".into());
        let crossed: Vec<bool> = (0..3).map(|_| s.record_failure(&id, t0, false)).collect();
        assert_eq!(crossed, [false, false, true]);
        assert_eq!(s.blocked_for(&id, t0), None);
    }

    #[test]
    fn tracking_is_bounded() {
        let s = store();
        let t0 = Instant::now();
        for n in 0..50 {
            s.record_failure(&ip(n), t0, true);
        }
        assert!(s.entries.lock().unwrap().len() <= 4);
        // Once the window has passed, room is made again.
        s.record_failure(&ip(99), t0 + Duration::from_secs(61), true);
        assert!(s.entries.lock().unwrap().contains_key(&ip(99)));
    }
}
