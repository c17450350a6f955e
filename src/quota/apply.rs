//! From descriptors to a quota verdict: finds the limit of each descriptor
//! (dropping `unlimited` and replaced ones), charges them all at once, and
//! picks the limit that decided, for headers. Shared by the RLS adapter and
//! the in-Check quota stage so both answer the same way.

use super::config::{counter_key, QuotaConfig, QuotaLimit};
use super::{Charge, Enforced, LimitState, OnStoreError, Quotas};
pub use crate::decision::quota::QuotaOutcome;

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
