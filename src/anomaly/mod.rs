//! Anomaly detection in process: per principal and per source address, an
//! EWMA baseline (mean and variance) of requests and denials per interval;
//! a count in the current interval beyond `surge_factor` times the mean, or
//! beyond `surge_deviations` standard deviations above it, is a surge. Too
//! many authentication or authorization failures within a window, from one
//! source or against one principal, are repeated failures. Each event raises
//! the subject's risk score (the Cedar `context.risk`) for a while and may
//! block it. Recording the events (metric, log, audit) is the caller's job.
//!
//! Cheap for the request path: one bounded-cache lookup and one per-subject
//! mutex per subject and request (never a global lock); all arithmetic is
//! O(1). Memory is bounded: at most `max_tracked` subjects of each kind
//! (`quick_cache`, which evicts the least recently useful first). A subject
//! unseen for `idle_seconds` whose risk and block have run out is
//! forgotten: it starts afresh when seen again, and [`Detector::settle`]
//! (which the server runs every [`Detector::sweep_period`]) removes it.
//! Time comes from a `Clock`, idle time included, so tests move it by hand.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::time::Clock;

mod config;
pub mod shared;
mod track;

pub use config::AnomalyConfig;
use track::{threshold, Track};

/// What an anomaly is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// Requests far above the subject's baseline.
    RateSurge,
    /// Denials far above the subject's baseline.
    DenySurge,
    /// Many authentication/authorization failures within the window.
    RepeatedFailures,
}

impl AnomalyKind {
    /// The stable code (metrics label, audit `reason`).
    pub fn code(self) -> &'static str {
        match self {
            AnomalyKind::RateSurge => "rate_surge",
            AnomalyKind::DenySurge => "deny_surge",
            AnomalyKind::RepeatedFailures => "repeated_failures",
        }
    }

    /// The risk score the event gives its subject (0-100).
    pub fn risk(self) -> u8 {
        match self {
            AnomalyKind::RateSurge => 50,
            AnomalyKind::DenySurge => 60,
            AnomalyKind::RepeatedFailures => 80,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Who an anomaly is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A Cedar principal, e.g. `User::"alice"`.
    Principal(String),
    /// A client address.
    Source(IpAddr),
}

impl Subject {
    /// `principal` or `source` (metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Principal(_) => "principal",
            Subject::Source(_) => "source",
        }
    }
}

/// One anomaly event.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyEvent {
    /// What happened.
    pub kind: AnomalyKind,
    /// About whom.
    pub subject: Subject,
    /// The count that crossed the threshold.
    pub observed: u64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// The baseline mean per interval (0 for repeated failures).
    pub baseline: f64,
    /// When set, the subject is blocked for this long.
    pub blocked_for: Option<Duration>,
    /// The subject's risk score from now on.
    pub risk: u8,
}

impl AnomalyEvent {
    /// A one-line description for logs and audit records.
    pub fn detail(&self, interval_seconds: u64, window_seconds: u64) -> String {
        let mut s = match self.kind {
            AnomalyKind::RateSurge => format!(
                "{} requests in one {interval_seconds}s interval; threshold {:.1}, baseline mean {:.1}",
                self.observed, self.threshold, self.baseline
            ),
            AnomalyKind::DenySurge => format!(
                "{} denials in one {interval_seconds}s interval; threshold {:.1}, baseline mean {:.1}",
                self.observed, self.threshold, self.baseline
            ),
            AnomalyKind::RepeatedFailures => format!(
                "{} failed attempts within {window_seconds}s (threshold {:.0})",
                self.observed, self.threshold
            ),
        };
        s.push_str(&format!("; risk {}", self.risk));
        if let Some(b) = self.blocked_for {
            s.push_str(&format!("; blocked for {}s", b.as_secs()));
        }
        s
    }
}

/// How a decided request counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Allowed.
    Allowed,
    /// Denied for a reason that is not a failed attempt (quota, no route...).
    Denied,
    /// Denied: credentials refused (counted per source).
    AuthnFailure,
    /// Denied: the policies forbid it (counted per principal and source).
    Forbidden,
}

/// What the detector says about a request before it is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Assessment {
    /// The highest risk score of its principal and source (0-100).
    pub risk: u8,
    /// When blocked: how long until it is not.
    pub blocked_for: Option<Duration>,
}

