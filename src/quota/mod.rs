//! Quotas: limits per descriptor (user, org, app, model, ...), checked and
//! charged all-or-nothing with a cost, in one of two stores behind one
//! trait. Serving quotas to Envoy is `rls.rs`'s job and to ext_authz the
//! pipeline's; this module knows no wire format.
//!
//! Why all-or-nothing: a request that one limit refuses must not eat the
//! quota of the others, or a client throttled on one model loses its org's
//! budget too.

pub mod apply;
pub mod check;
pub mod config;
pub mod gcra;
pub mod local;
pub mod redis;
pub mod settings;

pub use settings::{Counting, QuotaSettings, QuotaStoreKind, RlsHeaders};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::time::SystemClock;

pub use config::{QuotaConfig, QuotaLimit};
use gcra::Rate;

/// One limit that applies to a request, and what it charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The counter's key: domain and descriptor entries, e.g.
    /// `ml_api|user=alice`.
    pub key: String,
    /// The limit's rate and burst.
    pub rate: Rate,
    /// Units to charge (0: check only).
    pub cost: u64,
    /// Shadow mode: reported, never limits.
    pub shadow: bool,
    /// envoyproxy/ratelimit's `quota_mode`: when over, refuses only if
    /// every quota-mode charge of the request is over.
    pub quota: bool,
    /// A charge for work already done: recorded even when it does not fit
    /// (for GCRA, the theoretical arrival time moves past `now + burst`),
    /// so later calls are refused until the budget recovers.
    pub post_hoc: bool,
    /// `Some`: counted in envoyproxy/ratelimit's fixed windows instead of
    /// by GCRA (`rate` is then unused).
    pub window: Option<FixedWindow>,
}

impl Charge {
    /// A plain GCRA charge of `cost` against `key` (no shadow, quota or
    /// post-hoc mode).
    pub fn gcra(key: impl Into<String>, rate: Rate, cost: u64) -> Charge {
        Charge {
            key: key.into(),
            rate,
            cost,
            shadow: false,
            quota: false,
            post_hoc: false,
            window: None,
        }
    }

    /// True when this charge is recorded whatever the verdict: fixed
    /// windows count refused hits (as envoyproxy/ratelimit does), and a
    /// post-hoc charge records work already done.
    pub fn always_recorded(&self) -> bool {
        self.window.is_some() || self.post_hoc
    }
}

/// One fixed window of envoyproxy/ratelimit: `limit` units per
/// `window_us`, windows aligned to multiples of `window_us` since the Unix
/// epoch; every hit is counted, refused or not, and a charge is over when
/// the count after it exceeds `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindow {
    /// The window, microseconds.
    pub window_us: u64,
    /// Units per window.
    pub limit: u64,
}

impl FixedWindow {
    /// The start of the window holding `now_us`.
    pub fn start(&self, now_us: u64) -> u64 {
        now_us - now_us % self.window_us.max(1)
    }
}

/// Whether a request passes, given each charge and whether it is over:
/// every enforced (not shadow, not quota-mode) charge fits, and if there
/// are quota-mode charges at least one of them fits (envoyproxy/ratelimit:
/// OVER_LIMIT "iff at least one rate limit descriptor is over the limit or
/// all quota descriptors are over the limit").
pub fn passes<'a>(verdicts: impl Iterator<Item = (&'a Charge, bool)>) -> bool {
    let (mut quotas, mut quota_fits) = (false, false);
    for (c, over) in verdicts {
        if c.shadow {
            continue;
        }
        if c.quota {
            quotas = true;
            quota_fits |= !over;
        } else if over {
            return false;
        }
    }
    !quotas || quota_fits
}

/// The state of one limit after a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The charge did not fit (for a shadow limit: would not have fitted).
    pub over: bool,
    /// Units left.
    pub remaining: u64,
    /// Microseconds until the bucket is full again.
    pub reset_us: u64,
    /// When over: microseconds until the charge would fit.
    pub retry_us: u64,
}

