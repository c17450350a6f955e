//! Which ShouldRateLimit answers reach the audit trail
//! (`audit.ratelimit`). Every `Check` decision and every admin call is
//! recorded; an RLS answer is recorded whenever it says more than "under
//! the limit": a refusal (`OVER_LIMIT`), an error, a shadow-mode limit
//! exceeded, a degraded store decision, a policy shadow disagreement. Of
//! the plain `OK` answers one in `ok_sample_every` is recorded, and each
//! recorded one carries the count of plain `OK` answers left unrecorded
//! since the previous one (`unrecorded_before`), so the trail states what
//! it leaves out and the sum over it is the number of calls answered.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use std::time::Duration;

use super::{AuditRecord, AuditSink};
use crate::decision::{Decision, Outcome};
use crate::request::AccessRequest;

/// The `audit.ratelimit` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitAudit {
    /// Record one in this many plain `OK` ShouldRateLimit answers: 1
    /// records every one; the default, 100, keeps the trail's cost for an
    /// RLS call a hundredth of a `Check`'s. Between 1 and 1,000,000.
    pub ok_sample_every: u64,
}

impl Default for RateLimitAudit {
    fn default() -> Self {
        RateLimitAudit {
            ok_sample_every: 100,
        }
    }
}

impl RateLimitAudit {
    /// Problems with the section, one line each.
    pub fn problems(&self) -> Vec<String> {
        if (1..=1_000_000).contains(&self.ok_sample_every) {
            Vec::new()
        } else {
            vec![format!(
                "audit.ratelimit.ok_sample_every: {} is out of range: between 1 (record every OK answer) and 1000000",
                self.ok_sample_every
            )]
        }
    }
}

/// What to do with one ShouldRateLimit answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// Record it; `unrecorded_before` plain `OK` answers were left out since
    /// the previous recorded one (0 for everything but sampled `OK`s).
    Record { unrecorded_before: u64 },
    /// Leave it out (counted).
    Skip,
}

/// The sampling state of one audit trail.
#[derive(Debug)]
pub struct RateLimitSampler {
    every: u64,
    /// Plain `OK` answers seen.
    seen: AtomicU64,
    /// Plain `OK` answers left out since the last recorded one.
    skipped: AtomicU64,
}

impl RateLimitSampler {
    pub fn new(config: RateLimitAudit) -> Self {
        RateLimitSampler {
            every: config.ok_sample_every.max(1),
            seen: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Whether the answer `d` is recorded: always unless it is a plain
    /// `OK`; of those, the first and then one in `ok_sample_every`.
    pub fn sample(&self, d: &Decision) -> Sample {
        if !plain_ok(d) {
            return Sample::Record {
                unrecorded_before: 0,
            };
        }
        if self
            .seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.every)
        {
            Sample::Record {
                unrecorded_before: self.skipped.swap(0, Ordering::Relaxed),
            }
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            Sample::Skip
        }
    }
}

impl AuditSink {
    /// Records a ShouldRateLimit answer as `audit.ratelimit` says (see
    /// the module docs): like [`AuditSink::record_decision`] when it is
    /// recorded; a plain `OK` left out is counted and answered at once.
    pub async fn record_ratelimit_decision(
        &self,
        d: Decision,
        req: &AccessRequest,
        adapter: &'static str,
        latency: Duration,
    ) -> Decision {
        let unrecorded_before = match self.ratelimit.sample(&d) {
            Sample::Record { unrecorded_before } => unrecorded_before,
            Sample::Skip => {
                self.counters
                    .ratelimit_ok_unrecorded
                    .fetch_add(1, Ordering::Relaxed);
                return d;
            }
        };
        self.record_or_refuse(d, |d| {
            vec![AuditRecord {
                adapter: adapter.into(),
                unrecorded_before,
                ..AuditRecord::decision(d, req, latency)
            }]
        })
        .await
    }
}

/// An allowed answer with nothing else to report.
fn plain_ok(d: &Decision) -> bool {
    d.decision == Outcome::Allow
        && d.errors.is_empty()
        && d.shadow.as_ref().is_none_or(|s| !s.disagrees)
        && d.quota
            .as_ref()
            .is_none_or(|q| q.shadow_exceeded.is_empty() && q.degraded.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::DenyReason;

    fn ok() -> Decision {
        Decision::new("v1").allow()
    }

    #[test]
    fn one_plain_ok_in_n_is_recorded_with_the_count_left_out_before_it() {
        let s = RateLimitSampler::new(RateLimitAudit { ok_sample_every: 4 });
        let got: Vec<Sample> = (0..9).map(|_| s.sample(&ok())).collect();
        let rec = |n| Sample::Record {
            unrecorded_before: n,
        };
        use Sample::Skip;
        assert_eq!(
            got,
            [rec(0), Skip, Skip, Skip, rec(3), Skip, Skip, Skip, rec(3)]
        );
    }

    #[test]
    fn refusals_errors_and_shadow_outcomes_are_always_recorded() {
        let s = RateLimitSampler::new(RateLimitAudit {
            ok_sample_every: 1_000_000,
        });
        s.sample(&ok()); // the first OK is recorded; the next ones are not
        assert_eq!(s.sample(&ok()), Sample::Skip);
        let always = Sample::Record {
            unrecorded_before: 0,
        };
        let over = ok().deny(DenyReason::QuotaExceeded, "over");
        assert_eq!(s.sample(&over), always);
        let mut erred = ok();
        erred.errors.push("quota: store timed out".into());
        assert_eq!(s.sample(&erred), always);
        let mut shadow = ok();
        shadow.quota = Some(Box::new(crate::decision::quota::QuotaOutcome {
            descriptor: "org=org0".into(),
            name: None,
            stats_key: String::new(),
            limit: 10,
            window_seconds: 60,
            remaining: 0,
            reset_seconds: 60,
            retry_after_seconds: None,
            shadow_exceeded: vec!["ml_api.org_org0".into()],
            degraded: None,
            cost_too_large: None,
        }));
        assert_eq!(s.sample(&shadow), always);
    }

    #[test]
    fn every_is_one_records_every_answer_and_zero_is_refused() {
        let s = RateLimitSampler::new(RateLimitAudit { ok_sample_every: 1 });
        for _ in 0..5 {
            assert_eq!(
                s.sample(&ok()),
                Sample::Record {
                    unrecorded_before: 0
                }
            );
        }
        let problems = RateLimitAudit { ok_sample_every: 0 }.problems();
        assert!(
            problems[0].contains("audit.ratelimit.ok_sample_every"),
            "{problems:?}"
        );
    }
}
