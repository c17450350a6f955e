//! Token reservations: what a `Check` reserved on each token limit (keyed
//! by the gateway's request id), and settling it when the response says
//! what was used: the difference given back, or the excess charged past
//! the limit. Settling is idempotent per request and per limit; a
//! reservation nobody settles expires and is settled by its rule.
//!
//! Two stores behind one trait: in process (a map under one lock, which
//! also applies the settlement to the in-process counters, so a settlement
//! happens exactly once) and Redis (`reserve/redis.rs`: per-limit entries
//! next to each counter, settled by a script that deletes the entry and
//! applies the difference in one step; a record per request with its own
//! TTL; a sorted set by expiry that replicas claim from atomically).

pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::config::tokens::OnMissingUsage;
use super::local::LocalStore;
use super::usage::Usage;
use super::StoreError;
use crate::time::Clock;

/// A reservation record outlives its expiry by this much, so that a
/// replica's sweeper still finds it after a pause.
pub const RECORD_GRACE_MS: u64 = 10 * 60 * 1000;

/// One request's reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The gateway's request id (Envoy's `x-request-id`).
    pub request_id: String,
    /// The decision that made it.
    pub decision_id: String,
    /// The route it was made on.
    pub route: String,
    /// How long it may stay open, milliseconds.
    pub ttl_ms: u64,
    /// When it expires, Unix milliseconds (as the reserving replica saw it).
    pub expires_at_ms: u64,
    /// One per token limit charged.
    pub limits: Vec<ReservedLimit>,
}

/// What one token limit holds for a request, and how to settle it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedLimit {
    /// The counter's key.
    pub key: String,
    /// The limit's name, if configured (for records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// GCRA: microseconds per unit.
    pub emission_us: u64,
    /// Tokens reserved (the estimate).
    pub reserved: u64,
    /// Pointers summed into the tokens used (empty: OpenAI's `usage`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<String>,
    /// What a response without usage settles with.
    pub on_missing: OnMissingUsage,
}

impl Reservation {
    /// Tokens reserved over all limits.
    pub fn total(&self) -> u64 {
        self.limits.iter().map(|l| l.reserved).sum()
    }

    /// Every pointer a response must be read at.
    pub fn pointers(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .limits
            .iter()
            .flat_map(|l| l.usage.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Short form for records, as the decision's: `1008 tokens (tokens
    /// 1008), ttl 600s`.
    pub fn summary(&self) -> String {
        let each: Vec<String> = self
            .limits
            .iter()
            .map(|l| format!("{} {}", l.name.as_deref().unwrap_or(&l.key), l.reserved))
            .collect();
        format!(
            "{} tokens ({}), ttl {}s",
            self.total(),
            each.join(", "),
            self.ttl_ms.div_ceil(1000)
        )
    }
}

/// Why a reservation settles without usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The response ended without saying (no `usage`).
    NoUsage,
    /// The upstream answered with an error status (4xx, 5xx).
    UpstreamError,
    /// The response did not end: the client, the gateway or the ext_proc
    /// stream went away first.
    Broken,
    /// Nobody settled it within its TTL (a replica died, a response never
    /// reached ext_proc).
    Expired,
}

impl Missing {
    /// The name in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Missing::NoUsage => "no_usage",
            Missing::UpstreamError => "upstream_error",
            Missing::Broken => "broken",
            Missing::Expired => "expired",
        }
    }
}

/// What the response says, for settling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'u> {
    /// The usage the response reported (each limit reads its pointers; a
    /// limit whose pointers are not all there settles as `NoUsage`).
    Usage(&'u Usage),
    /// No usage, for this reason.
    Missing(Missing),
}

/// What settling did to one limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettled {
    /// The counter's key.
    pub key: String,
    /// Tokens it held.
    pub reserved: u64,
    /// Tokens it now counts.
    pub charged: u64,
    /// `Some`: settled without usage, for this reason.
    pub missing: Option<Missing>,
}

