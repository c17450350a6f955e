//! One subject's state: its EWMA baselines, the current interval's counts,
//! its failures, risk and block (all times in µs of the detector's clock).

use super::{AnomalyConfig, AnomalyKind};

/// Exponentially weighted mean and variance of a per-interval count.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ewma {
    pub(super) mean: f64,
    pub(super) var: f64,
}

impl Ewma {
    pub(super) fn fold(&mut self, x: f64, alpha: f64, first: bool) {
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
pub(super) struct Track {
    /// The current interval's index (time / interval).
    pub(super) interval: u64,
    /// The current interval began before this subject was first seen: it
    /// is not a full interval and does not enter the baseline.
    pub(super) partial: bool,
    pub(super) requests: u64,
    pub(super) denies: u64,
    pub(super) rate: Ewma,
    pub(super) deny: Ewma,
    /// Full intervals folded into the baseline.
    pub(super) seen: u32,
    /// Kinds already reported in the current interval / failure window.
    pub(super) flagged: u8,
    pub(super) failures: u64,
    pub(super) failures_since_us: u64,
    pub(super) risk: u8,
    pub(super) risk_until_us: u64,
    pub(super) blocked_until_us: u64,
    /// When the subject was last observed or blocked (µs).
    pub(super) last_seen_us: u64,
}

/// After more empty intervals than this (by then the baseline has decayed to
/// almost nothing: 0.8^64), a subject starts its warm-up again.
const MAX_IDLE_FOLDS: u64 = 64;

impl Track {
    pub(super) fn new(interval: u64, now_us: u64) -> Self {
        Track {
            last_seen_us: now_us,
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

    /// Unseen for `idle_us` with no risk or block left at `now`: what the
    /// subject did no longer matters.
    pub(super) fn forgotten(&self, now: u64, idle_us: u64) -> bool {
        now.saturating_sub(self.last_seen_us) >= idle_us
            && self.risk_until_us <= now
            && self.blocked_until_us <= now
    }

    /// Closes the intervals that ended before `now`, folding their counts
    /// into the baseline.
    pub(super) fn advance(&mut self, now_interval: u64, config: &AnomalyConfig, clip: (f64, f64)) {
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
pub(super) fn threshold(config: &AnomalyConfig, e: &Ewma, seen: u32, floor: u64, cold: u64) -> f64 {
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
