//! When a shared quota store counts as down: a circuit breaker driven by
//! the connection's state and by the failure rate over a window, never by
//! one slow call.
//!
//! - **Closed** (the store is up): every call goes to the store. A call
//!   that fails counts as a failure; so does one that got no answer while
//!   the store answered nothing else either (a stall, see `Quotas`). The
//!   breaker opens when, within one window, at least [`MIN_FAILURES`]
//!   calls failed and they were at least half of the calls; or at once on
//!   a failure that says the connection itself is gone (refused, reset,
//!   closed, a read-only replica).
//! - **Open**: no call goes to the store for [`OPEN_FOR`]; every decision
//!   is taken in the configured degraded mode at once.
//! - **Half-open**: after that, one call (the probe) goes to the store while
//!   the others are still decided in the degraded mode; its success closes
//!   the breaker, its failure opens it again.
//!
//! A store has one breaker per failure domain ([`Shards`]): one for a
//! single Redis primary, one per slot in a Redis Cluster, so that one
//! paused or dead primary sends only the keys it serves to the degraded
//! mode while the other primaries keep answering theirs.
//!
//! A domain that is silent opens its breaker at once: calls are
//! outstanding on it (sent, not answered) and it has sent no reply at all,
//! to any call, for the stall threshold ([`Silence`], measured by the
//! store from its last reply, or from the oldest send outstanding since).
//! A healthy store under a burst keeps replying every few milliseconds and
//! never looks silent, however long its queue; a paused one (connection
//! open, no answer) is judged down within the threshold, not after a
//! whole per-call deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The window over which the failure rate is judged.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Fewer failures than this in a window never open the breaker (unless the
/// connection is gone).
pub const MIN_FAILURES: u32 = 3;
/// How long an open breaker keeps calls off the store before a probe.
pub const OPEN_FOR: Duration = Duration::from_millis(250);

/// What a call may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Ask the store.
    Call,
    /// Ask the store as the half-open probe: its outcome opens or closes.
    Probe,
    /// Do not ask: decide in the degraded mode.
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Closed,
    Open { until_us: u64 },
    HalfOpen,
}

/// Calls and failures of the calls that started in one window.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start_us: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    /// The window calls start in now, and the one before it: a call's
    /// failure counts in the window its call started in (a failure seen
    /// after its deadline belongs to the calls of its time).
    current: Window,
    previous: Window,
}

/// The breaker; times are microseconds on the caller's monotonic clock.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: Mutex::new(State {
                mode: Mode::Closed,
                current: Window::default(),
                previous: Window::default(),
            }),
        }
    }
}

const WINDOW_US: u64 = WINDOW.as_micros() as u64;

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go to the store now.
    pub fn permit(&self, now_us: u64) -> Permit {
        let mut s = self.lock();
        match s.mode {
            Mode::Closed => {
                if now_us.saturating_sub(s.current.start_us) >= WINDOW_US {
                    s.previous = if now_us - s.current.start_us < 2 * WINDOW_US {
                        s.current
                    } else {
                        Window::default()
                    };
                    s.current = Window {
                        start_us: now_us,
                        ..Window::default()
                    };
                }
                s.current.calls = s.current.calls.saturating_add(1);
                Permit::Call
            }
            Mode::Open { until_us } if now_us >= until_us => {
                s.mode = Mode::HalfOpen;
                Permit::Probe
            }
            Mode::Open { .. } | Mode::HalfOpen => Permit::Refuse,
        }
    }

    /// A call (the probe if `probe`) was answered.
    pub fn success(&self, probe: bool) {
        let mut s = self.lock();
        if probe && s.mode == Mode::HalfOpen {
            s.mode = Mode::Closed;
            s.current = Window::default();
            s.previous = Window::default();
        }
    }

    /// A call that started at `started_us` (the probe if `probe`) failed;
    /// `gone`: the failure says the connection itself is gone. True when
    /// this opened the breaker.
    pub fn failure(&self, now_us: u64, started_us: u64, probe: bool, gone: bool) -> bool {
        let mut s = self.lock();
        let open = match s.mode {
            Mode::HalfOpen => probe,
            Mode::Closed => {
                let window = if started_us >= s.current.start_us {
                    Some(&mut s.current)
                } else if s.previous.calls > 0 && started_us >= s.previous.start_us {
                    Some(&mut s.previous)
                } else {
                    None
                };
                let rate = window.is_some_and(|w| {
                    w.failures = w.failures.saturating_add(1);
                    w.failures >= MIN_FAILURES && w.failures * 2 >= w.calls
                });
                gone || rate
            }
            Mode::Open { .. } => false,
        };
        if open {
            s.mode = Mode::Open {
                until_us: now_us + OPEN_FOR.as_micros() as u64,
            };
        }
        open
    }

    /// True while calls are kept off the store (open, or half-open).
    pub fn is_open(&self) -> bool {
        self.lock().mode != Mode::Closed
    }

    /// A probe permitted at `now_us` will not be sent (another breaker of
    /// the same call refused it): the next call probes instead.
    fn release(&self, now_us: u64) {
        let mut s = self.lock();
        if s.mode == Mode::HalfOpen {
            s.mode = Mode::Open { until_us: now_us };
        }
    }
}

