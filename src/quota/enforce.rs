//! Enforcing quotas through a store: the deadline a caller waits, the
//! circuit breaker that says when the store is down, the degraded modes,
//! and the hand-off that lets a remote charge complete (or be refunded)
//! when its caller has given up or gone away.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{breaker, local};
use super::{
    Charge, Charged, Completion, Counting, FixedWindow, OnStoreError, QuotaStore, RlsHeaders,
    StoreError,
};
use crate::time::SystemClock;

mod handoff;
mod stall;
use handoff::{refund, refund_later, settle, take, Call, CallerGone, GaveUp, Handoff};

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

impl Enforced {
    /// True when the request was let through.
    fn admitted(&self) -> bool {
        match self {
            Enforced::Charged { charged, .. } => charged.allowed,
            Enforced::AllowedUnchecked => true,
            Enforced::Unavailable => false,
        }
    }
}

/// The configured quota enforcement: a store, its deadline, and what to do
/// when it is down.
///
/// Slow is not down. The deadline (`timeout`) only bounds how long one
/// caller waits. Whether the store is down is the [`breaker`]'s call, one
/// breaker per failure domain (the primary, or each Cluster slot, so one
/// dead primary degrades only its own keys): from the connection's state
/// (lost, refused, read-only), from its silence (calls outstanding and no
/// reply to any of them for `stall`, see [`QuotaStore::silent_for`]; a
/// caller judges it on checks that woke on time, see `enforce/stall.rs`)
/// and from the failure rate over a window. While it is open,
/// decisions are taken in the degraded mode at once, and callers still
/// waiting when it opens are answered at once; the half-open probe's
/// caller is answered in the degraded mode too, without waiting for the
/// probe. A call that
/// reaches its deadline while the store is up (it answers others) is not
/// answered by the degraded mode but refused (see [`Quotas::busy`]), so a
/// queue on a busy store never over-admits; what the store charged for it
/// is refunded.
///
/// A remote store's call runs apart from its caller's future, so that a
/// charge once sent completes (and, in a Cluster, is refunded slot by slot
/// when refused) even when its caller gave up or went away; a charge whose
/// caller was answered otherwise than admitted is then refunded. It runs
/// on the store's own work when the store has some for it (a single
/// Redis: its batch worker, see [`QuotaStore::submit`]), else on a task of
/// its own.
#[derive(Debug)]
pub struct Quotas {
    store: Arc<dyn QuotaStore>,
    timeout: Duration,
    stall: Duration,
    on_error: OnStoreError,
    fallback: Arc<local::LocalStore>,
    replicas: u64,
    health: Arc<Health>,
    counting: Counting,
    rls_headers: RlsHeaders,
    reservations: Option<Arc<dyn super::reserve::ReservationStore>>,
}

/// What the callers and the store's tasks share.
#[derive(Debug)]
struct Health {
    started: std::time::Instant,
    /// One breaker per failure domain of the store (one primary, or one
    /// Cluster slot), with when it last answered.
    shards: breaker::Shards,
    /// Woken when a breaker opens: waiting callers stop waiting.
    opened: tokio::sync::Notify,
    degraded: AtomicU64,
    /// Store calls that failed or reached the deadline.
    store_errors: AtomicU64,
    /// Charges refunded because their caller was answered otherwise.
    refunds: AtomicU64,
    /// When the last failure warning was logged (microseconds after
    /// `started`): at most one a second, whatever the request rate.
    warned_at_us: AtomicU64,
    /// When a breaker's opening was last logged, with the store error that
    /// opened it: at most once a second.
    opened_warned_at_us: AtomicU64,
    /// Store calls under way (their tasks).
    tasks: tokio_util::task::TaskTracker,
}

impl Health {
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Logs (at most once a second) that a circuit breaker opened, and
    /// why: the callers answered meanwhile only see "circuit breaker
    /// open".
    fn opened_by(&self, cause: &dyn std::fmt::Display) {
        if self.once_a_second(&self.opened_warned_at_us) {
            tracing::warn!(
                target: "portcullis::quota",
                cause = %cause,
                "quota store judged down: a circuit breaker opened; calls on its keys are decided in the degraded mode until a probe is answered (logged at most once a second)"
            );
        }
    }

