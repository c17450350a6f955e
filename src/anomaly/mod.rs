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
//! O(1). Memory is bounded: at most `max_tracked` subjects of each kind,
//! idle ones evicted. Time comes from a `Clock`, so tests move it by hand.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::time::Clock;

mod config;
pub mod shared;

pub use config::AnomalyConfig;

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

/// Exponentially weighted mean and variance of a per-interval count.
#[derive(Debug, Clone, Copy, Default)]
struct Ewma {
    mean: f64,
    var: f64,
}

impl Ewma {
    fn fold(&mut self, x: f64, alpha: f64, first: bool) {
        if first {
            // A count is roughly Poisson: start the variance at the mean.
            self.mean = x;
            self.var = x;
            return;
        }
        let diff = x - self.mean;
        let incr = alpha * diff;
        self.mean += incr;
        self.var = (1.0 - alpha) * (self.var + diff * incr);
    }
}

/// One subject's state.
#[derive(Debug)]
struct Track {
    /// The current interval's index (time / interval).
    interval: u64,
    /// The current interval began before this subject was first seen: it
    /// is not a full interval and does not enter the baseline.
    partial: bool,
    requests: u64,
    denies: u64,
    rate: Ewma,
    deny: Ewma,
    /// Full intervals folded into the baseline.
    seen: u32,
    /// Kinds already reported in the current interval / failure window.
    flagged: u8,
    failures: u64,
    failures_since_us: u64,
    risk: u8,
    risk_until_us: u64,
    blocked_until_us: u64,
}

/// After more empty intervals than this (by then the baseline has decayed to
/// almost nothing: 0.8^64), a subject starts its warm-up again.
const MAX_IDLE_FOLDS: u64 = 64;

impl Track {
    fn new(interval: u64) -> Self {
        Track {
            interval,
            partial: true,
            requests: 0,
            denies: 0,
            rate: Ewma::default(),
            deny: Ewma::default(),
            seen: 0,
            flagged: 0,
            failures: 0,
            failures_since_us: 0,
            risk: 0,
            risk_until_us: 0,
            blocked_until_us: 0,
        }
    }

    /// Closes the intervals that ended before `now`, folding their counts
    /// into the baseline.
    fn advance(&mut self, now_interval: u64, config: &AnomalyConfig, clip: (f64, f64)) {
        if now_interval <= self.interval {
            return;
        }
        let alpha = config.ewma_alpha;
        if !self.partial {
            // A surge is folded in only up to its threshold, so an attacker
            // cannot teach the baseline their rate in a few intervals.
            let (max_rate, max_deny) = clip;
            let first = self.seen == 0;
            self.rate
                .fold((self.requests as f64).min(max_rate), alpha, first);
            self.deny
                .fold((self.denies as f64).min(max_deny), alpha, first);
            self.seen = self.seen.saturating_add(1);
            let idle = now_interval - self.interval - 1;
            if idle > MAX_IDLE_FOLDS {
                // Back after a long absence: the old baseline has decayed to
                // nothing and says little about the return, which would
                // otherwise look like a surge. Warm up again.
                self.seen = 0;
                self.rate = Ewma::default();
                self.deny = Ewma::default();
                self.partial = true;
                self.interval = now_interval;
                self.requests = 0;
                self.denies = 0;
                self.flagged &= AnomalyKind::RepeatedFailures.bit();
                return;
            }
            for _ in 0..idle {
                self.rate.fold(0.0, alpha, false);
                self.deny.fold(0.0, alpha, false);
            }
        }
        self.partial = false;
        self.interval = now_interval;
        self.requests = 0;
        self.denies = 0;
        self.flagged &= AnomalyKind::RepeatedFailures.bit();
    }
}

/// The surge threshold of a series with baseline `e` after `seen` full
/// intervals, never below `floor`; `cold` until the baseline is warm.
fn threshold(config: &AnomalyConfig, e: &Ewma, seen: u32, floor: u64, cold: u64) -> f64 {
    let floor = floor as f64;
    if seen < config.warmup_intervals {
        return (cold as f64).max(floor);
    }
    // The observed deviation, but never below a Poisson count's (sqrt of
    // the mean): a very regular client must not make every wobble a surge.
    let sd = e.var.max(e.mean).max(1.0).sqrt();
    let by_factor = config.surge_factor * e.mean;
    let by_deviation = e.mean + config.surge_deviations * sd;
    floor.max(by_factor.min(by_deviation))
}

/// The detector: baselines of every tracked principal and source.
pub struct Detector {
    config: AnomalyConfig,
    clock: Arc<dyn Clock>,
    interval_us: u64,
    principals: moka::sync::Cache<Arc<str>, Arc<Mutex<Track>>>,
    sources: moka::sync::Cache<IpAddr, Arc<Mutex<Track>>>,
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
            .field("principals", &self.principals.entry_count())
            .field("sources", &self.sources.entry_count())
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// A detector with `config`, reading time from `clock`.
    pub fn new(config: &AnomalyConfig, clock: Arc<dyn Clock>) -> Self {
        let idle = Duration::from_secs(config.idle_seconds);
        Detector {
            config: config.clone(),
            clock,
            interval_us: config.interval_seconds.max(1) * 1_000_000,
            principals: moka::sync::Cache::builder()
                .max_capacity(config.max_tracked)
                .time_to_idle(idle)
                .build(),
            sources: moka::sync::Cache::builder()
                .max_capacity(config.max_tracked)
                .time_to_idle(idle)
                .build(),
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
        let new = || Arc::new(Mutex::new(Track::new(now / self.interval_us)));
        let (track, key) = match subject {
            Subject::Principal(p) => (
                self.principals.get_with(Arc::from(p.as_str()), new),
                p.clone(),
            ),
            Subject::Source(ip) => (self.sources.get_with(*ip, new), ip.to_string()),
        };
        let mut t = track.lock().unwrap_or_else(|e| e.into_inner());
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
            let track = match self.principals.get(p) {
                Some(track) => track,
                None => self.principals.get_with(Arc::from(p), || {
                    Arc::new(Mutex::new(Track::new(now / self.interval_us)))
                }),
            };
            self.count(
                &track,
                now,
                observed,
                Subject::Principal(p.to_string()),
                &mut events,
            );
        }
        if let Some(s) = source {
            let track = self.sources.get_with(s, || {
                Arc::new(Mutex::new(Track::new(now / self.interval_us)))
            });
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
        // A std mutex: per subject, held for a few arithmetic operations,
        // never across an await.
        let mut t = track.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Tracked principals, tracked sources (approximate: the caches settle
    /// their counts lazily), and subjects blocked now.
    pub fn tracked(&self) -> (u64, u64, u64) {
        let now = self.clock.now_us();
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        blocks.retain(|_, until| *until > now);
        (
            self.principals.entry_count(),
            self.sources.entry_count(),
            blocks.len() as u64,
        )
    }

    /// Applies pending evictions now (tests and memory measurements).
    pub fn settle(&self) {
        self.principals.run_pending_tasks();
        self.sources.run_pending_tasks();
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