/// One failure domain of a store (a Redis primary, or one Cluster slot):
/// its breaker, and when it last answered a call.
#[derive(Debug, Default)]
pub struct Shard {
    breaker: Breaker,
    /// Microseconds on the caller's clock.
    answered_at_us: AtomicU64,
}

/// How long a failure domain has been silent: calls outstanding on it and
/// no reply since the last one (or, when none came since, since the
/// oldest send outstanding). Times are microseconds on the caller's
/// monotonic clock. Kept by the store, which sees sends and replies.
#[derive(Debug, Default)]
pub struct Silence {
    /// Calls outstanding, and the last reply (or the send that started
    /// the silence when nothing was outstanding before it).
    state: Mutex<(u32, u64)>,
}

impl Silence {
    /// A call was sent at `now_us`.
    pub fn sent(&self, now_us: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 == 0 {
            // Idle until now: the silence is counted from this send.
            s.1 = now_us;
        }
        s.0 = s.0.saturating_add(1);
    }

    /// A call sent earlier ended at `now_us`; `replied`: the store sent a
    /// reply (an answer or an error of its own), not a lost connection.
    pub fn ended(&self, now_us: u64, replied: bool) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = s.0.saturating_sub(1);
        if replied {
            s.1 = s.1.max(now_us);
        }
    }

    /// The store showed at `now_us` that it is alive by other means than
    /// a reply to a call (a liveness check on a connection of its own,
    /// see `SharedRedis::witness`): the silence counts from then.
    pub fn alive(&self, now_us: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 = s.1.max(now_us);
    }

    /// How long, at `now_us`, calls have been outstanding without a reply
    /// (microseconds); zero when none is outstanding.
    pub fn silent_us(&self, now_us: u64) -> u64 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 == 0 {
            0
        } else {
            now_us.saturating_sub(s.1)
        }
    }
}

/// The failure domains of one store, each made on its first call (at
/// most one per Cluster slot: 16,384), keyed by the store's opaque
/// shard id (`QuotaStore::shard`).
#[derive(Debug, Default)]
pub struct Shards {
    map: RwLock<HashMap<u64, Arc<Shard>>>,
}

impl Shards {
    fn get(&self, id: u64) -> Arc<Shard> {
        if let Some(s) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Arc::clone(s);
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(id).or_default())
    }

    /// A call to the shards `ids` (repeats allowed) at `now_us`: `None`
    /// when one of their breakers keeps calls off (decide in the degraded
    /// mode), else the call's route, probing every shard whose breaker
    /// asked for a probe.
    pub fn route(&self, ids: impl Iterator<Item = u64>, now_us: u64) -> Option<Route> {
        let mut seen: Vec<u64> = Vec::with_capacity(1);
        let mut route = Route {
            shards: Vec::with_capacity(1),
            ids: Vec::with_capacity(1),
        };
        for id in ids {
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
            let shard = self.get(id);
            let probe = match shard.breaker.permit(now_us) {
                Permit::Call => false,
                Permit::Probe => true,
                Permit::Refuse => {
                    for (s, _) in route.shards.iter().filter(|(_, probe)| *probe) {
                        s.breaker.release(now_us);
                    }
                    return None;
                }
            };
            route.shards.push((shard, probe));
            route.ids.push(id);
        }
        Some(route)
    }

    /// True while any shard keeps calls off its part of the store.
    pub fn any_open(&self) -> bool {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.values().any(|s| s.breaker.is_open())
    }
}

