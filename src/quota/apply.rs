//! From descriptors to a quota verdict: finds the limit of each descriptor
//! (dropping `unlimited` and replaced ones), charges them all at once, and
//! picks the limit that decided, for headers. Shared by the RLS adapter and
//! the in-Check quota stage so both answer the same way.

use serde::Serialize;

use super::config::{counter_key, QuotaConfig, QuotaLimit};
use super::{Charge, Enforced, LimitState, OnStoreError, Quotas};

/// One descriptor to enforce: its domain, entries and cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The quota domain.
    pub domain: String,
    /// Entries, `(key, value)`.
    pub entries: Vec<(String, String)>,
    /// Units to charge (0: check only).
    pub cost: u64,
}

/// Per descriptor: the limit that applied and its state, if any.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The limit.
    pub limit: QuotaLimit,
    /// Its state after the charge.
    pub state: LimitState,
}

/// The verdict on a set of descriptors.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// False when a limit refused (or the store failed in `deny` mode).
    pub allowed: bool,
    /// One per descriptor, in order; `None` where no limit applied.
    pub applied: Vec<Option<Applied>>,
    /// The outcome for headers and records; `None` when no limit applied.
    pub outcome: Option<QuotaOutcome>,
}

/// What a decision records about quotas, and what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaOutcome {
    /// The counter key of the limit that decided (on a refusal, the one that
    /// refused; on an allow, the one with the least left).
    pub descriptor: String,
    /// That limit's name, if configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its size: units a full bucket holds.
    pub limit: u64,
    /// Its window in seconds.
    pub window_seconds: u64,
    /// Units left.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_seconds: u64,
    /// On a refusal: seconds until the request would fit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// Shadow-mode limits this request exceeded (reported, not enforced).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow_exceeded: Vec<String>,
    /// Set when the store failed and the configured mode decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<OnStoreError>,
    /// Set when the request's cost is larger than this limit ever allows at
    /// once (its burst): waiting cannot help, so there is no Retry-After.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_too_large: Option<u64>,
}

impl QuotaOutcome {
    /// `RateLimit-*` headers (and `Retry-After` on a refusal) for the client.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self.degraded {
            // Nothing was counted: no numbers to tell.
            Some(OnStoreError::Allow) => return Vec::new(),
            Some(OnStoreError::Deny) => return vec![("retry-after", "1".to_string())],
            _ => {}
        }
        if self.cost_too_large.is_some() {
            // The counter was not read: describe the limit, not its state.
            return vec![
                ("ratelimit-limit", self.limit.to_string()),
                (
                    "ratelimit-policy",
                    format!("{};w={}", self.limit, self.window_seconds),
                ),
            ];
        }
        let mut h = vec![
            ("ratelimit-limit", self.limit.to_string()),
            ("ratelimit-remaining", self.remaining.to_string()),
            ("ratelimit-reset", self.reset_seconds.to_string()),
            (
                "ratelimit-policy",
                format!("{};w={}", self.limit, self.window_seconds),
            ),
        ];
        if let Some(retry) = self.retry_after_seconds {
            h.push(("retry-after", retry.to_string()));
        }
        h
    }

    /// Why a refused request is denied: the store could not be asked (and
    /// the mode denies), the cost can never fit, or the limit is spent.
    pub fn deny_reason(&self) -> crate::decision::DenyReason {
        use crate::decision::DenyReason;
        if self.degraded == Some(OnStoreError::Deny) {
            DenyReason::QuotaUnavailable
        } else if self.cost_too_large.is_some() {
            DenyReason::BadQuotaCost
        } else {
            DenyReason::QuotaExceeded
        }
    }

    /// The client-safe explanation of a refusal.
    pub fn detail(&self) -> String {
        if let Some(cost) = self.cost_too_large {
            return format!(
                "the request costs {cost}, more than quota '{}' allows at once ({} per {} s); ask for less",
                self.name.as_deref().unwrap_or(&self.descriptor),
                self.limit,
                self.window_seconds
            );
        }
        match (self.degraded, self.retry_after_seconds) {
            (Some(OnStoreError::Deny), _) => {
                "quota could not be checked right now; retry shortly".to_string()
            }
            (_, Some(retry)) => format!(
                "quota '{}' exceeded: {} per {} s; retry after {} s",
                self.name.as_deref().unwrap_or(&self.descriptor),
                self.limit,
                self.window_seconds,
                retry
            ),
            _ => String::new(),
        }
    }
}