/// The tokens each limit of `r` settles at, given `outcome`: the usage at
/// its pointers, else its `on_missing` rule; with why it was missing.
pub fn targets(r: &Reservation, outcome: &Outcome<'_>) -> Vec<(u64, Option<Missing>)> {
    r.limits
        .iter()
        .map(|l| {
            let (used, why) = match outcome {
                Outcome::Usage(u) => (u.tokens(&l.usage), Missing::NoUsage),
                Outcome::Missing(why) => (None, *why),
            };
            match used {
                Some(n) => (n, None),
                None => (
                    match l.on_missing {
                        OnMissingUsage::KeepEstimate => l.reserved,
                        OnMissingUsage::Release => 0,
                        OnMissingUsage::Charge(n) => n,
                    },
                    Some(why),
                ),
            }
        })
        .collect()
}

/// What settling did, per limit still open (limits another replica or the
/// sweeper settled first are left out).
pub fn settled(
    r: &Reservation,
    targets: &[(u64, Option<Missing>)],
    held: &[Option<u64>],
) -> Vec<LimitSettled> {
    r.limits
        .iter()
        .zip(targets)
        .zip(held)
        .filter_map(|((l, (target, missing)), held)| {
            held.map(|reserved| LimitSettled {
                key: l.key.clone(),
                reserved,
                charged: *target,
                missing: *missing,
            })
        })
        .collect()
}

/// Short form of a settlement for records: `used 300 of 1008 reserved
/// (708 returned)`, `kept 1008 reserved (broken)`, `already settled`.
pub fn settlement_summary(limits: &[LimitSettled]) -> String {
    let Some(first) = limits.first() else {
        return "already settled".into();
    };
    let reserved: u64 = limits.iter().map(|l| l.reserved).sum();
    let charged: u64 = limits.iter().map(|l| l.charged).sum();
    let moved = if charged <= reserved {
        format!("{} returned", reserved - charged)
    } else {
        format!("{} charged past the estimate", charged - reserved)
    };
    match first.missing {
        None => format!("used {charged} of {reserved} reserved ({moved})"),
        Some(why) => format!(
            "settled at {charged} of {reserved} reserved without usage ({}; {moved})",
            why.as_str()
        ),
    }
}

/// A reservation store call bounded by the quota deadline (at least half
/// a second: settling is off the request's critical path).
async fn bounded<T>(
    quotas: &super::Quotas,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let limit = quotas.timeout().max(std::time::Duration::from_millis(500));
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(StoreError {
            store: "reservations",
            message: format!("no answer within {} ms", limit.as_millis()),
            gone: false,
        })
    })
}

/// What recording a reservation did ([`super::Quotas::reserve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded: the response settles it, or its expiry does.
    Yes,
    /// No reservation store: the estimate stays charged.
    NoStore,
    /// An open reservation already holds the request id (a request id used
    /// twice while its first request is open): nothing was written, the
    /// open one is kept. The response of this request could not be told
    /// from the first one's (ext_proc finds a reservation by request id).
    RequestIdInUse,
}

impl super::Quotas {
    /// Records a reservation whose amounts were charged, unless an open
    /// reservation holds its request id already (the check and the write
    /// are one step in either store).
    pub async fn reserve(&self, r: &Reservation) -> Result<Recorded, StoreError> {
        match self.reservations() {
            None => Ok(Recorded::NoStore),
            Some(store) => bounded(self, store.reserve(r))
                .await
                .map(|written| match written {
                    true => Recorded::Yes,
                    false => Recorded::RequestIdInUse,
                }),
        }
    }

    /// The open reservation of a request.
    pub async fn reservation(&self, request_id: &str) -> Result<Option<Reservation>, StoreError> {
        match self.reservations() {
            None => Ok(None),
            Some(store) => bounded(self, store.get(request_id)).await,
        }
    }

    /// Settles `r` by what the response says; what each limit still open
    /// held and now counts.
    pub async fn settle(
        &self,
        r: &Reservation,
        outcome: &Outcome<'_>,
    ) -> Result<Vec<LimitSettled>, StoreError> {
        let Some(store) = self.reservations() else {
            return Ok(Vec::new());
        };
        let targets = targets(r, outcome);
        let amounts: Vec<u64> = targets.iter().map(|(t, _)| *t).collect();
        let held = bounded(self, store.settle(r, &amounts)).await?;
        Ok(settled(r, &targets, &held))
    }