/// The answer to one atomic check-and-charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charged {
    /// Every non-shadow limit fitted, and all were charged. When false,
    /// nothing was charged.
    pub allowed: bool,
    /// One state per charge, in order.
    pub states: Vec<LimitState>,
}

/// A store failed to answer (unreachable, timed out, errored).
#[derive(Debug, Clone, thiserror::Error)]
#[error("quota store {store}: {message}")]
pub struct StoreError {
    /// Which store.
    pub store: &'static str,
    /// What happened (for operators; never sent to clients).
    pub message: String,
}

/// A quota store: one atomic check-and-charge over a set of limits.
#[tonic::async_trait]
pub trait QuotaStore: Send + Sync + std::fmt::Debug {
    /// Checks every charge; if every non-shadow one fits, charges them all
    /// (and shadow ones that fit), else charges none.
    async fn charge(&self, charges: &[Charge]) -> Result<Charged, StoreError>;
    /// The store's name for logs (`local`, `redis`).
    fn name(&self) -> &'static str;
    /// Checks that the store answers (readiness). In-process stores always do.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

pub use crate::decision::quota::OnStoreError;

/// The result of charging through [`Quotas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforced {
    /// The store (or the local fallback) answered.
    Charged {
        /// The answer.
        charged: Charged,
        /// Set when the answer came from the degraded mode (`local`).
        degraded: Option<OnStoreError>,
    },
    /// The store failed and the mode is `allow`: let through, uncounted.
    AllowedUnchecked,
    /// The store failed and the mode is `deny`.
    Unavailable,
}

/// The configured quota enforcement: a store, its timeout, and what to do
/// when it fails.
#[derive(Debug)]
pub struct Quotas {
    store: Arc<dyn QuotaStore>,
    timeout: Duration,
    on_error: OnStoreError,
    fallback: local::LocalStore,
    replicas: u64,
    degraded: AtomicU64,
    /// Store calls that failed or timed out.
    store_errors: AtomicU64,
    /// Microseconds after `started` before which the store is not asked
    /// (set after a failure), so that a hanging store costs one timeout per
    /// back-off period instead of one per request.
    backoff_until_us: AtomicU64,
    /// When the last failure warning was logged (microseconds after
    /// `started`): at most one a second, whatever the request rate.
    warned_at_us: AtomicU64,
    started: std::time::Instant,
    counting: Counting,
    rls_headers: RlsHeaders,
}

/// After a store failure, decide in the degraded mode without asking the
/// store for this long; the first request after it tries the store again.
pub const STORE_BACKOFF: Duration = Duration::from_millis(250);

impl Quotas {
    /// Enforcement through `store`; failures handled per `on_error`.
    pub fn new(
        store: Arc<dyn QuotaStore>,
        timeout: Duration,
        on_error: OnStoreError,
        replicas: u64,
        max_local_keys: usize,
    ) -> Quotas {
        Quotas {
            store,
            timeout,
            on_error,
            fallback: local::LocalStore::new(max_local_keys, Arc::new(SystemClock)),
            replicas: replicas.max(1),
            degraded: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            backoff_until_us: AtomicU64::new(0),
            warned_at_us: AtomicU64::new(0),
            started: std::time::Instant::now(),
            counting: Counting::Gcra,
            rls_headers: RlsHeaders::default(),
        }
    }

    /// The same enforcement counting `counting`'s way.
    pub fn with_counting(mut self, counting: Counting) -> Quotas {
        self.counting = counting;
        self
    }

    /// The same enforcement with these RLS response headers.
    pub fn with_rls_headers(mut self, headers: RlsHeaders) -> Quotas {
        self.rls_headers = headers;
        self
    }

    /// How limits count (`quotas.counting`).
    pub fn counting(&self) -> Counting {
        self.counting
    }

    /// Which rate-limit headers RLS answers carry (`quotas.rls_headers`).
    pub fn rls_headers(&self) -> &RlsHeaders {
        &self.rls_headers
    }

