//! The `anomaly:` section of the configuration: windows, thresholds,
//! blocks and the limits on tracked subjects, and its checks.

use serde::Deserialize;

use super::AnomalyKind;

/// Anomaly detection settings (`anomaly:` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Detect at all.
    pub enabled: bool,
    /// The baseline's interval, seconds: requests are counted per interval.
    pub interval_seconds: u64,
    /// EWMA weight of the latest interval (0 < alpha <= 1).
    pub ewma_alpha: f64,
    /// Full intervals a subject is observed before its own baseline is
    /// trusted; until then only more than `new_subject_max_requests` in an
    /// interval is a surge.
    pub warmup_intervals: u32,
    /// The surge threshold of a subject without a baseline yet, requests
    /// per interval.
    pub new_subject_max_requests: u64,
    /// A count above this many times the baseline mean is a surge...
    pub surge_factor: f64,
    /// ...or above the mean plus this many standard deviations.
    pub surge_deviations: f64,
    /// Requests in one interval below which nothing is a surge.
    pub min_requests: u64,
    /// Denials in one interval below which nothing is a deny surge.
    pub min_denies: u64,
    /// Authentication or authorization failures within
    /// `failure_window_seconds` that make a repeated-failures event.
    pub failure_threshold: u32,
    /// The failure counting window, seconds.
    pub failure_window_seconds: u64,
    /// How long an event raises the subject's `context.risk`, seconds.
    pub risk_seconds: u64,
    /// Block a subject for this long after an event of a kind in `block_on`
    /// (429 with Retry-After); 0 never blocks.
    pub block_seconds: u64,
    /// Event kinds that block: `rate_surge`, `deny_surge`,
    /// `repeated_failures`.
    pub block_on: Vec<AnomalyKind>,
    /// Most principals (and, separately, source addresses) kept in memory.
    pub max_tracked: u64,
    /// A subject unseen this long is forgotten, seconds.
    pub idle_seconds: u64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            interval_seconds: 10,
            ewma_alpha: 0.2,
            warmup_intervals: 3,
            new_subject_max_requests: 1_000,
            surge_factor: 4.0,
            surge_deviations: 6.0,
            min_requests: 50,
            min_denies: 20,
            failure_threshold: 20,
            failure_window_seconds: 60,
            risk_seconds: 300,
            block_seconds: 0,
            block_on: vec![AnomalyKind::RepeatedFailures],
            max_tracked: 100_000,
            idle_seconds: 3_600,
        }
    }
}

impl AnomalyConfig {
    /// Every problem with the settings, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.interval_seconds == 0 {
            p.push("anomaly.interval_seconds: at least 1".to_string());
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            p.push("anomaly.ewma_alpha: greater than 0 and at most 1".into());
        }
        if self.surge_factor.is_nan() || self.surge_factor <= 1.0 {
            p.push("anomaly.surge_factor: greater than 1".into());
        }
        if self.surge_deviations.is_nan() || self.surge_deviations <= 0.0 {
            p.push("anomaly.surge_deviations: greater than 0".into());
        }
        if self.min_requests == 0 || self.min_denies == 0 || self.failure_threshold == 0 {
            p.push("anomaly.min_requests, min_denies and failure_threshold: at least 1".into());
        }
        if self.failure_window_seconds == 0 || self.risk_seconds == 0 {
            p.push("anomaly.failure_window_seconds and risk_seconds: at least 1".into());
        }
        if self.max_tracked < 1024 {
            p.push("anomaly.max_tracked: at least 1024".into());
        }
        if self.idle_seconds < self.interval_seconds {
            p.push("anomaly.idle_seconds: at least interval_seconds".into());
        }
        p
    }
}