fn secs_up(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// Finds, charges and judges the limits of `descriptors`.
pub async fn apply(config: &QuotaConfig, quotas: &Quotas, descriptors: &[Descriptor]) -> Verdict {
    let found: Vec<Option<&QuotaLimit>> = descriptors
        .iter()
        .map(|d| {
            config
                .limit_for(&d.domain, &d.entries)
                .filter(|l| !l.unlimited)
        })
        .collect();
    // `replaces`: a limit named by another applying limit steps aside.
    let replaced: Vec<&str> = found
        .iter()
        .flatten()
        .flat_map(|l| l.replaces.iter().map(String::as_str))
        .collect();
    let mut charges = Vec::new();
    let mut index = Vec::new();
    for (i, (d, l)) in descriptors.iter().zip(&found).enumerate() {
        let Some(l) = l else { continue };
        if l.name.as_deref().is_some_and(|n| replaced.contains(&n)) {
            continue;
        }
        charges.push(Charge {
            key: counter_key(&d.domain, &d.entries),
            rate: l.rate(),
            cost: d.cost,
            shadow: l.shadow,
        });
        index.push(i);
    }
    let mut applied: Vec<Option<Applied>> = vec![None; descriptors.len()];
    // A cost larger than an enforced limit's burst can never fit: refuse it
    // as such, charging nothing, rather than with a Retry-After that no
    // amount of waiting would satisfy.
    if let Some(pos) = charges
        .iter()
        .position(|c| !c.shadow && c.cost > c.rate.burst())
    {
        let (i, c) = (index[pos], &charges[pos]);
        let limit = found[i].expect("indexed limits exist").clone();
        let outcome = QuotaOutcome {
            descriptor: c.key.clone(),
            name: limit.name.clone(),
            limit: limit.burst,
            window_seconds: limit.window_seconds(),
            remaining: 0,
            reset_seconds: 0,
            retry_after_seconds: None,
            shadow_exceeded: Vec::new(),
            degraded: None,
            cost_too_large: Some(c.cost),
        };
        applied[i] = Some(Applied {
            limit,
            state: LimitState {
                over: true,
                remaining: 0,
                reset_us: 0,
                retry_us: 0,
            },
        });
        return Verdict {
            allowed: false,
            applied,
            outcome: Some(outcome),
        };
    }
    if charges.is_empty() {
        return Verdict {
            allowed: true,
            applied,
            outcome: None,
        };
    }
    let (charged, degraded) = match quotas.enforce(&charges).await {
        Enforced::Charged { charged, degraded } => (charged, degraded),
        Enforced::AllowedUnchecked => {
            return Verdict {
                allowed: true,
                applied,
                outcome: Some(unchecked(&charges[0].key, OnStoreError::Allow)),
            }
        }
        Enforced::Unavailable => {
            return Verdict {
                allowed: false,
                applied,
                outcome: Some(unchecked(&charges[0].key, OnStoreError::Deny)),
            }
        }
    };
    for ((i, charge), state) in index.iter().zip(&charges).zip(&charged.states) {
        let _ = charge;
        applied[*i] = Some(Applied {
            limit: found[*i].expect("indexed limits exist").clone(),
            state: *state,
        });
    }
    // The limit that decided: the refusing one with the longest wait, or on
    // an allow the enforced one with the least left.
    let enforced = index
        .iter()
        .zip(&charges)
        .filter(|(i, c)| !c.shadow && applied[**i].is_some());
    let deciding = if charged.allowed {
        enforced
            .min_by_key(|(i, _)| applied[**i].as_ref().map(|a| a.state.remaining))
            .map(|(i, c)| (*i, c))
    } else {
        enforced
            .filter(|(i, _)| applied[**i].as_ref().is_some_and(|a| a.state.over))
            .max_by_key(|(i, _)| applied[**i].as_ref().map(|a| a.state.retry_us))
            .map(|(i, c)| (*i, c))
    };
    let shadow_exceeded = index
        .iter()
        .zip(&charges)
        .filter(|(i, c)| c.shadow && applied[**i].as_ref().is_some_and(|a| a.state.over))
        .map(|(_, c)| c.key.clone())
        .collect::<Vec<_>>();
    for key in &shadow_exceeded {
        tracing::info!(target: "portcullis::quota", descriptor = %key, "shadow-mode limit would have refused");
    }
    let outcome = deciding.map(|(i, c)| {
        let a = applied[i].as_ref().expect("deciding limit applied");
        QuotaOutcome {
            descriptor: c.key.clone(),
            name: a.limit.name.clone(),
            limit: a.limit.burst,
            window_seconds: a.limit.window_seconds(),
            remaining: a.state.remaining,
            reset_seconds: secs_up(a.state.reset_us),
            retry_after_seconds: (!charged.allowed).then(|| secs_up(a.state.retry_us).max(1)),
            shadow_exceeded,
            degraded,
            cost_too_large: None,
        }
    });
    Verdict {
        allowed: charged.allowed,
        applied,
        outcome,
    }
}

fn unchecked(key: &str, mode: OnStoreError) -> QuotaOutcome {
    QuotaOutcome {
        descriptor: key.to_string(),
        name: None,
        limit: 0,
        window_seconds: 0,
        remaining: 0,
        reset_seconds: 0,
        retry_after_seconds: (mode == OnStoreError::Deny).then_some(1),
        shadow_exceeded: Vec::new(),
        degraded: Some(mode),
        cost_too_large: None,
    }
}
