//! The gRPC servers: the decision listener (ext_authz, health, reflection)
//! and the admin listener (admin API, health, reflection), their limits,
//! background tasks, and graceful shutdown. No decision logic lives here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::admin::{AuditAdmin, PolicyAdmin};
use crate::audit::{AuditSink, AuditWriter};
use crate::authn::Authenticator;
use crate::config::Config;
use crate::extauthz::AuthzService;
use crate::gitrev::PolicyRevision;
use crate::proto::audit_service_server::AuditServiceServer;
use crate::proto::policy_service_server::PolicyServiceServer;
use crate::reload::{self, PolicyStore};
use crate::rls::RateLimiter;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;

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
    pub quotas: crate::quota::Quotas,
    /// Anomaly detection, when enabled.
    pub anomalies: Option<Arc<crate::anomaly::Detector>>,
    /// Where the gateway's region comes from (data residency).
    pub residency: crate::config::ResidencyConfig,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The policy directory is invalid.
    #[error(transparent)]
    Policies(#[from] crate::snapshot::LoadErrors),
    /// Authentication could not be set up.
    #[error("authentication setup failed:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Authn(Vec<crate::authn::AuthnSetupError>),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The pinned policy revision could not be checked out.
    #[error("cannot serve policy revision: {0}")]
    Revision(#[from] crate::gitrev::RevisionError),
    /// Watching the policy directory failed.
    #[error("cannot watch the policy directory: {0}")]
    Watch(String),
    /// The audit trail could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::StartError),
    /// The decision listener's TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A Redis connection (quotas, authentication) could not be set up.
    #[error("redis: {0}")]
    Redis(String),
}

/// A running Portcullis.
#[derive(Debug)]
pub struct Running {
    /// The decision listener's address.
    pub decision_addr: SocketAddr,
    /// The admin listener's address.
    pub admin_addr: SocketAddr,
    /// The operations HTTP listener's address (`/metrics`, `/healthz`,
    /// `/readyz`).
    pub http_addr: SocketAddr,
    /// The shared readiness answer.
    pub readiness: crate::health::Readiness,
    /// Shared state (for tests and the binary).
    pub state: Arc<State>,
    cancel: CancellationToken,
    tasks: JoinSet<Result<(), tonic::transport::Error>>,
    background: JoinSet<()>,
    grace: Duration,
    /// Keeps a pinned revision's files alive while serving.
    _pinned: Option<PolicyRevision>,
    audit: Option<AuditWriter>,
}

/// Loads policies, binds the listeners and starts serving.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let policies_dir = config.policies.clone();
    let revision = config.policy_revision.clone();
    let (mut store, pinned) = tokio::task::spawn_blocking(move || match revision {
        None => PolicyStore::load(&policies_dir)
            .map(|s| (s, None))
            .map_err(StartError::from),
        Some(rev) => {
            let pinned = PolicyRevision::checkout(&policies_dir, &rev)?;
            let store = PolicyStore::load_versioned(&pinned.path(), Some(pinned.short.clone()))?;
            Ok((store, Some(pinned)))
        }
    })
    .await
    .expect("policy loading does not panic")?;
    // Claims copied into the Cedar context must fit the schema's context,
    // now and after every reload.
    store.require_context_claims(crate::snapshot::ContextClaim::configured(
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
    let (quota_redis, authn_redis) = config.redis_connections().map_err(StartError::Redis)?;
    let authenticator = Authenticator::with_redis(&config.authentication, authn_redis)
        .map_err(StartError::Authn)?;
    let quotas = config.quotas.build_on(quota_redis);
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
    let tls = match &config.tls.cert_file {
        Some(_) => Some(Arc::new(crate::tls::ReloadingTls::load(&config.tls)?)),
        None => None,
    };
    let state = Arc::new(State {
        policies: Arc::new(store),
        authenticator,
        audit,
        quotas,
        anomalies: config.anomaly.enabled.then(|| {
            Arc::new(crate::anomaly::Detector::new(
                &config.anomaly,
                Arc::new(crate::quota::SystemClock),
            ))
        }),
        residency: config.residency.clone(),
    });

    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let decision_listener = bind("listen", config.listen).await?;
    let admin_listener = bind("admin_listen", config.admin_listen).await?;
    let http_listener = bind("http_listen", config.http_listen).await?;
    let decision_addr = decision_listener
        .local_addr()
        .expect("bound socket has an address");
    let admin_addr = admin_listener
        .local_addr()
        .expect("bound socket has an address");
    let http_addr = http_listener
        .local_addr()
        .expect("bound socket has an address");

    let cancel = CancellationToken::new();
    let mut background = JoinSet::new();
    // A pinned revision never changes on disk: nothing to watch.
    if config.reload.watch && pinned.is_none() {
        let handle = reload::spawn_watcher(
            Arc::clone(&state.policies),
            Duration::from_millis(config.reload.debounce_ms),
            cancel.clone(),
        )
        .map_err(|e| StartError::Watch(e.to_string()))?;
        background.spawn(async move {
            let _ = handle.await;
        });
    }
    if config.reload.poll_seconds > 0 && pinned.is_none() {
        let handle = reload::spawn_poller(
            Arc::clone(&state.policies),
            Duration::from_secs(config.reload.poll_seconds),
            cancel.clone(),
        );
        background.spawn(async move {
            let _ = handle.await;
        });
    }
    #[cfg(unix)]
    if let Ok(handle) = reload::spawn_sighup(Arc::clone(&state.policies), cancel.clone()) {
        background.spawn(async move {
            let _ = handle.await;
        });
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    for handle in state.authenticator.spawn_refresh(&cancel) {
        background.spawn(async move {
            let _ = handle.await;
        });
    }
    // The Authorization service is SERVING only while the service is ready
    // (see health.rs: issuers' keys usable, a required quota store
    // reachable); /readyz gives the same answer. The admin service is
    // unaffected.
    let readiness = crate::health::Readiness::new();
    if readiness.refresh(&state).await.ready {
        health
            .set_serving::<AuthorizationServer<AuthzService>>()
            .await;
    } else {
        health
            .set_not_serving::<AuthorizationServer<AuthzService>>()
            .await;
    }
    background.spawn(crate::health::report::<AuthorizationServer<AuthzService>>(
        Arc::clone(&state),
        readiness.clone(),
        health.clone(),
        cancel.clone(),
    ));
    health
        .set_serving::<PolicyServiceServer<PolicyAdmin>>()
        .await;
    health.set_serving::<AuditServiceServer<AuditAdmin>>().await;
    health
        .set_serving::<RateLimitServiceServer<RateLimiter>>()
        .await;

    let limits = &config.server;
    let max_message = limits.max_message_bytes;
    let builder = || grpc_server(config);

    let mut tasks = JoinSet::new();
    {
        let (v1, v1alpha) = reflection(&[
            "envoy.service.auth.v3.Authorization",
            "envoy.service.ratelimit.v3.RateLimitService",
            "grpc.health.v1.Health",
        ]);
        let authz = AuthorizationServer::new(AuthzService::new(Arc::clone(&state)))
            .max_decoding_message_size(max_message);
        let rls = RateLimitServiceServer::new(RateLimiter::new(Arc::clone(&state)))
            .max_decoding_message_size(max_message);
        let router = builder()
            .add_service(authz)
            .add_service(rls)
            .add_service(health_service.clone())
            .add_service(v1)
            .add_service(v1alpha);
        let stop = cancel.clone();
        match &tls {
            Some(tls) => {
                background.spawn(Arc::clone(tls).watch(
                    Duration::from_millis(config.tls.reload_interval_ms),
                    cancel.clone(),
                ));
                let incoming =
                    crate::tls::incoming(decision_listener, Arc::clone(tls), cancel.clone());
                tasks.spawn(async move {
                    router
                        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                        .await
                });
            }
            None => {
                tasks.spawn(async move {
                    router
                        .serve_with_incoming_shutdown(
                            nodelay(decision_listener),
                            stop.cancelled_owned(),
                        )
                        .await
                });
            }
        }
    }
    {
        let (v1, v1alpha) = reflection(&[
            "portcullis.admin.v1.PolicyService",
            "portcullis.admin.v1.AuditService",
            "grpc.health.v1.Health",
        ]);
        let router = builder()
            .add_service(PolicyServiceServer::new(PolicyAdmin::new(Arc::clone(
                &state,
            ))))
            .add_service(AuditServiceServer::new(AuditAdmin::new(
                Arc::clone(&state),
                cancel.clone(),
            )))
            .add_service(health_service)
            .add_service(v1)
            .add_service(v1alpha);
        let stop = cancel.clone();
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(nodelay(admin_listener), stop.cancelled_owned())
                .await
        });
    }

    {
        let (state, readiness, stop) = (Arc::clone(&state), readiness.clone(), cancel.clone());
        background.spawn(async move {
            if let Err(e) = crate::http::serve(http_listener, state, readiness, stop).await {
                tracing::error!(error = %e, "the HTTP listener (metrics, health) failed");
            }
        });
    }

    Ok(Running {
        decision_addr,
        admin_addr,
        http_addr,
        readiness,
        state,
        cancel,
        tasks,
        background,
        grace: Duration::from_millis(limits.shutdown_grace_ms),
        _pinned: pinned,
        audit: Some(audit_writer),
    })
}

/// Accepted connections with TCP_NODELAY set. Tonic's own `tcp_nodelay`
/// applies only to listeners it binds itself; without this, Nagle's
/// algorithm holds back the last frames of a response until the client's
/// delayed ACK (about 40 ms per call).
pub fn nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        }
        accepted
    })
}