/// The detector: baselines of every tracked principal and source.
pub struct Detector {
    config: AnomalyConfig,
    clock: Arc<dyn Clock>,
    interval_us: u64,
    idle_us: u64,
    principals: quick_cache::sync::Cache<String, Arc<Mutex<Track>>>,
    sources: quick_cache::sync::Cache<IpAddr, Arc<Mutex<Track>>>,
    /// Subjects blocked and until when (µs), for the gauge: touched only
    /// when a block is imposed and at scrape time, never per request.
    blocks: Mutex<std::collections::HashMap<String, u64>>,
    /// Blocks shared with the other replicas through Redis, if any.
    shared: Option<Arc<shared::SharedBlocks>>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("config", &self.config)
            .field("principals", &self.principals.len())
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// A detector with `config`, reading time from `clock`.
    pub fn new(config: &AnomalyConfig, clock: Arc<dyn Clock>) -> Self {
        let capacity = usize::try_from(config.max_tracked.max(1)).unwrap_or(usize::MAX);
        Detector {
            config: config.clone(),
            clock,
            interval_us: config.interval_seconds.max(1) * 1_000_000,
            idle_us: config.idle_seconds.saturating_mul(1_000_000),
            principals: quick_cache::sync::Cache::new(capacity),
            sources: quick_cache::sync::Cache::new(capacity),
            blocks: Mutex::default(),
            shared: None,
        }
    }

    /// The same detector sharing its blocks with the other replicas
    /// through `shared` (see `shared.rs`; read them with
    /// [`Detector::sync_shared`]).
    pub fn with_shared(mut self, shared: shared::SharedBlocks) -> Self {
        self.shared = Some(Arc::new(shared));
        self
    }

    /// True when blocks are shared with the other replicas.
    pub fn shares_blocks(&self) -> bool {
        self.shared.is_some()
    }

    /// Imposes the blocks the other replicas shared (a no-op without a
    /// shared store, or while it does not answer).
    pub async fn sync_shared(&self) {
        let Some(shared) = &self.shared else { return };
        let now = self.clock.now_us();
        if let Ok(blocks) = shared.read(now).await {
            for (subject, until_us) in blocks {
                self.impose(&subject, until_us, now);
            }
        }
    }

    /// Blocks `subject` until `until_us` (kept if already blocked longer).
    fn impose(&self, subject: &Subject, until_us: u64, now: u64) {
        if until_us <= now {
            return;
        }
        let (track, key) = match subject {
            Subject::Principal(p) => (self.track(&self.principals, p.as_str(), now), p.clone()),
            Subject::Source(ip) => (self.track(&self.sources, ip, now), ip.to_string()),
        };
        let mut t = self.lock_fresh(&track, now);
        if t.blocked_until_us >= until_us {
            return;
        }
        t.blocked_until_us = until_us;
        drop(t);
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let slot = blocks.entry(key).or_insert(0);
        *slot = (*slot).max(until_us);
    }

    /// The settings.
    pub fn config(&self) -> &AnomalyConfig {
        &self.config
    }

    /// Risk and block of a request's principal and source, before it is
    /// decided. Subjects not tracked have risk 0; nothing is created.
    pub fn assess(&self, principal: Option<&str>, source: Option<IpAddr>) -> Assessment {
        let now = self.clock.now_us();
        let mut a = Assessment::default();
        let tracks = [
            principal.and_then(|p| self.principals.get(p)),
            source.and_then(|s| self.sources.get(&s)),
        ];
        for track in tracks.into_iter().flatten() {
            let t = track.lock().unwrap_or_else(|e| e.into_inner());
            if t.risk_until_us > now {
                a.risk = a.risk.max(t.risk);
            }
            if t.blocked_until_us > now {
                let left = Duration::from_micros(t.blocked_until_us - now);
                a.blocked_for = Some(a.blocked_for.map_or(left, |b| b.max(left)));
            }
        }
        a
    }