    /// Claims up to `n` expired reservations for this replica to settle.
    pub async fn claim_expired(&self, n: usize) -> Result<Vec<Reservation>, StoreError> {
        match self.reservations() {
            None => Ok(Vec::new()),
            Some(store) => bounded(self, store.claim_expired(n)).await,
        }
    }
}

/// Where reservations live.
#[tonic::async_trait]
pub trait ReservationStore: Send + Sync + std::fmt::Debug {
    /// Records `r` (its per-limit amounts were charged already); `false`,
    /// writing nothing, when an open reservation holds `r.request_id`
    /// (checked and written in one step, so of two at once one loses).
    async fn reserve(&self, r: &Reservation) -> Result<bool, StoreError>;
    /// The open reservation of `request_id`, if any.
    async fn get(&self, request_id: &str) -> Result<Option<Reservation>, StoreError>;
    /// Settles `r`, each limit at `targets[i]` tokens: per limit, removes
    /// its entry and applies the difference, in one step, once. Answers
    /// per limit the tokens it held (`None`: already settled, by another
    /// replica, the sweeper or an earlier call).
    async fn settle(
        &self,
        r: &Reservation,
        targets: &[u64],
    ) -> Result<Vec<Option<u64>>, StoreError>;
    /// Up to `n` reservations past their expiry, each handed to exactly one
    /// caller (replica), which settles them.
    async fn claim_expired(&self, n: usize) -> Result<Vec<Reservation>, StoreError>;
}

/// Reservations in process, settled on the in-process counters.
#[derive(Debug)]
pub struct LocalReservations {
    counters: Arc<LocalStore>,
    clock: Arc<dyn Clock>,
    /// Request id -> (reservation, expiry in the clock's microseconds).
    open: Mutex<HashMap<String, (Reservation, u64)>>,
}