/// The shards one store call goes to, and whether it probes each.
#[derive(Debug)]
pub struct Route {
    shards: Vec<(Arc<Shard>, bool)>,
    /// The shards' ids, in the same order.
    ids: Vec<u64>,
}

impl Route {
    /// True when the call probes one of its shards.
    pub fn probes(&self) -> bool {
        self.shards.iter().any(|(_, probe)| *probe)
    }

    /// The store answered the call at `now_us`.
    pub fn success(&self, now_us: u64) {
        for (s, probe) in &self.shards {
            s.answered_at_us.fetch_max(now_us, Ordering::Relaxed);
            s.breaker.success(*probe);
        }
    }

    /// The call, started at `started_us`, failed (`gone`: the connection
    /// is gone). The failure counts on every shard of the call: a store
    /// error does not say which of a multi-slot call's slots failed. True
    /// when this opened a breaker.
    pub fn failure(&self, now_us: u64, started_us: u64, gone: bool) -> bool {
        let mut opened = false;
        for (s, probe) in &self.shards {
            opened |= s.breaker.failure(now_us, started_us, *probe, gone);
        }
        opened
    }

    /// Awaits the call's store answer `answer`. A probe that has no answer
    /// within `deadline` fails then (its shards open again, `opened` is
    /// notified) while the call goes on, so that a store that never
    /// answers cannot keep a breaker half-open, and a late answer is still
    /// had (and refunded). `now_us` is the breaker's clock.
    pub async fn bounded<T>(
        &self,
        answer: impl std::future::Future<Output = T>,
        deadline: Duration,
        now_us: impl Fn() -> u64,
        opened: &tokio::sync::Notify,
    ) -> T {
        if !self.probes() {
            return answer.await;
        }
        let started_us = now_us();
        tokio::pin!(answer);
        tokio::select! {
            r = &mut answer => return r,
            _ = tokio::time::sleep(deadline) => {}
        }
        if self.failure(now_us(), started_us, false) {
            opened.notify_waiters();
        }
        answer.await
    }

    /// True when a shard this call does not probe keeps calls off (judged
    /// down meanwhile, by other calls): its caller stops waiting.
    pub fn judged_down(&self) -> bool {
        self.shards
            .iter()
            .any(|(s, probe)| !*probe && s.breaker.is_open())
    }

    /// The longest silence (microseconds, see [`Silence`]) among the
    /// shards this call does not probe; `silent_us` gives a shard's by id.
    pub fn silent_us(&self, silent_us: impl Fn(u64) -> u64) -> u64 {
        self.ids
            .iter()
            .zip(&self.shards)
            .filter(|(_, (_, probe))| !*probe)
            .map(|(id, _)| silent_us(*id))
            .max()
            .unwrap_or(0)
    }

    /// Opens, at `now_us`, the breaker of every shard this call does not
    /// probe that has been silent for `stall_us` or more (a stall: down at
    /// once, the others untouched). True when one opened.
    pub fn open_stalled(&self, now_us: u64, stall_us: u64, silent_us: impl Fn(u64) -> u64) -> bool {
        let mut opened = false;
        for (id, (s, probe)) in self.ids.iter().zip(&self.shards) {
            if !*probe && silent_us(*id) >= stall_us {
                opened |= s.breaker.failure(now_us, now_us, false, true);
            }
        }
        opened
    }

    /// True when a shard of the call keeps calls off.
    pub fn any_open(&self) -> bool {
        self.shards.iter().any(|(s, _)| s.breaker.is_open())
    }