    /// Counts a decided request against its principal and source; returns
    /// the anomaly events it set off (usually none).
    pub fn observe(
        &self,
        principal: Option<&str>,
        source: Option<IpAddr>,
        observed: Observed,
    ) -> Vec<AnomalyEvent> {
        let now = self.clock.now_us();
        let mut events = Vec::new();
        if let Some(p) = principal {
            let track = self.track(&self.principals, p, now);
            self.count(
                &track,
                now,
                observed,
                Subject::Principal(p.to_string()),
                &mut events,
            );
        }
        if let Some(s) = source {
            let track = self.track(&self.sources, &s, now);
            self.count(&track, now, observed, Subject::Source(s), &mut events);
        }
        if events.iter().any(|e| e.blocked_for.is_some()) {
            let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            blocks.retain(|_, until| *until > now);
            for e in events.iter().filter(|e| e.blocked_for.is_some()) {
                let until = now + e.blocked_for.unwrap_or_default().as_micros() as u64;
                let key = match &e.subject {
                    Subject::Principal(p) => p.clone(),
                    Subject::Source(ip) => ip.to_string(),
                };
                let slot = blocks.entry(key).or_insert(0);
                *slot = (*slot).max(until);
            }
            if let Some(shared) = &self.shared {
                shared.publish(
                    events
                        .iter()
                        .filter_map(|e| {
                            e.blocked_for
                                .map(|b| (e.subject.clone(), now + b.as_micros() as u64))
                        })
                        .collect(),
                );
            }
        }
        events
    }

    fn count(
        &self,
        track: &Mutex<Track>,
        now: u64,
        observed: Observed,
        subject: Subject,
        events: &mut Vec<AnomalyEvent>,
    ) {
        let c = &self.config;
        let mut t = self.lock_fresh(track, now);
        t.last_seen_us = now;
        let clip = (
            threshold(
                c,
                &t.rate,
                t.seen,
                c.min_requests,
                c.new_subject_max_requests,
            ),
            threshold(c, &t.deny, t.seen, c.min_denies, c.new_subject_max_requests),
        );
        t.advance(now / self.interval_us, c, clip);
        t.requests += 1;
        let denied = observed != Observed::Allowed;
        if denied {
            t.denies += 1;
        }
        let failure = matches!(
            (observed, &subject),
            (Observed::Forbidden, _) | (Observed::AuthnFailure, Subject::Source(_))
        );
        if failure {
            let window = c.failure_window_seconds * 1_000_000;
            if now.saturating_sub(t.failures_since_us) >= window {
                t.failures = 0;
                t.failures_since_us = now;
                t.flagged &= !AnomalyKind::RepeatedFailures.bit();
            }
            t.failures += 1;
        }

        let mut raise =
            |t: &mut Track, kind: AnomalyKind, observed: u64, threshold: f64, baseline: f64| {
                if t.flagged & kind.bit() != 0 {
                    return;
                }
                t.flagged |= kind.bit();
                let until = now + c.risk_seconds * 1_000_000;
                if t.risk_until_us <= now {
                    t.risk = 0;
                }
                t.risk = t.risk.max(kind.risk());
                t.risk_until_us = t.risk_until_us.max(until);
                let blocked_for = (c.block_seconds > 0 && c.block_on.contains(&kind)).then(|| {
                    t.blocked_until_us = t.blocked_until_us.max(now + c.block_seconds * 1_000_000);
                    Duration::from_secs(c.block_seconds)
                });
                events.push(AnomalyEvent {
                    kind,
                    subject: subject.clone(),
                    observed,
                    threshold,
                    baseline,
                    blocked_for,
                    risk: t.risk,
                });
            };

        let rate_threshold = threshold(
            c,
            &t.rate,
            t.seen,
            c.min_requests,
            c.new_subject_max_requests,
        );
        if t.requests as f64 > rate_threshold {
            let (n, mean) = (t.requests, t.rate.mean);
            raise(&mut t, AnomalyKind::RateSurge, n, rate_threshold, mean);
        }
        if denied {
            let deny_threshold =
                threshold(c, &t.deny, t.seen, c.min_denies, c.new_subject_max_requests);
            if t.denies as f64 > deny_threshold {
                let (n, mean) = (t.denies, t.deny.mean);
                raise(&mut t, AnomalyKind::DenySurge, n, deny_threshold, mean);
            }
        }
        if failure && t.failures >= u64::from(c.failure_threshold) {
            let n = t.failures;
            raise(
                &mut t,
                AnomalyKind::RepeatedFailures,
                n,
                f64::from(c.failure_threshold),
                0.0,
            );
        }
    }

