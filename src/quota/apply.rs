//! From descriptors to a quota verdict: finds the limit of each descriptor
//! (dropping `unlimited` and replaced ones), charges them all at once, and
//! picks the limit that decided, for headers. Shared by the RLS adapter and
//! the in-Check quota stage so both answer the same way.

use std::sync::Arc;

use smallvec::SmallVec;

use super::config::{counter_key, QuotaConfig, QuotaLimit};
use super::{Charge, Counting, Enforced, FixedWindow, LimitState, OnStoreError, Quotas};
use crate::decision::quota::LimitStatus;
pub use crate::decision::quota::QuotaOutcome;

/// A descriptor's entries: `(key, value)`. A `check:` rule's keys are
/// shared with the configuration; the values are built per request.
pub type Entries = SmallVec<[(Arc<str>, String); 2]>;

/// One descriptor to enforce: its domain, entries and cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The quota domain: shared with the configuration for a `check:`
    /// rule's descriptor, one copy per request for an RLS call's.
    pub domain: Arc<str>,
    /// Entries, `(key, value)`, in order (Envoy's `entries`); up to two
    /// are held inline, without an allocation of their own.
    pub entries: Entries,
    /// Units to charge (0: check only).
    pub cost: u64,
    /// The RLS descriptor's `limit` override (Envoy's `limit` rate-limit
    /// action): `(requests per unit, unit in microseconds)`. Applied instead
    /// of the configured limit when the domain is configured.
    pub limit: Option<(u64, u64)>,
    /// Set for a `check:` rule with `tokens:`: the cost is a reservation,
    /// settled from the response. Its limit is then counted by GCRA, as a
    /// plain charge (neither a fixed window nor post-hoc), so that what is
    /// reserved can be given back exactly.
    pub tokens: Option<std::sync::Arc<super::config::tokens::TokenRule>>,
}

/// Per descriptor: the limit that applied and its state, if any.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The counter's key.
    pub key: String,
    /// The limit, shared with the configuration.
    pub limit: Arc<QuotaLimit>,
    /// Its state after the charge.
    pub state: LimitState,
}

impl From<Applied> for LimitStatus {
    /// Reads the limit the configuration shares: only its name is copied
    /// (and its metadata's `Arc`), not the whole limit.
    fn from(applied: Applied) -> LimitStatus {
        let Applied { limit, state, .. } = applied;
        LimitStatus {
            name: limit.name.clone(),
            requests: limit.requests,
            window_us: limit.window_us,
            shadow: limit.shadow,
            over: state.over,
            remaining: state.remaining,
            reset_us: state.reset_us,
            unlimited: limit.unlimited,
            metadata: limit.metadata.clone(),
        }
    }
}

/// How many descriptors [`apply`]'s working lists hold without allocating.
const INLINE: usize = 4;

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

/// A descriptor's limit and the entries that share a counter
/// (`share_threshold`: entry index, pattern).
type Limited<'c> = (Arc<QuotaLimit>, Vec<(usize, &'c str)>);

/// The limit a descriptor gets: its `limit` override in a configured
/// domain, else the configured one (with the entries that share a counter).
fn limit_of<'c>(config: &'c QuotaConfig, d: &Descriptor) -> Option<Limited<'c>> {
    match d.limit {
        Some((requests, window_us)) => config.has_domain(&d.domain).then(|| {
            (
                Arc::new(QuotaLimit::per_window(requests, window_us)),
                Vec::new(),
            )
        }),
        None => config
            .find(&d.domain, &d.entries)
            .map(|f| (Arc::clone(f.limit), f.shared)),
    }
}

/// The counter key: `share_threshold` entries count under their pattern.
fn key_of(d: &Descriptor, shared: &[(usize, &str)]) -> String {
    if shared.is_empty() {
        return counter_key(&d.domain, &d.entries);
    }
    let mut entries = d.entries.clone();
    for (i, pattern) in shared {
        entries[*i].1 = (*pattern).to_string();
    }
    counter_key(&d.domain, &entries)
}

