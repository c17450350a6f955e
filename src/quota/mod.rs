//! Quotas: limits per descriptor (user, org, app, model, ...), checked and
//! charged all-or-nothing with a cost, in one of two stores behind one
//! trait. Serving quotas to Envoy is `rls.rs`'s job and to ext_authz the
//! pipeline's; this module knows no wire format.
//!
//! Why all-or-nothing: a request that one limit refuses must not eat the
//! quota of the others, or a client throttled on one model loses its org's
//! budget too.

pub mod apply;
pub mod breaker;
pub mod check;
pub mod config;
pub mod enforce;
pub mod gcra;
pub mod local;
pub mod redis;
pub mod reserve;
pub mod settings;
pub mod usage;

pub use settings::{Counting, QuotaSettings, QuotaStoreKind, RlsHeaders};

pub use config::{QuotaConfig, QuotaLimit};
pub use enforce::{Enforced, Quotas, DEFAULT_STALL, DEFAULT_TIMEOUT, STORE_BACKOFF};
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
    /// The failure says the connection itself is gone (refused, reset,
    /// closed, a demoted primary): the store is down, whatever the rate.
    pub gone: bool,
}

/// A quota store: one atomic check-and-charge over a set of limits.
#[tonic::async_trait]
pub trait QuotaStore: Send + Sync + std::fmt::Debug {
    /// Checks every charge; if every non-shadow one fits, charges them all
    /// (and shadow ones that fit), else charges none.
    async fn charge(&self, charges: &[Charge]) -> Result<Charged, StoreError>;
    /// Gives back what an allowed [`QuotaStore::charge`] of `charges`
    /// took (`states` is its answer): for a caller that was answered
    /// otherwise (it gave up waiting, or went away). What is recorded
    /// whatever the verdict (fixed windows, post-hoc charges) stays.
    async fn refund(&self, _charges: &[Charge], _states: &[LimitState]) -> Result<(), StoreError> {
        Ok(())
    }
    /// True for a store across the network, whose answer may be late: its
    /// calls run apart from their callers ([`QuotaStore::submit`], or a
    /// task of their own), bounded for the caller by the timeouts. An
    /// in-process store answers at once.
    fn remote(&self) -> bool {
        false
    }
    /// True when [`QuotaStore::submit`] takes this call: the store has
    /// work of its own that runs it to the end whatever becomes of the
    /// caller (a single Redis: the target's batch). False by default, and
    /// for a Redis Cluster, whose keys may span slots charged one after
    /// the other: the caller then runs [`QuotaStore::charge`] on a task of
    /// its own.
    fn submits(&self, _charges: &[Charge]) -> bool {
        false
    }
    /// Starts charging `charges` on the store's own work (see
    /// [`QuotaStore::submits`]) and gives the answer, with `charges` back,
    /// to `then`. A store that takes no submitted call answers it with a
    /// [`StoreError`] (the default).
    fn submit(&self, charges: Vec<Charge>, then: Completion) {
        then.complete(
            charges,
            Err(StoreError {
                store: self.name(),
                message: "this store takes no submitted charges".into(),
                gone: false,
            }),
        );
    }
    /// The failure domain that holds `key`, as an opaque id: the keys of
    /// one id share a circuit breaker (`breaker.rs`). One for the whole
    /// store by default; a Redis Cluster has one per slot, so a paused or
    /// dead primary sends only the keys it serves to the degraded mode.
    fn shard(&self, _key: &str) -> u64 {
        0
    }
    /// How long the failure domain `shard` (see [`QuotaStore::shard`]) has
    /// been silent: calls outstanding on it and no reply to any of them
    /// since its last reply (or since the oldest send outstanding when none
    /// came since); zero when nothing is outstanding, or when the store
    /// cannot tell (the default). A silence past `quotas.stall_ms` opens
    /// the domain's circuit breaker (`breaker.rs`).
    fn silent_for(&self, _shard: u64) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// The store's name for logs (`local`, `redis`).
    fn name(&self) -> &'static str;
    /// Checks that the store answers (readiness). In-process stores always do.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The body of a [`Completion`]: the charges and the store's answer.
type Then = dyn FnOnce(Vec<Charge>, Result<Charged, StoreError>) + Send + Sync;

/// What a charge started with [`QuotaStore::submit`] does with its
/// answer: called once, with the charges and the store's answer. Dropped
/// without being called (the store's work ended first: its runtime is
/// shutting down), it is called with a [`StoreError`] and no charges, as a
/// caller waiting on a channel would learn that the sender went away.
pub struct Completion {
    store: &'static str,
    then: Option<Box<Then>>,
}

impl Completion {
    /// `then` for a charge on the store named `store` (for the error a
    /// dropped completion reports).
    pub fn new(
        store: &'static str,
        then: impl FnOnce(Vec<Charge>, Result<Charged, StoreError>) + Send + Sync + 'static,
    ) -> Completion {
        Completion {
            store,
            then: Some(Box::new(then)),
        }
    }

    /// Gives `charges` and their `answer` to the completion.
    pub fn complete(mut self, charges: Vec<Charge>, answer: Result<Charged, StoreError>) {
        if let Some(then) = self.then.take() {
            then(charges, answer);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(then) = self.then.take() {
            then(
                Vec::new(),
                Err(StoreError {
                    store: self.store,
                    message: "the charge ended without an answer".into(),
                    gone: false,
                }),
            );
        }
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("store", &self.store)
            .field("called", &self.then.is_none())
            .finish()
    }
}

/// Whether an allowed answer charged this limit (so a refund gives it back).
pub(crate) fn was_charged(c: &Charge, state: &LimitState) -> bool {
    !state.over && c.cost > 0 && !c.always_recorded()
}

pub use crate::decision::quota::OnStoreError;