    /// Tracked principals, tracked sources, and subjects blocked now: the
    /// subjects in memory, counted in O(1) per kind (the blocks are few and
    /// counted one by one). A subject forgotten by now (see
    /// [`Detector::settle`]) is counted until the next sweep removes it.
    pub fn tracked(&self) -> (u64, u64, u64) {
        let now = self.clock.now_us();
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        blocks.retain(|_, until| *until > now);
        (
            self.principals.len() as u64,
            self.sources.len() as u64,
            blocks.len() as u64,
        )
    }

    /// How often the server sweeps forgotten subjects away with
    /// [`Detector::settle`]: a quarter of `idle_seconds`, at least 1 s and
    /// at most 300 s apart, so a subject leaves memory at most that long
    /// after it was forgotten.
    pub fn sweep_period(&self) -> Duration {
        Duration::from_secs((self.idle_us / 4_000_000).clamp(1, 300))
    }

    /// Removes the subjects forgotten by now (unseen for `idle_seconds`,
    /// no risk or block left); the caches otherwise drop them only when
    /// full. It visits every subject, one at a time: each visit takes its
    /// cache shard's read lock and each removal its write lock, only for
    /// that subject, so a request never waits behind the sweep for more
    /// than one subject (one `retain` over a shard held its write lock for
    /// the whole shard: 100,000 principals and 100,000 sources took 12 ms).
    /// A subject seen again meanwhile is kept. O(`max_tracked`): run it off
    /// the request path, as the server does every [`Detector::sweep_period`]
    /// on a blocking thread.
    pub fn settle(&self) {
        let now = self.clock.now_us();
        let forgotten = |track: &Arc<Mutex<Track>>| {
            track
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forgotten(now, self.idle_us)
        };
        for (key, track) in self.principals.iter() {
            if forgotten(&track) {
                self.principals.remove_if(&key, |t| forgotten(t));
            }
        }
        for (key, track) in self.sources.iter() {
            if forgotten(&track) {
                self.sources.remove_if(&key, |t| forgotten(t));
            }
        }
    }

    /// The subject's track, created (as first seen `now`) when missing.
    /// Concurrent first sightings of one subject get the same track.
    fn track<K, Q>(
        &self,
        cache: &quick_cache::sync::Cache<K, Arc<Mutex<Track>>>,
        key: &Q,
        now: u64,
    ) -> Arc<Mutex<Track>>
    where
        K: Eq + std::hash::Hash + Clone,
        Q: std::hash::Hash + quick_cache::Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    {
        let new = || Arc::new(Mutex::new(Track::new(now / self.interval_us, now)));
        match cache.get_value_or_guard(key, None) {
            quick_cache::sync::GuardResult::Value(track) => track,
            quick_cache::sync::GuardResult::Guard(guard) => {
                let track = new();
                // Fails only when the subject was removed meanwhile; the
                // track still counts this request.
                let _ = guard.insert(Arc::clone(&track));
                track
            }
            // No timeout was given: the call waits for another first
            // sighting's insert instead.
            quick_cache::sync::GuardResult::Timeout => new(),
        }
    }