impl LocalReservations {
    /// Reservations settled on `counters`, timed by `clock`.
    pub fn new(counters: Arc<LocalStore>, clock: Arc<dyn Clock>) -> LocalReservations {
        LocalReservations {
            counters,
            clock,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Reservations open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Reservation, u64)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[tonic::async_trait]
impl ReservationStore for LocalReservations {
    async fn reserve(&self, r: &Reservation) -> Result<bool, StoreError> {
        let expires = self.clock.now_us() + r.ttl_ms * 1000;
        // One expired but not yet swept still holds its id: the sweeper
        // settles it by its rule first.
        match self.lock().entry(r.request_id.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => Ok(false),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((r.clone(), expires));
                Ok(true)
            }
        }
    }

    async fn get(&self, request_id: &str) -> Result<Option<Reservation>, StoreError> {
        Ok(self.lock().get(request_id).map(|(r, _)| r.clone()))
    }

    async fn settle(
        &self,
        r: &Reservation,
        targets: &[u64],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        // Under one lock: whoever removes the entry applies it, once.
        let mut open = self.lock();
        let Some((held, _)) = open.remove(&r.request_id) else {
            return Ok(vec![None; r.limits.len()]);
        };
        Ok(held
            .limits
            .iter()
            .zip(targets)
            .map(|(l, target)| {
                let delta = *target as i64 - l.reserved as i64;
                self.counters.adjust(&l.key, l.emission_us, delta);
                Some(l.reserved)
            })
            .collect())
    }

    async fn claim_expired(&self, n: usize) -> Result<Vec<Reservation>, StoreError> {
        let now = self.clock.now_us();
        Ok(self
            .lock()
            .values()
            .filter(|(_, expires)| *expires <= now)
            .take(n)
            .map(|(r, _)| r.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::gcra::Rate;
    use crate::quota::Charge;
    use crate::time::ManualClock;

    fn reservation(id: &str, reserved: u64, on_missing: OnMissingUsage) -> Reservation {
        Reservation {
            request_id: id.into(),
            decision_id: "d".into(),
            route: "chat".into(),
            ttl_ms: 1000,
            expires_at_ms: 0,
            limits: vec![ReservedLimit {
                key: "t|user=a".into(),
                name: None,
                emission_us: 1000,
                reserved,
                usage: Vec::new(),
                on_missing,
            }],
        }
    }

    /// 20,000 tokens, refilled at one per second (nothing refills in a test).
    fn rate() -> Rate {
        Rate {
            emission_us: 1000,
            tolerance_us: 20_000 * 1000,
        }
    }

    fn remaining(store: &LocalStore) -> u64 {
        store
            .charge_now(&[Charge::gcra("t|user=a", rate(), 0)])
            .unwrap()
            .states[0]
            .remaining
    }

    #[tokio::test]
    async fn settling_gives_back_the_difference_once_and_charges_an_excess_past_the_limit() {
        let clock = ManualClock::at(1_000_000_000);
        let counters = Arc::new(LocalStore::new(1024, clock.clone()));
        let res = LocalReservations::new(Arc::clone(&counters), clock.clone());
        for id in ["a", "b"] {
            assert!(
                counters
                    .charge_now(&[Charge::gcra("t|user=a", rate(), 1000)])
                    .unwrap()
                    .allowed
            );
            res.reserve(&reservation(id, 1000, OnMissingUsage::KeepEstimate))
                .await
                .unwrap();
        }
        assert_eq!(remaining(&counters), 18_000);
        let used = Usage::of(&[("/usage/total_tokens", 300)]);
        let a = res.get("a").await.unwrap().unwrap();
        let t = targets(&a, &Outcome::Usage(&used));
        assert_eq!(t, [(300, None)]);
        assert_eq!(res.settle(&a, &[300]).await.unwrap(), [Some(1000)]);
        assert_eq!(remaining(&counters), 18_700);
        // Idempotent: a second settlement (another replica, the sweeper)
        // changes nothing.
        assert_eq!(res.settle(&a, &[300]).await.unwrap(), [None]);
        assert_eq!(remaining(&counters), 18_700);
        // An excess is charged past the limit.
        let b = res.get("b").await.unwrap().unwrap();
        res.settle(&b, &[25_000]).await.unwrap();
        assert_eq!(remaining(&counters), 0);
        assert!(res.is_empty());
    }

    #[tokio::test]
    async fn a_second_reservation_under_an_open_request_id_writes_nothing_and_keeps_the_first() {
        let clock = ManualClock::at(1_000_000_000);
        let counters = Arc::new(LocalStore::new(1024, clock.clone()));
        let res = LocalReservations::new(Arc::clone(&counters), clock.clone());
        let first = reservation("same", 1000, OnMissingUsage::KeepEstimate);
        assert!(res.reserve(&first).await.unwrap());
        let second = Reservation {
            decision_id: "d2".into(),
            ..reservation("same", 10, OnMissingUsage::KeepEstimate)
        };
        assert!(!res.reserve(&second).await.unwrap());
        assert_eq!(res.get("same").await.unwrap(), Some(first.clone()));
        // Once settled, the id is free again.
        res.settle(&first, &[300]).await.unwrap();
        assert!(res.reserve(&second).await.unwrap());
        assert_eq!(res.get("same").await.unwrap(), Some(second));
    }

    #[tokio::test]
    async fn missing_usage_settles_by_the_rule_and_expired_reservations_are_claimed() {
        let r = reservation("a", 1000, OnMissingUsage::Charge(50));
        assert_eq!(
            targets(&r, &Outcome::Missing(Missing::Broken)),
            [(50, Some(Missing::Broken))]
        );
        let r = reservation("a", 1000, OnMissingUsage::Release);
        let nothing = Usage::default();
        assert_eq!(
            targets(&r, &Outcome::Usage(&nothing)),
            [(0, Some(Missing::NoUsage))]
        );
        let r = reservation("a", 1000, OnMissingUsage::KeepEstimate);
        assert_eq!(
            targets(&r, &Outcome::Missing(Missing::Expired)),
            [(1000, Some(Missing::Expired))]
        );
        let clock = ManualClock::at(1_000_000_000);
        let counters = Arc::new(LocalStore::new(1024, clock.clone()));
        let res = LocalReservations::new(counters, clock.clone());
        res.reserve(&r).await.unwrap();
        assert!(res.claim_expired(10).await.unwrap().is_empty());
        clock.advance(std::time::Duration::from_millis(1001));
        assert_eq!(res.claim_expired(10).await.unwrap(), [r]);
    }
}