    /// True when none of the call's shards answered any call since
    /// `started_us` (a stall, not a queue).
    pub fn silent_since(&self, started_us: u64) -> bool {
        self.shards
            .iter()
            .all(|(s, _)| s.answered_at_us.load(Ordering::Relaxed) < started_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    #[test]
    fn one_slow_call_does_not_open_it() {
        let b = Breaker::default();
        for _ in 0..10 {
            assert_eq!(b.permit(0), Permit::Call);
        }
        assert!(!b.failure(MS, 0, false, false));
        assert!(!b.failure(MS, 0, false, false));
        assert!(!b.is_open());
    }

    #[test]
    fn a_failure_rate_opens_it_and_a_probe_closes_it() {
        let b = Breaker::default();
        for _ in 0..4 {
            assert_eq!(b.permit(0), Permit::Call);
        }
        assert!(!b.failure(MS, 0, false, false));
        assert!(!b.failure(MS, 0, false, false));
        assert!(b.failure(MS, 0, false, false));
        assert_eq!(b.permit(2 * MS), Permit::Refuse);
        let after = MS + OPEN_FOR.as_micros() as u64;
        assert_eq!(b.permit(after), Permit::Probe);
        // One probe at a time.
        assert_eq!(b.permit(after), Permit::Refuse);
        b.success(true);
        assert_eq!(b.permit(after + MS), Permit::Call);
    }

    #[test]
    fn a_lost_connection_opens_it_at_once_and_a_failed_probe_reopens_it() {
        let b = Breaker::default();
        assert_eq!(b.permit(0), Permit::Call);
        assert!(b.failure(0, 0, false, true));
        let after = OPEN_FOR.as_micros() as u64;
        assert_eq!(b.permit(after), Permit::Probe);
        assert!(b.failure(after, after, true, false));
        assert_eq!(b.permit(after + 1), Permit::Refuse);
        assert_eq!(b.permit(2 * after), Permit::Probe);
    }

    #[test]
    fn a_late_failure_counts_among_the_calls_of_its_time() {
        let b = Breaker::default();
        for _ in 0..1000 {
            b.permit(0);
        }
        // A second later one new call starts a window of its own; the
        // burst's stragglers failing now do not make it a failure rate.
        let later = WINDOW.as_micros() as u64 + MS;
        b.permit(later);
        for _ in 0..10 {
            assert!(!b.failure(later, MS, false, false));
        }
        assert!(!b.is_open());
    }

    #[test]
    fn one_shard_down_leaves_the_others_called() {
        let shards = Shards::default();
        let down = shards.route([1].into_iter(), 0).unwrap();
        assert!(down.failure(0, 0, true));
        assert!(shards.route([1].into_iter(), MS).is_none());
        assert!(shards.route([2, 1].into_iter(), MS).is_none());
        let up = shards.route([2].into_iter(), MS).unwrap();
        assert!(!up.probes());
        assert!(shards.any_open());
    }

    #[test]
    fn a_probe_not_sent_is_left_to_the_next_call() {
        let after = OPEN_FOR.as_micros() as u64;
        let shards = Shards::default();
        let one = shards.route([1].into_iter(), 0).unwrap();
        assert!(one.failure(0, 0, true));
        let two = shards.route([2].into_iter(), after - 1).unwrap();
        assert!(two.failure(after - 1, after - 1, true));
        // 1 grants its probe, 2 (opened later) refuses: 1's probe is
        // released, and the next call to 1 alone probes.
        assert!(shards.route([1, 2].into_iter(), after).is_none());
        assert!(shards.route([1].into_iter(), after).unwrap().probes());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_without_an_answer_fails_at_its_deadline() {
        let shards = Shards::default();
        assert!(shards
            .route([1].into_iter(), 0)
            .unwrap()
            .failure(0, 0, true));
        let after = OPEN_FOR.as_micros() as u64;
        let probe = shards.route([1].into_iter(), after).unwrap();
        assert!(probe.probes());
        let opened = tokio::sync::Notify::new();
        let started = tokio::time::Instant::now();
        let clock = || after + started.elapsed().as_micros() as u64;
        let deadline = Duration::from_millis(100);
        // Answers only after three deadlines: the breaker opens again at
        // the first, and the answer is still returned.
        let late = tokio::time::sleep(3 * deadline);
        let answer = probe.bounded(
            async {
                late.await;
                7
            },
            deadline,
            clock,
            &opened,
        );
        assert_eq!(answer.await, 7);
        let at = clock();
        assert!(shards.route([1].into_iter(), at).is_none(), "open again");
        let reopened_at = after + deadline.as_micros() as u64;
        let next = reopened_at + OPEN_FOR.as_micros() as u64;
        assert!(shards.route([1].into_iter(), next).unwrap().probes());
    }

    #[test]
    fn failures_in_an_old_window_are_forgotten() {
        let b = Breaker::default();
        for _ in 0..2 {
            b.permit(0);
            b.failure(0, 0, false, false);
        }
        let later = WINDOW.as_micros() as u64;
        b.permit(later);
        assert!(!b.failure(later, later, false, false));
    }

    #[test]
    fn silence_is_counted_from_the_last_reply_while_calls_are_outstanding() {
        let s = Silence::default();
        assert_eq!(s.silent_us(5 * MS), 0, "nothing outstanding: not silent");
        // An idle connection and one new call: silent since that send.
        s.sent(10 * MS);
        assert_eq!(s.silent_us(25 * MS), 15 * MS);
        // More calls sent meanwhile do not restart the silence.
        s.sent(20 * MS);
        assert_eq!(s.silent_us(25 * MS), 15 * MS);
        // A reply (to any call) does; the other call is still outstanding.
        s.ended(26 * MS, true);
        assert_eq!(s.silent_us(30 * MS), 4 * MS);
        s.ended(31 * MS, true);
        assert_eq!(s.silent_us(100 * MS), 0);
    }

    #[test]
    fn a_queue_that_keeps_replying_is_never_silent() {
        let s = Silence::default();
        // A burst: 4 calls always outstanding, one reply every 3 ms for
        // a whole second.
        for i in 0..4 {
            s.sent(i);
        }
        let mut longest = 0;
        for t in (3..1000).step_by(3) {
            longest = longest.max(s.silent_us(t * MS - 1));
            s.ended(t * MS, true);
            s.sent(t * MS);
        }
        assert!(longest < 3 * MS, "{longest}");
    }

    #[test]
    fn a_sign_of_life_restarts_the_silence_and_ends_no_call() {
        let s = Silence::default();
        s.sent(0);
        // A liveness check answered at 8 ms: silent since then, and the
        // call is still outstanding.
        s.alive(8 * MS);
        assert_eq!(s.silent_us(12 * MS), 4 * MS);
        // An older sign of life does not move the silence back.
        s.alive(3 * MS);
        assert_eq!(s.silent_us(12 * MS), 4 * MS);
        s.ended(13 * MS, true);
        assert_eq!(s.silent_us(20 * MS), 0);
    }

    #[test]
    fn a_lost_connection_is_not_a_reply() {
        let s = Silence::default();
        s.sent(0);
        s.sent(MS);
        s.ended(2 * MS, false);
        assert_eq!(s.silent_us(16 * MS), 16 * MS);
    }

    #[test]
    fn a_stalled_shard_opens_alone_and_a_replying_one_stays_called() {
        let shards = Shards::default();
        let stall = 15 * MS;
        let route = shards.route([1, 2].into_iter(), 0).unwrap();
        // Shard 1 silent for 16 ms, shard 2 replied 1 ms ago.
        let silent = |id: u64| if id == 1 { 16 * MS } else { MS };
        assert_eq!(route.silent_us(silent), 16 * MS);
        assert!(!route.open_stalled(16 * MS, 20 * MS, silent), "under it");
        assert!(route.open_stalled(16 * MS, stall, silent));
        assert!(shards.route([1].into_iter(), 17 * MS).is_none());
        assert!(shards.route([2].into_iter(), 17 * MS).is_some());
        // The open period passes: a probe, which a stall does not fail
        // (its caller does not wait for it).
        let after = 16 * MS + OPEN_FOR.as_micros() as u64;
        let probe = shards.route([1].into_iter(), after).unwrap();
        assert!(probe.probes());
        assert_eq!(probe.silent_us(silent), 0);
        assert!(!probe.open_stalled(after, stall, silent));
    }
}
