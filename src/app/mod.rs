//! The running state, assembled from a `Config`: the policy store (loaded,
//! checked against the configured claims), the authenticator, the quota
//! enforcement, the audit trail, the anomaly detector and Redis. Adapters
//! read it; the server owns it and its tasks. Nothing here listens.

pub mod health;
pub mod metrics;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::anomaly::Detector;
use crate::audit::{AuditSink, AuditWriter};
use crate::authn::Authenticator;
use crate::config::Config;
use crate::policy::gitrev::PolicyRevision;
use crate::policy::PolicyStore;
use crate::quota::Quotas;
use crate::residency::ResidencyConfig;

/// What every request handler shares.
#[derive(Debug)]
pub struct State {
    /// The serving policy snapshot.
    pub policies: Arc<PolicyStore>,
    /// Credential verification.
    pub authenticator: Authenticator,
    /// The audit trail.
    pub audit: AuditSink,
    /// Quota enforcement (store, timeout, failure mode).
    pub quotas: Quotas,
    /// Anomaly detection, when enabled.
    pub anomalies: Option<Arc<Detector>>,
    /// Where the gateway's region comes from (data residency).
    pub residency: ResidencyConfig,
    /// Every task the running service spawns (refreshes, watchers, tails,
    /// connection attempts): the server waits for them on shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when the service stops; long-lived tasks end on it.
    pub stop: CancellationToken,
}

impl State {
    /// The running parts an enforced decision uses (`pipeline::Mode::Enforce`).
    pub fn live(&self, door: crate::pipeline::Door) -> crate::pipeline::Live<'_> {
        crate::pipeline::Live {
            door,
            authenticator: &self.authenticator,
            quotas: &self.quotas,
            audit: Some(&self.audit),
            anomalies: self.anomalies.as_deref(),
        }
    }
}

/// Why the running state could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// The policy directory is invalid.
    #[error(transparent)]
    Policies(#[from] crate::policy::snapshot::LoadErrors),
    /// Authentication could not be set up.
    #[error("authentication setup failed:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Authn(Vec<crate::authn::AuthnSetupError>),
    /// The pinned policy revision could not be checked out.
    #[error("cannot serve policy revision: {0}")]
    Revision(#[from] crate::policy::gitrev::RevisionError),
    /// The audit trail could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::StartError),
    /// A Redis connection (quotas, authentication) could not be set up.
    #[error("redis: {0}")]
    Redis(String),
}

/// The assembled service: its shared state and what only its owner may
/// hold (the audit writer, to stop it last; a pinned revision's files).
#[derive(Debug)]
pub struct App {
    /// The shared state.
    pub state: Arc<State>,
    /// The audit trail's writer.
    pub audit_writer: AuditWriter,
    /// Keeps a pinned revision's files alive while serving.
    pub pinned: Option<PolicyRevision>,
}

impl App {
    /// Loads the policies (at the pinned revision, if any), connects what
    /// the configuration names and opens the audit trail. Spawns nothing
    /// until the server starts it.
    pub async fn assemble(config: &Config) -> Result<App, AssembleError> {
        let policies_dir = config.policies.clone();
        let revision = config.policy_revision.clone();
        let (mut store, pinned) = tokio::task::spawn_blocking(move || match revision {
            None => PolicyStore::load(&policies_dir)
                .map(|s| (s, None))
                .map_err(AssembleError::from),
            Some(rev) => {
                let pinned = PolicyRevision::checkout(&policies_dir, &rev)?;
                let store =
                    PolicyStore::load_versioned(&pinned.path(), Some(pinned.short.clone()))?;
                Ok((store, Some(pinned)))
            }
        })
        .await
        .expect("policy loading does not panic")?;
        // Claims copied into the Cedar context must fit the schema's context,
        // now and after every reload.
        store.require_context_claims(crate::policy::snapshot::ContextClaim::configured(
            &config.authentication,
        ))?;
        let snapshot = store.current();
        tracing::info!(
            version = %snapshot.version,
            policies = snapshot.policy_count(),
            routes = snapshot.routes.routes().len(),
            directory = %snapshot.directory.display(),
            "policy snapshot loaded"
        );
        let tasks = TaskTracker::new();
        let (quota_redis, authn_redis) = config
            .redis_connections(&tasks)
            .map_err(AssembleError::Redis)?;
        let shared_blocks = authn_redis
            .as_ref()
            .map(|r| crate::anomaly::shared::SharedBlocks::new(Arc::clone(&r.redis), r.timeout));
        let authenticator = Authenticator::with_redis(&config.authentication, authn_redis)
            .map_err(AssembleError::Authn)?;
        let quotas = config.quotas.build_on(quota_redis);
        if config.quotas.replicas > 1 && config.quotas.store == crate::quota::QuotaStoreKind::Local
        {
            // Almost always a mistake: each replica counts on its own and
            // enforces the whole limit.
            tracing::warn!(
                replicas = config.quotas.replicas,
                "quotas.replicas is above 1 but the quota store is local: every replica enforces the full limit on its own; use store: redis (or redis_cluster) so replicas share counters"
            );
        }
        tracing::info!(
            store = quotas.store_name(),
            failures = authenticator.failure_store(),
            "quota and authentication failure stores"
        );
        let audit_config = config.audit.clone();
        let (audit, audit_writer) =
            tokio::task::spawn_blocking(move || crate::audit::start(&audit_config))
                .await
                .expect("opening the audit trail does not panic")?;
        store.set_audit(audit.clone());
        let state = Arc::new(State {
            policies: Arc::new(store),
            authenticator,
            audit,
            quotas,
            anomalies: config.anomaly.enabled.then(|| {
                let detector = Detector::new(&config.anomaly, Arc::new(crate::time::SystemClock));
                // With a Redis, blocks are shared by every replica.
                Arc::new(match shared_blocks {
                    Some(shared) => detector.with_shared(shared),
                    None => detector,
                })
            }),
            residency: config.residency.clone(),
            tasks,
            stop: CancellationToken::new(),
        });
        Ok(App {
            state,
            audit_writer,
            pinned,
        })
    }
}
