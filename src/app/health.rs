//! Readiness: one answer to "may the gateway send us traffic", shared by
//! grpc.health.v1 (the Authorization service's status) and the HTTP
//! `/readyz`. A background task re-checks it; readers only load the last
//! answer. It does not serve anything itself.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::app::State;

/// How often readiness is re-checked.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The last readiness answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// True when traffic may come.
    pub ready: bool,
    /// Why not (empty when ready), one line each, for operators.
    pub problems: Vec<String>,
    /// Known trouble that does not make us unready (e.g. the quota store
    /// failing while a degraded mode other than `deny` serves).
    pub warnings: Vec<String>,
    /// The serving policy snapshot's version.
    pub policy_version: String,
    /// Issuers whose keys are not usable.
    #[serde(skip)]
    pub unready_issuers: usize,
}

/// The shared readiness answer (cheap to clone).
#[derive(Debug, Clone)]
pub struct Readiness(Arc<ArcSwap<Status>>);

impl Readiness {
    /// Starts not ready until the first check.
    pub fn new() -> Self {
        Readiness(Arc::new(ArcSwap::from_pointee(Status {
            ready: false,
            problems: vec!["not checked yet".into()],
            warnings: Vec::new(),
            policy_version: String::new(),
            unready_issuers: 0,
        })))
    }

    /// The last answer.
    pub fn current(&self) -> Arc<Status> {
        self.0.load_full()
    }

    /// Checks now and stores the answer.
    pub async fn refresh(&self, state: &State) -> Arc<Status> {
        let status = Arc::new(check(state).await);
        self.0.store(Arc::clone(&status));
        status
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

/// Ready when a valid snapshot serves (always true once started: the
/// server does not start without one, and a rejected reload keeps the last
/// good one), every JWT issuer's keys are usable, and the quota store
/// takes a write (a Redis that answers `PING` but refuses writes, at
/// `maxmemory` or read-only, refuses every charge), when the store is
/// remote and its failure mode is `deny`
/// (with `allow` or `local`, requests are still decided while it is down,
/// so taking every replica out of rotation would turn a degraded mode into
/// an outage; that case is a warning).
pub async fn check(state: &State) -> Status {
    let snapshot = state.policies.current();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let unready = state.authenticator.unready_issuers();
    for issuer in &unready {
        problems.push(format!(
            "issuer {issuer}: signing keys never fetched or too stale"
        ));
    }
    if let Err(e) = state.quotas.ping().await {
        let line = format!("quota store unreachable or refusing writes: {e}");
        if state.quotas.on_error() == crate::quota::OnStoreError::Deny {
            problems.push(line);
        } else {
            warnings.push(format!(
                "{line} (deciding in degraded mode '{}')",
                state.quotas.on_error().as_str()
            ));
        }
    }
    Status {
        ready: problems.is_empty(),
        problems,
        warnings,
        policy_version: snapshot.version.clone(),
        unready_issuers: unready.len(),
    }
}

/// Keeps `readiness` and grpc.health's status of `Service` in step until
/// `cancel`. Polls: staleness is a matter of time passing, not of an event.
pub async fn report<Service: tonic::server::NamedService>(
    state: Arc<State>,
    readiness: Readiness,
    health: tonic_health::server::HealthReporter,
    cancel: CancellationToken,
) {
    let mut reported: Option<bool> = None;
    loop {
        let status = readiness.refresh(&state).await;
        if reported != Some(status.ready) {
            if status.ready {
                health.set_serving::<Service>().await;
                tracing::info!(policy_version = %status.policy_version, "ready: serving");
            } else {
                health.set_not_serving::<Service>().await;
                tracing::warn!(problems = ?status.problems, "not ready: not serving");
            }
            reported = Some(status.ready);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
}
