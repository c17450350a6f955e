//! The hand-off between a caller waiting on a remote quota store and the
//! task running its call: the answer is taken by the caller, or, when the
//! caller gave up or went away, an allowed charge is refunded on a task of
//! its own (never cancelled with the caller's future).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::super::breaker::Route;
use super::super::{was_charged, Charge, Charged, QuotaStore, StoreError};
use super::Health;

/// Where one store call stands, between its caller and its task.
#[derive(Debug)]
pub(super) enum Handoff {
    /// The caller waits.
    Waiting,
    /// The store answered; the caller has not taken it yet.
    Answered(Result<Charged, StoreError>),
    /// The caller took the answer.
    Taken,
    /// The caller was answered otherwise (admitted or not) or went away.
    GaveUp { admitted: bool },
}

#[derive(Debug)]
pub(super) struct Call {
    pub(super) state: Mutex<Handoff>,
    pub(super) done: tokio::sync::Notify,
}

impl Call {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Handoff> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a store call's answer does, once: the call's breakers note it
/// (an error that says the store is gone, or too many, open them and wake
/// the callers waiting), and it goes to the caller if it still waits. An
/// allowed charge whose caller was answered otherwise than admitted (or
/// went away) is returned, to be refunded.
pub(super) fn settle(
    route: &Route,
    health: &Health,
    call: &Call,
    started_us: u64,
    result: Result<Charged, StoreError>,
) -> Option<Charged> {
    match &result {
        Ok(_) => route.success(health.now_us()),
        Err(e) => {
            if route.failure(health.now_us(), started_us, e.gone) {
                let why = if e.gone {
                    "the connection is gone"
                } else {
                    super::RATE_OPENED
                };
                health.opened_by(&format_args!("{e} ({why})"));
                health.opened.notify_waiters();
            }
        }
    }
    let late = {
        let mut state = call.lock();
        match &*state {
            Handoff::Waiting => {
                *state = Handoff::Answered(result);
                None
            }
            Handoff::GaveUp { admitted: false } => result.ok().filter(|c| c.allowed),
            _ => None,
        }
    };
    call.done.notify_one();
    late
}

/// Refunds a late answer when the caller's future is dropped before it
/// took one (a client that went away): what it charged is given back.
pub(super) struct CallerGone<'a> {
    pub(super) call: Arc<Call>,
    pub(super) charges: &'a [Charge],
    pub(super) store: &'a Arc<dyn QuotaStore>,
    pub(super) health: &'a Arc<Health>,
}

impl Drop for CallerGone<'_> {
    fn drop(&mut self) {
        let mut state = self.call.lock();
        match std::mem::replace(&mut *state, Handoff::Taken) {
            Handoff::Waiting => *state = Handoff::GaveUp { admitted: false },
            Handoff::Answered(Ok(charged)) if charged.allowed => {
                drop(state);
                refund_later(self.store, self.health, self.charges.to_vec(), charged);
            }
            other => *state = other,
        }
    }
}

/// Gives back an allowed charge on a task of its own.
pub(super) fn refund_later(
    store: &Arc<dyn QuotaStore>,
    health: &Arc<Health>,
    charges: Vec<Charge>,
    charged: Charged,
) {
    let (store, h) = (Arc::clone(store), Arc::clone(health));
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        health.tasks.spawn_on(
            async move {
                refund(&*store, &h, &charges, &charged).await;
            },
            &rt,
        );
    }
}

pub(super) async fn refund(
    store: &dyn QuotaStore,
    health: &Health,
    charges: &[Charge],
    charged: &Charged,
) {
    let any = charges
        .iter()
        .zip(&charged.states)
        .any(|(c, s)| was_charged(c, s));
    if !any {
        return;
    }
    health.refunds.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = store.refund(charges, &charged.states).await {
        tracing::warn!(target: "portcullis::quota", error = %e, "quota refund failed; the charge stays");
    }
}

/// Why a caller stopped waiting for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GaveUp {
    /// The per-call deadline (`timeout`).
    Deadline,
    /// The breaker opened meanwhile.
    Down,
    /// The call is the half-open probe: its caller does not wait for it.
    Probing,
}

/// The store's answer, if it has come (the caller takes it).
pub(super) fn take(call: &Call) -> Option<Result<Charged, StoreError>> {
    let mut state = call.lock();
    match std::mem::replace(&mut *state, Handoff::Taken) {
        Handoff::Answered(answer) => Some(answer),
        other => {
            *state = other;
            None
        }
    }
}