    /// Locks `track` (a std mutex: per subject, held for a few arithmetic
    /// operations, never across an await), first starting it afresh if
    /// the subject was forgotten.
    fn lock_fresh<'t>(
        &self,
        track: &'t Mutex<Track>,
        now: u64,
    ) -> std::sync::MutexGuard<'t, Track> {
        let mut t = track.lock().unwrap_or_else(|e| e.into_inner());
        if t.forgotten(now, self.idle_us) {
            *t = Track::new(now / self.interval_us, now);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    fn detector(config: AnomalyConfig) -> (Detector, Arc<ManualClock>) {
        let clock = ManualClock::at(1_000_000_000_000);
        (Detector::new(&config, clock.clone()), clock)
    }

    /// `n` requests spread evenly over `over`, all `observed`.
    fn traffic(
        d: &Detector,
        clock: &ManualClock,
        who: &str,
        n: u64,
        over: Duration,
        observed: Observed,
    ) -> Vec<AnomalyEvent> {
        let step = over / n as u32;
        let mut events = Vec::new();
        for _ in 0..n {
            events.extend(d.observe(Some(who), None, observed));
            clock.advance(step);
        }
        events
    }

    #[test]
    fn steady_traffic_builds_a_baseline_without_events() {
        let (d, clock) = detector(AnomalyConfig::default());
        let events = traffic(
            &d,
            &clock,
            "User::\"steady\"",
            3_000,
            Duration::from_secs(600),
            Observed::Allowed,
        );
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(d.assess(Some("User::\"steady\""), None).risk, 0);
    }

    #[test]
    fn a_caller_back_after_a_long_absence_warms_up_again_instead_of_surging() {
        let (d, clock) = detector(AnomalyConfig::default());
        let who = "User::\"batch\"";
        let allowed = |n, seconds| {
            traffic(
                &d,
                &clock,
                who,
                n,
                Duration::from_secs(seconds),
                Observed::Allowed,
            )
        };
        // 20 per second for ten minutes, away for an hour, back at 20/s.
        let events = allowed(12_000, 600);
        assert!(events.is_empty(), "{events:?}");
        clock.advance(Duration::from_secs(3_600));
        let events = allowed(12_000, 600);
        assert!(events.is_empty(), "{events:?}");
        // A short pause keeps the baseline: a surge right after is flagged.
        clock.advance(Duration::from_secs(30));
        let events = allowed(3_000, 10);
        assert_eq!(events.len(), 1, "{events:?}");
    }

    #[test]
    fn a_surge_after_a_baseline_is_an_event_with_risk() {
        let (d, clock) = detector(AnomalyConfig::default());
        let who = "User::\"alice\"";
        // 5 per second for ten minutes, then 100 per second.
        assert!(traffic(
            &d,
            &clock,
            who,
            3_000,
            Duration::from_secs(600),
            Observed::Allowed
        )
        .is_empty());
        let events = traffic(
            &d,
            &clock,
            who,
            1_000,
            Duration::from_secs(10),
            Observed::Allowed,
        );
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, AnomalyKind::RateSurge);
        assert_eq!(events[0].subject, Subject::Principal(who.into()));
        assert_eq!(
            d.assess(Some(who), None).risk,
            AnomalyKind::RateSurge.risk()
        );
        // The risk lasts risk_seconds, then ends.
        clock.advance(Duration::from_secs(301));
        assert_eq!(d.assess(Some(who), None).risk, 0);
    }

    #[test]
    fn repeated_failures_from_a_source_block_it_until_the_block_expires() {
        let config = AnomalyConfig {
            block_seconds: 120,
            failure_threshold: 5,
            ..AnomalyConfig::default()
        };
        let (d, clock) = detector(config);
        let source: IpAddr = "192.0.2.9".parse().unwrap();
        let mut events = Vec::new();
        for _ in 0..5 {
            events.extend(d.observe(None, Some(source), Observed::AuthnFailure));
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, AnomalyKind::RepeatedFailures);
        assert_eq!(events[0].blocked_for, Some(Duration::from_secs(120)));
        // The fifth failure was at t=4 s; now t=5 s: 119 s left.
        let a = d.assess(None, Some(source));
        assert_eq!(a.blocked_for, Some(Duration::from_secs(119)));
        assert_eq!(d.tracked().2, 1, "counted as blocked");
        assert_eq!(a.risk, 80);
        clock.advance(Duration::from_secs(118));
        assert!(d.assess(None, Some(source)).blocked_for.is_some());
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            d.assess(None, Some(source)).blocked_for,
            None,
            "expired on time"
        );
        assert_eq!(d.tracked().2, 0, "no longer counted as blocked");
    }

    #[test]
    fn a_subject_unseen_for_idle_seconds_is_forgotten_and_no_longer_tracked() {
        let config = AnomalyConfig {
            idle_seconds: 600,
            ..AnomalyConfig::default()
        };
        let (d, clock) = detector(config);
        let source: IpAddr = "192.0.2.10".parse().unwrap();
        d.observe(Some("User::\"brief\""), Some(source), Observed::Allowed);
        assert_eq!(d.tracked(), (1, 1, 0));
        clock.advance(Duration::from_secs(599));
        d.settle();
        assert_eq!(d.tracked(), (1, 1, 0), "not idle long enough yet");
        clock.advance(Duration::from_secs(1));
        assert_eq!(d.tracked(), (1, 1, 0), "in memory until a sweep");
        d.settle();
        assert_eq!(d.tracked(), (0, 0, 0), "idle time is the detector's clock");
        // Seen again: tracked afresh.
        d.observe(Some("User::\"brief\""), None, Observed::Allowed);
        assert_eq!(d.tracked(), (1, 0, 0));
    }

    #[test]
    fn a_block_longer_than_idle_seconds_is_kept_while_the_subject_stays_away() {
        let config = AnomalyConfig {
            block_seconds: 900,
            failure_threshold: 5,
            idle_seconds: 60,
            ..AnomalyConfig::default()
        };
        let (d, clock) = detector(config);
        let source: IpAddr = "192.0.2.11".parse().unwrap();
        for _ in 0..5 {
            d.observe(None, Some(source), Observed::AuthnFailure);
        }
        clock.advance(Duration::from_secs(600));
        d.settle();
        assert_eq!(d.tracked(), (0, 1, 1), "idle but blocked: kept");
        let a = d.assess(None, Some(source));
        assert_eq!(a.blocked_for, Some(Duration::from_secs(300)));
        // Once the block and the risk have run out, idle means forgotten.
        clock.advance(Duration::from_secs(300));
        assert_eq!(d.assess(None, Some(source)).blocked_for, None);
        d.settle();
        assert_eq!(d.tracked(), (0, 0, 0));
    }

    #[test]
    fn the_sweep_period_is_a_quarter_of_idle_seconds_within_one_to_300_seconds() {
        let with_idle = |idle_seconds| {
            detector(AnomalyConfig {
                interval_seconds: 1,
                idle_seconds,
                ..AnomalyConfig::default()
            })
            .0
            .sweep_period()
        };
        assert_eq!(with_idle(1), Duration::from_secs(1));
        assert_eq!(with_idle(60), Duration::from_secs(15));
        assert_eq!(with_idle(3_600), Duration::from_secs(300));
    }

    #[test]
    fn a_subject_seen_again_before_the_sweep_is_kept() {
        let (d, clock) = detector(AnomalyConfig {
            idle_seconds: 60,
            ..AnomalyConfig::default()
        });
        for n in 0..50 {
            d.observe(Some(&format!("User::\"u{n}\"")), None, Observed::Allowed);
        }
        clock.advance(Duration::from_secs(60));
        // u7 comes back before the sweep: no longer forgotten.
        d.observe(Some("User::\"u7\""), None, Observed::Allowed);
        d.settle();
        assert_eq!(d.tracked(), (1, 0, 0));
        assert_eq!(d.assess(Some("User::\"u7\""), None).blocked_for, None);
    }

    #[test]
    fn failures_spread_beyond_the_window_are_no_event() {
        let config = AnomalyConfig {
            failure_threshold: 5,
            failure_window_seconds: 60,
            ..AnomalyConfig::default()
        };
        let (d, clock) = detector(config);
        let mut events = Vec::new();
        for _ in 0..20 {
            events.extend(d.observe(Some("User::\"bob\""), None, Observed::Forbidden));
            clock.advance(Duration::from_secs(16));
        }
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn authentication_failures_count_against_the_source_not_a_principal() {
        let config = AnomalyConfig {
            failure_threshold: 3,
            ..AnomalyConfig::default()
        };
        let (d, _clock) = detector(config);
        let mut events = Vec::new();
        for _ in 0..3 {
            events.extend(d.observe(
                Some("User::\"victim\""),
                Some("192.0.2.1".parse().unwrap()),
                Observed::AuthnFailure,
            ));
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].subject.kind(), "source");
    }

    #[test]
    fn a_new_subject_is_a_surge_only_past_the_cold_threshold() {
        let (d, clock) = detector(AnomalyConfig::default());
        // Cold threshold: new_subject_max_requests (1000) per interval.
        let events = traffic(
            &d,
            &clock,
            "App::\"new\"",
            990,
            Duration::from_secs(9),
            Observed::Allowed,
        );
        assert!(events.is_empty(), "{events:?}");
        let (d, clock) = detector(AnomalyConfig::default());
        let events = traffic(
            &d,
            &clock,
            "App::\"new\"",
            1_010,
            Duration::from_secs(9),
            Observed::Allowed,
        );
        assert_eq!(events.len(), 1, "{events:?}");
    }

    #[test]
    fn settings_are_checked() {
        let bad = AnomalyConfig {
            ewma_alpha: 0.0,
            surge_factor: 1.0,
            max_tracked: 10,
            ..AnomalyConfig::default()
        };
        let p = bad.problems().join("\n");
        assert!(
            p.contains("ewma_alpha") && p.contains("surge_factor") && p.contains("max_tracked"),
            "{p}"
        );
        assert!(AnomalyConfig::default().problems().is_empty());
    }
}