fn secs_up(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// Finds, charges and judges the limits of `descriptors`.
pub async fn apply(config: &QuotaConfig, quotas: &Quotas, descriptors: &[Descriptor]) -> Verdict {
    // Requests rarely carry more than a few descriptors: the working lists
    // below stay inline (no allocation) up to `INLINE` of them.
    let found: SmallVec<[_; INLINE]> = descriptors.iter().map(|d| limit_of(config, d)).collect();
    // `replaces`: a limit named by another applying limit (unlimited ones
    // included, as in envoyproxy/ratelimit) steps aside.
    let replaced: SmallVec<[&str; INLINE]> = found
        .iter()
        .flatten()
        .flat_map(|(l, _)| l.replaces.iter().map(String::as_str))
        .collect();
    let mut applied: Vec<Option<Applied>> = vec![None; descriptors.len()];
    let mut charges: SmallVec<[Charge; INLINE]> = SmallVec::new();
    let mut index: SmallVec<[usize; INLINE]> = SmallVec::new();
    for (i, (d, l)) in descriptors.iter().zip(&found).enumerate() {
        let Some((l, shared)) = l else { continue };
        if l.unlimited {
            // Never counted; reported as the most a status can say is left.
            applied[i] = Some(Applied {
                key: key_of(d, shared),
                limit: Arc::clone(l),
                state: LimitState {
                    over: false,
                    remaining: u64::MAX,
                    reset_us: 0,
                    retry_us: 0,
                },
            });
            continue;
        }
        if l.name.as_deref().is_some_and(|n| replaced.contains(&n)) {
            continue;
        }
        // Our `burst` has no fixed-window meaning: such a limit stays GCRA,
        // and so does a token reservation (given back exactly when settled).
        let reserved = d.tokens.is_some();
        let fixed =
            quotas.counting() == Counting::FixedWindow && l.burst == l.requests && !reserved;
        charges.push(Charge {
            key: key_of(d, shared),
            rate: l.rate(),
            cost: d.cost,
            shadow: l.shadow,
            quota: l.quota_mode,
            post_hoc: l.post_hoc && !reserved,
            window: fixed.then_some(FixedWindow {
                window_us: l.window_us,
                limit: l.requests,
            }),
        });
        index.push(i);
    }
    let limit_at = |i: usize| Arc::clone(&found[i].as_ref().expect("indexed limits exist").0);
    // A cost larger than an enforced limit's burst can never fit: refuse it
    // as such, charging nothing, rather than with a Retry-After that no
    // amount of waiting would satisfy.
    // (A fixed window counts it, as envoyproxy/ratelimit does; a post-hoc
    // charge records work already done.)
    if let Some(pos) = charges
        .iter()
        .position(|c| !c.shadow && !c.always_recorded() && c.cost > c.rate.burst())
    {
        let (i, c) = (index[pos], &charges[pos]);
        let limit = limit_at(i);
        let outcome = QuotaOutcome {
            descriptor: c.key.clone(),
            name: limit.name.clone(),
            stats_key: stats_key(config, &descriptors[i], &limit),
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
            key: c.key.clone(),
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
            // Refused uncounted: each enforced limit reports the refusal
            // (0 left, retry in a second as `Retry-After` says), so that a
            // descriptor's status agrees with the answer; a shadow one
            // still reports OK (`shadow` never limits).
            let outcome = unchecked(&charges[0].key, OnStoreError::Deny);
            for (&i, c) in index.iter().zip(charges) {
                applied[i] = Some(Applied {
                    key: c.key,
                    limit: limit_at(i),
                    state: LimitState {
                        over: true,
                        remaining: 0,
                        reset_us: 0,
                        retry_us: 1_000_000,
                    },
                });
            }
            return Verdict {
                allowed: false,
                applied,
                outcome: Some(outcome),
            };
        }
    };
    // Each charge's key moves into its `Applied`; what follows reads them
    // there (a charge's `shadow` is its limit's).
    for ((&i, state), c) in index.iter().zip(&charged.states).zip(charges) {
        applied[i] = Some(Applied {
            key: c.key,
            limit: limit_at(i),
            state: *state,
        });
    }
    let charged_limits = || {
        index
            .iter()
            .filter_map(|&i| applied[i].as_ref().map(|a| (i, a)))
    };
    // The limit that decided: the refusing one with the longest wait, or on
    // an allow the enforced one with the least left.
    let deciding = if charged.allowed {
        charged_limits()
            .filter(|(_, a)| !a.limit.shadow)
            .min_by_key(|(_, a)| a.state.remaining)
    } else {
        charged_limits()
            .filter(|(_, a)| !a.limit.shadow && a.state.over)
            .max_by_key(|(_, a)| a.state.retry_us)
    };
    let shadow_exceeded = charged_limits()
        .filter(|(_, a)| a.limit.shadow && a.state.over)
        .map(|(_, a)| a.key.clone())
        .collect::<Vec<_>>();
    for key in &shadow_exceeded {
        tracing::info!(target: "portcullis::quota", descriptor = %key, "shadow-mode limit would have refused");
    }
    let outcome = deciding.map(|(i, a)| QuotaOutcome {
        descriptor: a.key.clone(),
        name: a.limit.name.clone(),
        stats_key: stats_key(config, &descriptors[i], &a.limit),
        limit: a.limit.burst,
        window_seconds: a.limit.window_seconds(),
        remaining: a.state.remaining,
        reset_seconds: secs_up(a.state.reset_us),
        retry_after_seconds: (!charged.allowed).then(|| secs_up(a.state.retry_us).max(1)),
        shadow_exceeded,
        degraded,
        cost_too_large: None,
    });
    Verdict {
        allowed: charged.allowed,
        applied,
        outcome,
    }
}

/// envoyproxy/ratelimit's statistics key for `limit` as `d` reached it.
fn stats_key(config: &QuotaConfig, d: &Descriptor, limit: &QuotaLimit) -> String {
    if d.limit.is_some() || !limit.stats_from_request {
        return limit.path.to_string();
    }
    config
        .stats_key(&d.domain, &d.entries)
        .unwrap_or_else(|| limit.path.to_string())
}

fn unchecked(key: &str, mode: OnStoreError) -> QuotaOutcome {
    QuotaOutcome {
        descriptor: key.to_string(),
        name: None,
        stats_key: String::new(),
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