    /// True at most once a second per `last` (microseconds after
    /// `started` of the last true), whatever the rate of calls: whether to
    /// log now.
    fn once_a_second(&self, last: &AtomicU64) -> bool {
        let now = self.now_us();
        let was = last.load(Ordering::Relaxed);
        (was == 0 || now.saturating_sub(was) >= 1_000_000)
            && last
                .compare_exchange(was, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Why a breaker opened on a failure that was neither a lost connection
/// nor a silence (see `breaker::Breaker::failure`), for its log line.
const RATE_OPENED: &str =
    "failures reached half of the window's calls, or the half-open probe failed";

/// The default per-call deadline (`quotas.timeout_ms`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);

/// The default stall threshold (`quotas.stall_ms`): a failure domain with
/// calls outstanding and no reply for this long is down. Under Envoy's
/// default RLS deadline (20 ms, `rate_limit_service` `timeout`) with room
/// for the confirming check and the answer (a paused Redis measured at
/// about 15 ms with 10, 20 ms with 15), so that
/// a paused Redis is answered by the degraded mode within it.
pub const DEFAULT_STALL: Duration = Duration::from_millis(10);

/// While the store is down, decide in the degraded mode without asking it
/// for this long; then one call probes it (the breaker's open period).
pub const STORE_BACKOFF: Duration = breaker::OPEN_FOR;

impl Quotas {
    /// Enforcement through `store`; failures handled per `on_error`.
    /// `timeout` bounds one caller's wait for the store.
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
            stall: DEFAULT_STALL,
            on_error,
            fallback: Arc::new(local::LocalStore::new(
                max_local_keys,
                Arc::new(SystemClock),
            )),
            replicas: replicas.max(1),
            health: Arc::new(Health {
                started: std::time::Instant::now(),
                shards: breaker::Shards::default(),
                opened: tokio::sync::Notify::new(),
                degraded: AtomicU64::new(0),
                store_errors: AtomicU64::new(0),
                refunds: AtomicU64::new(0),
                warned_at_us: AtomicU64::new(0),
                opened_warned_at_us: AtomicU64::new(0),
                tasks: tokio_util::task::TaskTracker::new(),
            }),
            counting: Counting::Gcra,
            rls_headers: RlsHeaders::default(),
            reservations: None,
        }
    }

    /// The same enforcement keeping token reservations in `store` (without
    /// one, a token rule's estimate is charged and kept).
    pub fn with_reservations(mut self, store: Arc<dyn super::reserve::ReservationStore>) -> Quotas {
        self.reservations = Some(store);
        self
    }

    /// Where token reservations live, when they are kept.
    pub fn reservations(&self) -> Option<&Arc<dyn super::reserve::ReservationStore>> {
        self.reservations.as_ref()
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same enforcement judging a failure domain down after `stall`
    /// of silence (calls outstanding, no reply; see
    /// [`QuotaStore::silent_for`]).
    pub fn with_stall(mut self, stall: Duration) -> Quotas {
        self.stall = stall;
        self
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
        let reservations = Arc::new(super::reserve::LocalReservations::new(
            Arc::clone(&store),
            Arc::new(SystemClock),
        ));
        Quotas::new(
            store,
            Duration::from_millis(10),
            OnStoreError::Deny,
            1,
            max_keys,
        )
        .with_reservations(reservations)
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
                gone: false,
            }),
        }
    }

    /// Store calls that failed or timed out since start.
    pub fn store_errors(&self) -> u64 {
        self.health.store_errors.load(Ordering::Relaxed)
    }

    /// Decisions taken in a degraded mode since start.
    pub fn degraded_decisions(&self) -> u64 {
        self.health.degraded.load(Ordering::Relaxed)
    }

    /// Charges given back because their caller was answered otherwise
    /// (gave up waiting, or went away) since start.
    pub fn refunds(&self) -> u64 {
        self.health.refunds.load(Ordering::Relaxed)
    }

    /// True while the store, or a part of it (a Cluster slot), counts as
    /// down (its breaker is open or half-open).
    pub fn store_down(&self) -> bool {
        self.health.shards.any_open()
    }

    /// Waits until every store call under way (and every refund) has
    /// ended.
    pub async fn settled(&self) {
        self.health.tasks.close();
        self.health.tasks.wait().await;
        self.health.tasks.reopen();
    }

    /// Checks and charges; a store failure maps here, in exactly one place,
    /// to the configured behaviour.
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
        if !self.store.remote() {
            return match self.store.charge(charges).await {
                Ok(charged) => Enforced::Charged {
                    charged,
                    degraded: None,
                },
                Err(e) => self.failed(charges, &e),
            };
        }
        let h = &self.health;
        let started_us = h.now_us();
        let shards = charges.iter().map(|c| self.store.shard(&c.key));
        let Some(route) = h.shards.route(shards, started_us) else {
            return self.degrade(charges);
        };
        let route = Arc::new(route);
        let call = Arc::new(Call {
            state: Mutex::new(Handoff::Waiting),
            done: tokio::sync::Notify::new(),
        });
        self.start(charges, &call, &route, started_us);
        let guard = CallerGone {
            call: Arc::clone(&call),
            charges,
            store: &self.store,
            health: &self.health,
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let silent_us = |id| self.store.silent_for(id).as_micros() as u64;
        let mut watch = stall::StallWatch::new(self.stall);
        let why = loop {
            let notified = call.done.notified();
            let opened = h.opened.notified();
            tokio::pin!(notified, opened);
            notified.as_mut().enable();
            opened.as_mut().enable();
            if let Some(answer) = take(&call) {
                break Ok(answer);
            }
            if route.probes() {
                // The probe goes on without its caller, who is answered in
                // the degraded mode at once: a store that is still down
                // must not hold a caller past Envoy's deadline.
                break Err(GaveUp::Probing);
            }
            if route.judged_down() {
                // Judged down meanwhile (by other calls): stop waiting.
                break Err(GaveUp::Down);
            }
            if tokio::time::Instant::now() >= deadline {
                break Err(GaveUp::Deadline);
            }
            if watch.take_stalled() {
                // Silent past the threshold: a stall, down at once.
                if route.open_stalled(h.now_us(), watch.stall_us(), silent_us) {
                    h.opened_by(&format_args!(
                        "no reply to any call for {} ms or more with calls outstanding (quotas.stall_ms)",
                        watch.stall_us() / 1000
                    ));
                    h.opened.notify_waiters();
                }
                if route.any_open() {
                    break Err(GaveUp::Down);
                }
            }
            let check = watch.next_check(route.silent_us(silent_us));
            // One timer for both: the deadline, or the stall check if due
            // first.
            let wake = check.min(deadline);
            tokio::select! {
                _ = notified => {}
                _ = opened => {}
                _ = tokio::time::sleep_until(wake) => {
                    if wake == deadline {
                        // Let the connection hand over what has arrived
                        // before judging.
                        tokio::task::yield_now().await;
                    } else {
                        watch.check(check, || route.silent_us(silent_us)).await;
                    }
                }
            }
        };
        let answer = match why {
            Ok(answer) => answer,
            Err(why) => {
                // Gave up: answered in the degraded mode, unless the answer
                // arrived meanwhile. The decision and the hand-off are one
                // step, so the late answer's task knows whether to refund.
                let mut state = call.lock();
                match std::mem::replace(&mut *state, Handoff::Taken) {
                    Handoff::Answered(answer) => answer,
                    _ => {
                        let mut down = why == GaveUp::Down;
                        if why == GaveUp::Deadline {
                            // A store that answered no call at all while this
                            // one waited has stalled: down. One that answered
                            // others is slow: one failure among its calls.
                            // (Unless this process woke up too late to tell:
                            // then its own backlog may hold the answers.)
                            let now = h.now_us();
                            let late_by =
                                now.saturating_sub(started_us + self.timeout.as_micros() as u64);
                            let excuse = (self.timeout.as_micros() as u64 / 2).max(50_000);
                            let silent = route.silent_since(started_us) && late_by <= excuse;
                            if route.failure(h.now_us(), started_us, silent) {
                                let (sep, why) = if silent {
                                    (", and ", "none to any other call meanwhile")
                                } else {
                                    (": ", RATE_OPENED)
                                };
                                h.opened_by(&format_args!(
                                    "no answer within {} ms{sep}{why}",
                                    self.timeout.as_millis()
                                ));
                                h.opened.notify_waiters();
                            }
                            down = route.any_open();
                        }
                        let e = StoreError {
                            store: self.store.name(),
                            message: match why {
                                GaveUp::Deadline => {
                                    format!("no answer within {} ms", self.timeout.as_millis())
                                }
                                GaveUp::Down | GaveUp::Probing => {
                                    "the store is down (circuit breaker open)".into()
                                }
                            },
                            gone: false,
                        };
                        let decided = if why == GaveUp::Probing {
                            self.degrade(charges)
                        } else if down {
                            self.failed(charges, &e)
                        } else {
                            self.busy(&e)
                        };
                        *state = Handoff::GaveUp {
                            admitted: decided.admitted(),
                        };
                        drop(state);
                        drop(guard);
                        return decided;
                    }
                }
            }
        };
        drop(guard);
        match answer {
            Ok(charged) => Enforced::Charged {
                charged,
                degraded: None,
            },
            Err(e) => self.failed(charges, &e),
        }
    }

    /// Starts the store call for `charges`, which runs to its end whatever
    /// becomes of its caller and then [`settle`]s `call`: on the store's
    /// own work when it has some for it ([`QuotaStore::submit`]: for
    /// Redis, the target's batch), else on a task of its own. The
    /// half-open probe always takes a task, whose wait the deadline bounds
    /// for the breaker's sake.
    fn start(
        &self,
        charges: &[Charge],
        call: &Arc<Call>,
        route: &Arc<breaker::Route>,
        started_us: u64,
    ) {
        let h = &self.health;
        let (store, health, call, route) = (
            Arc::clone(&self.store),
            Arc::clone(h),
            Arc::clone(call),
            Arc::clone(route),
        );
        if !route.probes() && store.submits(charges) {
            // `settled` waits for the completion as for a task.
            let token = h.tasks.token();
            let then = Completion::new(store.name(), {
                let store = Arc::clone(&store);
                move |charges, result| {
                    if let Some(charged) = settle(&route, &health, &call, started_us, result) {
                        refund_later(&store, &health, charges, charged);
                    }
                    drop(token);
                }
            });
            store.submit(charges.to_vec(), then);
            return;
        }
        let (charges, timeout) = (charges.to_vec(), self.timeout);
        h.tasks.spawn(async move {
            let charge = store.charge(&charges);
            let now = || health.now_us();
            let result = route.bounded(charge, timeout, now, &health.opened).await;
            if let Some(charged) = settle(&route, &health, &call, started_us, result) {
                refund(&*store, &health, &charges, &charged).await;
            }
        });
    }

    /// A store call failed: counted, logged (at most once a second), and
    /// decided in the degraded mode.
    fn failed(&self, charges: &[Charge], error: &StoreError) -> Enforced {
        let h = &self.health;
        h.store_errors.fetch_add(1, Ordering::Relaxed);
        if h.once_a_second(&h.warned_at_us) {
            tracing::warn!(
                target: "portcullis::quota",
                error = %error,
                mode = self.on_error.as_str(),
                store_down = h.shards.any_open(),
                degraded_decisions = h.degraded.load(Ordering::Relaxed) + 1,
                "quota store failed; deciding in degraded mode (logged at most once a second)"
            );
        }
        self.degrade(charges)
    }

    /// A call that reached its deadline while the store is up (slow, not
    /// down): the degraded mode is not for it, since in-process counts
    /// cannot see what the shared store has admitted. It is refused as
    /// `deny` refuses (retry after a second), unless the mode is `allow`,
    /// which lets it through unchecked as it would any call. What the
    /// store charged for it is refunded when its answer comes.
    fn busy(&self, error: &StoreError) -> Enforced {
        let h = &self.health;
        h.store_errors.fetch_add(1, Ordering::Relaxed);
        h.degraded.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "portcullis::quota", error = %error, "quota store slow; call refused without the degraded mode");
        match self.on_error {
            OnStoreError::Allow => Enforced::AllowedUnchecked,
            OnStoreError::Deny | OnStoreError::Local => Enforced::Unavailable,
        }
    }

    /// The decision of the degraded mode.
    fn degrade(&self, charges: &[Charge]) -> Enforced {
        self.health.degraded.fetch_add(1, Ordering::Relaxed);
        match self.on_error {
            OnStoreError::Deny => Enforced::Unavailable,
            OnStoreError::Allow => Enforced::AllowedUnchecked,
            OnStoreError::Local => {
                let scaled: Vec<Charge> = charges
                    .iter()
                    .map(|c| Charge {
                        rate: c.rate.divided(self.replicas),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::gcra::Rate;
    use crate::quota::LimitState;
    use std::sync::atomic::AtomicU32;

    /// A remote store that answers "allowed" after a delay per key
    /// (`slow`: `delay`, else at once; `hang`: never), counting refunds,
    /// and telling how long it has been silent. With `submits`, its calls
    /// run on work of its own ([`QuotaStore::submit`]), as Redis's batches
    /// do; then a `drop` key's completion is dropped uncalled.
    #[derive(Debug)]
    struct Fake {
        delay: Duration,
        submits: bool,
        refunds: AtomicU32,
        silence: Arc<breaker::Silence>,
        epoch: std::time::Instant,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake {
                delay: Duration::ZERO,
                submits: false,
                refunds: AtomicU32::new(0),
                silence: Arc::default(),
                epoch: std::time::Instant::now(),
            }
        }
    }

    impl Fake {
        fn new(delay_ms: u64, submits: bool) -> Fake {
            Fake {
                delay: Duration::from_millis(delay_ms),
                submits,
                ..Fake::default()
            }
        }
    }

    /// The fake's answer to `charges`, its silence noted against `epoch`.
    async fn answer(
        silence: &breaker::Silence,
        epoch: std::time::Instant,
        delay: Duration,
        charges: &[Charge],
    ) -> Result<Charged, StoreError> {
        let now_us = || epoch.elapsed().as_micros() as u64;
        silence.sent(now_us());
        match charges[0].key.as_str() {
            "slow" => tokio::time::sleep(delay).await,
            "hang" => std::future::pending::<()>().await,
            _ => {}
        }
        silence.ended(now_us(), true);
        Ok(Charged {
            allowed: true,
            states: vec![
                LimitState {
                    over: false,
                    remaining: 1,
                    reset_us: 0,
                    retry_us: 0,
                };
                charges.len()
            ],
        })
    }

    #[tonic::async_trait]
    impl QuotaStore for Fake {
        async fn charge(&self, charges: &[Charge]) -> Result<Charged, StoreError> {
            answer(&self.silence, self.epoch, self.delay, charges).await
        }
        fn submits(&self, _: &[Charge]) -> bool {
            self.submits
        }
        fn submit(&self, charges: Vec<Charge>, then: Completion) {
            if charges[0].key == "drop" {
                drop(then);
                return;
            }
            let (silence, epoch, delay) = (Arc::clone(&self.silence), self.epoch, self.delay);
            tokio::spawn(async move {
                let answer = answer(&silence, epoch, delay, &charges).await;
                then.complete(charges, answer);
            });
        }
        async fn refund(&self, _: &[Charge], _: &[LimitState]) -> Result<(), StoreError> {
            self.refunds.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn remote(&self) -> bool {
            true
        }
        fn silent_for(&self, _: u64) -> Duration {
            let now_us = self.epoch.elapsed().as_micros() as u64;
            Duration::from_micros(self.silence.silent_us(now_us))
        }
        fn name(&self) -> &'static str {
            "fake"
        }
    }

    fn charge(key: &str) -> Charge {
        Charge::gcra(key, Rate::new(100, 3_600_000_000, 100), 1)
    }

    fn quotas(store: &Arc<Fake>, timeout_ms: u64) -> Quotas {
        Quotas::new(
            Arc::clone(store) as Arc<dyn QuotaStore>,
            Duration::from_millis(timeout_ms),
            OnStoreError::Local,
            3,
            1024,
        )
    }

    #[tokio::test]
    async fn a_late_call_on_a_store_that_answers_others_is_refused_and_refunded() {
        for submits in [false, true] {
            a_late_call_is_refused_and_refunded(submits).await;
        }
    }

    async fn a_late_call_is_refused_and_refunded(submits: bool) {
        let store = Arc::new(Fake::new(300, submits));
        let q = Arc::new(quotas(&store, 50));
        // Other calls keep being answered while the slow one waits.
        let busy = {
            let q = Arc::clone(&q);
            tokio::spawn(async move {
                for _ in 0..40 {
                    q.enforce(&[charge("fast")]).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let r = q.enforce(&[charge("slow")]).await;
        // Not the local fallback (which would admit): refused, store up.
        assert_eq!(r, Enforced::Unavailable, "submits: {submits}");
        assert!(!q.store_down());
        busy.await.unwrap();
        q.settled().await;
        assert_eq!(
            store.refunds.load(Ordering::Relaxed),
            1,
            "submits: {submits}"
        );
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_has_its_charge_refunded() {
        for submits in [false, true] {
            a_caller_gone_is_refunded(submits).await;
        }
    }

    async fn a_caller_gone_is_refunded(submits: bool) {
        let store = Arc::new(Fake::new(50, submits));
        // Slow, alone, and so silent for 50 ms: not a stall at this
        // threshold.
        let q = quotas(&store, 1000).with_stall(Duration::from_secs(1));
        let slow = [charge("slow")];
        let gone = tokio::time::timeout(Duration::from_millis(5), q.enforce(&slow));
        assert!(gone.await.is_err());
        q.settled().await;
        assert_eq!(
            store.refunds.load(Ordering::Relaxed),
            1,
            "submits: {submits}"
        );
        // An answered caller keeps its charge.
        assert!(matches!(
            q.enforce(&[charge("slow")]).await,
            Enforced::Charged { degraded: None, .. }
        ));
        q.settled().await;
        assert_eq!(store.refunds.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_store_silent_for_the_stall_threshold_is_down_long_before_the_deadline() {
        for submits in [false, true] {
            a_silent_store_is_down_before_the_deadline(submits).await;
        }
    }

    async fn a_silent_store_is_down_before_the_deadline(submits: bool) {
        let store = Arc::new(Fake::new(0, submits));
        let q = Arc::new(quotas(&store, 1000));
        // Ten callers wait on the silent store: all are answered by the
        // degraded mode when the first stall check opens the breaker.
        let callers: Vec<_> = (0..10)
            .map(|_| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    (q.enforce(&[charge("hang")]).await, started.elapsed())
                })
            })
            .collect();
        for caller in callers {
            let (r, took) = caller.await.unwrap();
            assert!(
                matches!(
                    r,
                    Enforced::Charged {
                        degraded: Some(OnStoreError::Local),
                        ..
                    }
                ),
                "{r:?}"
            );
            // A functional bound (the deadline is 1 s), not a speed claim.
            assert!(took < Duration::from_millis(200), "{took:?}");
        }
        assert!(q.store_down());
    }

    #[tokio::test]
    async fn a_store_that_answers_nothing_for_a_whole_deadline_is_down() {
        let store = Arc::new(Fake::default());
        // A stall threshold past the deadline: the deadline judges.
        let q = quotas(&store, 20).with_stall(Duration::from_secs(1));
        let r = q.enforce(&[charge("hang")]).await;
        assert!(
            matches!(
                r,
                Enforced::Charged {
                    degraded: Some(OnStoreError::Local),
                    ..
                }
            ),
            "{r:?}"
        );
        assert!(q.store_down());
        // While down: decided at once, the store not asked.
        let started = std::time::Instant::now();
        let r = q.enforce(&[charge("hang")]).await;
        assert!(matches!(
            r,
            Enforced::Charged {
                degraded: Some(_),
                ..
            }
        ));
        assert!(started.elapsed() < Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_submitted_call_whose_store_work_ends_unanswered_fails_at_once() {
        let store = Arc::new(Fake::new(0, true));
        let q = quotas(&store, 1000).with_stall(Duration::from_secs(1));
        let started = std::time::Instant::now();
        let r = q.enforce(&[charge("drop")]).await;
        // A failure, decided in the degraded mode, without waiting for the
        // deadline (1 s): a functional bound, not a speed claim.
        assert!(
            matches!(
                r,
                Enforced::Charged {
                    degraded: Some(OnStoreError::Local),
                    ..
                }
            ),
            "{r:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(q.store_errors(), 1);
        q.settled().await;
        assert_eq!(store.refunds.load(Ordering::Relaxed), 0);
    }
}