/// The tonic server with the configured limits: every listener (and the
/// benchmark's empty baseline server) uses the same stack.
pub fn grpc_server(config: &Config) -> Server {
    let limits = &config.server;
    let keepalive = (limits.keepalive_interval_seconds > 0)
        .then(|| Duration::from_secs(limits.keepalive_interval_seconds));
    Server::builder()
        .timeout(config.request_timeout())
        .concurrency_limit_per_connection(limits.concurrency_limit_per_connection)
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .http2_max_header_list_size(Some(limits.max_header_list_size))
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_seconds)))
        .tcp_nodelay(true)
}

/// Reflection services (v1 and v1alpha, which grpcurl 1.8.6 speaks) that
/// list exactly `services`.
fn reflection(
    services: &[&str],
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let configure = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::REFLECTION_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    let v1 = configure()
        .build_v1()
        .expect("reflection descriptors are valid");
    let v1alpha = configure()
        .build_v1alpha()
        .expect("reflection descriptors are valid");
    (v1, v1alpha)
}

impl Running {
    /// Stops accepting, lets in-flight requests finish within the grace
    /// period, stops background tasks.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        self.cancel.cancel();
        let grace = self.grace;
        let drained = tokio::time::timeout(grace, async {
            let mut result = Ok(());
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok(Err(e)) = joined {
                    result = Err(e);
                }
            }
            result
        })
        .await;
        self.background.shutdown().await;
        if drained.is_err() {
            self.tasks.shutdown().await;
        }
        // Every request is done: write what is queued, then close the trail.
        if let Some(audit) = self.audit.take() {
            audit.stop().await;
        }
        match drained {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "in-flight requests did not finish within the grace period; closing"
                );
                self.tasks.shutdown().await;
                Ok(())
            }
        }
    }

    /// Waits until a server task ends on its own (an error), for the binary.
    pub async fn serve_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tokio::select! {
            _ = signal => {}
            Some(joined) = self.tasks.join_next() => {
                if let Ok(Err(e)) = joined {
                    self.cancel.cancel();
                    if let Some(audit) = self.audit.take() {
                        audit.stop().await;
                    }
                    return Err(e);
                }
            }
        }
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_set_so_responses_are_not_held_by_nagle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(nodelay(listener));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