    /// In-process quotas only (the default, and offline `check`).
    pub fn in_process(max_keys: usize) -> Quotas {
        let store = Arc::new(local::LocalStore::new(max_keys, Arc::new(SystemClock)));
        Quotas::new(
            store,
            Duration::from_millis(10),
            OnStoreError::Deny,
            1,
            max_keys,
        )
    }

    /// The store's name.
    pub fn store_name(&self) -> &'static str {
        self.store.name()
    }

    /// The configured failure mode.
    pub fn on_error(&self) -> OnStoreError {
        self.on_error
    }

    /// Asks the store whether it answers, bounded (for readiness; at least
    /// half a second, so a busy machine is not mistaken for a dead store).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let budget = self.timeout.max(Duration::from_millis(500));
        match tokio::time::timeout(budget, self.store.ping()).await {
            Ok(result) => result,
            Err(_) => Err(StoreError {
                store: self.store.name(),
                message: format!("no answer to PING within {} ms", budget.as_millis()),
            }),
        }
    }

    /// Store calls that failed or timed out since start.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed)
    }

    /// Decisions taken in a degraded mode since start.
    pub fn degraded_decisions(&self) -> u64 {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Checks and charges, bounded by the timeout; a store failure maps here,
    /// in exactly one place, to the configured behaviour.
    pub async fn enforce(&self, charges: &[Charge]) -> Enforced {
        if charges.is_empty() {
            return Enforced::Charged {
                charged: Charged {
                    allowed: true,
                    states: Vec::new(),
                },
                degraded: None,
            };
        }
        let now_us = |q: &Quotas| q.started.elapsed().as_micros() as u64;
        if now_us(self) >= self.backoff_until_us.load(Ordering::Relaxed) {
            let error = match tokio::time::timeout(self.timeout, self.store.charge(charges)).await {
                Ok(Ok(charged)) => {
                    return Enforced::Charged {
                        charged,
                        degraded: None,
                    }
                }
                Ok(Err(e)) => e,
                Err(_) => StoreError {
                    store: self.store.name(),
                    message: format!("no answer within {} ms", self.timeout.as_millis()),
                },
            };
            self.store_errors.fetch_add(1, Ordering::Relaxed);
            let now = now_us(self);
            self.backoff_until_us
                .store(now + STORE_BACKOFF.as_micros() as u64, Ordering::Relaxed);
            let last = self.warned_at_us.load(Ordering::Relaxed);
            if (last == 0 || now.saturating_sub(last) >= 1_000_000)
                && self
                    .warned_at_us
                    .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    target: "portcullis::quota",
                    error = %error,
                    mode = self.on_error.as_str(),
                    backoff_ms = STORE_BACKOFF.as_millis() as u64,
                    degraded_decisions = self.degraded.load(Ordering::Relaxed) + 1,
                    "quota store failed; deciding in degraded mode (logged at most once a second)"
                );
            }
        }
        self.degraded.fetch_add(1, Ordering::Relaxed);
        match self.on_error {
            OnStoreError::Deny => Enforced::Unavailable,
            OnStoreError::Allow => Enforced::AllowedUnchecked,
            OnStoreError::Local => {
                let scaled: Vec<Charge> = charges
                    .iter()
                    .map(|c| Charge {
                        rate: scale(c.rate, self.replicas),
                        window: c.window.map(|w| FixedWindow {
                            limit: (w.limit / self.replicas).max(1),
                            ..w
                        }),
                        ..c.clone()
                    })
                    .collect();
                let charged = self
                    .fallback
                    .charge_now(&scaled)
                    .expect("the in-process store does not fail");
                Enforced::Charged {
                    charged,
                    degraded: Some(OnStoreError::Local),
                }
            }
        }
    }
}

/// A rate divided among `replicas` processes that each enforce it alone.
fn scale(rate: Rate, replicas: u64) -> Rate {
    if replicas <= 1 {
        return rate;
    }
    let emission_us = rate.emission_us.saturating_mul(replicas);
    let burst = (rate.burst() / replicas).max(1);
    Rate {
        emission_us,
        tolerance_us: emission_us.saturating_mul(burst),
    }
}
