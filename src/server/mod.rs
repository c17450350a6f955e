//! The servers: the decision listener (ext_authz, RLS, ext_proc, health,
//! reflection), the admin listener (admin API, health, reflection), the
//! operations HTTP listener and, when configured, the forward-auth HTTP
//! listener (`http.rs`); their limits, background tasks (among them the
//! reservation sweeper), and graceful shutdown. No decision logic lives
//! here.

mod budget;
mod coalesce;
pub mod http;
pub mod runtime;
pub mod tls;

pub use budget::{Budget, Permit, RequestBudget, RequestBudgetLayer};
pub use coalesce::Coalesced;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::adapters::admin::{AuditAdmin, PolicyAdmin};
use crate::adapters::check_wire::CheckServer;
use crate::adapters::extauthz::AuthzService;
use crate::adapters::extproc::ExtProcService;
use crate::adapters::forward_auth::ForwardAuth;
use crate::adapters::rls::{RateLimitServer, RateLimiter};
use crate::app::{App, AssembleError, State};
use crate::audit::AuditWriter;
use crate::config::Config;
use crate::policy::gitrev::PolicyRevision;
use crate::policy::reload;
use crate::proto::audit_service_server::AuditServiceServer;
use crate::proto::policy_service_server::PolicyServiceServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;

/// How often every replica settles the token reservations that expired
/// unsettled (`pipeline::response::sweep`).
pub const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The running state could not be assembled (policies, authentication,
    /// audit trail, Redis).
    #[error(transparent)]
    App(#[from] AssembleError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Watching the policy directory failed.
    #[error("cannot watch the policy directory: {0}")]
    Watch(String),
    /// The decision listener's TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
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
    /// The forward-auth HTTP listener's address, when configured.
    pub forward_auth_addr: Option<SocketAddr>,
    /// The shared readiness answer.
    pub readiness: crate::app::health::Readiness,
    /// Shared state (for tests and the binary).
    pub state: Arc<State>,
    /// The listeners; a listener's error ends `serve_until`.
    listeners: JoinSet<Result<(), tonic::transport::Error>>,
    grace: Duration,
    /// Keeps a pinned revision's files alive while serving.
    _pinned: Option<PolicyRevision>,
    audit: Option<AuditWriter>,
}

/// Assembles the running state, binds the listeners and starts serving.
/// Every task it starts is spawned on the state's task tracker and stops
/// on [`Running::shutdown`].
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let App {
        state,
        audit_writer,
        pinned,
    } = App::assemble(config).await?;
    let tls = match &config.tls.cert_file {
        Some(_) => Some(Arc::new(crate::server::tls::ReloadingTls::load(
            &config.tls,
        )?)),
        None => None,
    };

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
    let forward_auth_listener = match config.forward_auth.listen {
        Some(addr) => Some(bind("forward_auth.listen", addr).await?),
        None => None,
    };
    let forward_auth_addr = forward_auth_listener
        .as_ref()
        .map(|l| l.local_addr().expect("bound socket has an address"));

    let (tasks, cancel) = (&state.tasks, &state.stop);
    // A pinned revision never changes on disk: nothing to watch.
    if config.reload.watch && pinned.is_none() {
        reload::spawn_watcher(
            Arc::clone(&state.policies),
            Duration::from_millis(config.reload.debounce_ms),
            tasks,
            cancel.clone(),
        )
        .map_err(|e| StartError::Watch(e.to_string()))?;
    }
    if config.reload.poll_seconds > 0 && pinned.is_none() {
        reload::spawn_poller(
            Arc::clone(&state.policies),
            Duration::from_secs(config.reload.poll_seconds),
            tasks,
            cancel.clone(),
        );
    }
    #[cfg(unix)]
    if let Err(e) = reload::spawn_sighup(Arc::clone(&state.policies), tasks, cancel.clone()) {
        tracing::warn!(error = %e, "cannot install the SIGHUP handler; reload with the admin API");
    }

    if let Some(detector) = state.anomalies.as_ref().filter(|d| d.shares_blocks()) {
        // The blocks the other replicas imposed, a few times a second.
        let (detector, cancel) = (Arc::clone(detector), cancel.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(crate::anomaly::shared::POLL) => {
                        detector.sync_shared().await;
                    }
                }
            }
        });
    }
    if let Some(detector) = &state.anomalies {
        // Forgotten subjects leave memory. The sweep visits every subject:
        // on a blocking thread, off the runtime's threads.
        let detector = Arc::clone(detector);
        tasks.spawn(crate::time::every(
            detector.sweep_period(),
            cancel.clone(),
            move || {
                let detector = Arc::clone(&detector);
                async move {
                    if let Err(e) = tokio::task::spawn_blocking(move || detector.settle()).await {
                        tracing::error!(error = %e, "the anomaly sweep failed");
                    }
                }
            },
        ));
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    state.authenticator.spawn_refresh(tasks, cancel);
    // The Authorization service is SERVING only while the service is ready
    // (see app/health.rs: issuers' keys usable, a required quota store
    // reachable); /readyz gives the same answer. The admin service is
    // unaffected.
    let readiness = crate::app::health::Readiness::new();
    if readiness.refresh(&state).await.ready {
        health.set_serving::<CheckServer>().await;
    } else {
        health.set_not_serving::<CheckServer>().await;
    }
    tasks.spawn(crate::app::health::report::<CheckServer>(
        Arc::clone(&state),
        readiness.clone(),
        health.clone(),
        cancel.clone(),
    ));
    health
        .set_serving::<PolicyServiceServer<PolicyAdmin>>()
        .await;
    health.set_serving::<AuditServiceServer<AuditAdmin>>().await;
    health.set_serving::<RateLimitServer>().await;
    health
        .set_serving::<ExternalProcessorServer<ExtProcService>>()
        .await;
    {
        // Reservations nobody settled (a replica died, a response never
        // reached ext_proc) settle by their rule once expired.
        let (state, stop) = (Arc::clone(&state), cancel.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        crate::pipeline::response::sweep(&state.quotas, Some(&state.audit)).await;
                    }
                }
            }
        });
    }

    let limits = &config.server;
    let max_message = limits.max_message_bytes;
    let builder = || grpc_server(config);

    let mut listeners = JoinSet::new();
    {
        let (v1, v1alpha) = reflection(&[
            "envoy.service.auth.v3.Authorization",
            "envoy.service.ratelimit.v3.RateLimitService",
            "envoy.service.ext_proc.v3.ExternalProcessor",
            "grpc.health.v1.Health",
        ]);
        let authz = CheckServer::new(AuthzService::new(Arc::clone(&state)), max_message);
        let ext_proc = ExternalProcessorServer::new(ExtProcService::new(Arc::clone(&state)))
            .max_decoding_message_size(max_message);
        let rls = RateLimitServer::new(RateLimiter::new(Arc::clone(&state)), max_message);
        let router = builder()
            .add_service(authz)
            .add_service(rls)
            .add_service(ext_proc)
            .add_service(health_service.clone())
            .add_service(v1)
            .add_service(v1alpha);
        let stop = cancel.clone();
        match &tls {
            Some(tls) => {
                tasks.spawn(Arc::clone(tls).watch(
                    Duration::from_millis(config.tls.reload_interval_ms),
                    cancel.clone(),
                ));
                let incoming = crate::server::tls::incoming(
                    decision_listener,
                    Arc::clone(tls),
                    tasks,
                    cancel.clone(),
                );
                listeners.spawn(async move {
                    router
                        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                        .await
                });
            }
            None => {
                listeners.spawn(async move {
                    router
                        .serve_with_incoming_shutdown(
                            coalesced(decision_listener),
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
            .add_service(AuditServiceServer::new(AuditAdmin::new(Arc::clone(&state))))
            .add_service(health_service)
            .add_service(v1)
            .add_service(v1alpha);
        let stop = cancel.clone();
        listeners.spawn(async move {
            router
                .serve_with_incoming_shutdown(coalesced(admin_listener), stop.cancelled_owned())
                .await
        });
    }

    {
        let (state2, readiness, stop) = (Arc::clone(&state), readiness.clone(), cancel.clone());
        tasks.spawn(async move {
            if let Err(e) =
                crate::adapters::http::serve(http_listener, state2, readiness, stop).await
            {
                tracing::error!(error = %e, "the HTTP listener (metrics, health) failed");
            }
        });
    }

    if let Some(listener) = forward_auth_listener {
        // Its in-flight requests finish within the grace period on stop:
        // the task ends when its last connection has answered.
        let handler = ForwardAuth::new(Arc::clone(&state), config.forward_auth.clone());
        tasks.spawn(http::serve(
            listener,
            http::HttpLimits::of(config),
            handler,
            cancel.clone(),
        ));
    }

    Ok(Running {
        decision_addr,
        admin_addr,
        http_addr,
        forward_auth_addr,
        readiness,
        state,
        listeners,
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

/// Accepted connections as [`nodelay`] gives them, with their writes
/// coalesced across streams ([`Coalesced`]): what the gRPC listeners serve.
pub fn coalesced(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<Coalesced<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt as _;
    nodelay(listener).map(|accepted| accepted.map(Coalesced::new))
}

/// The tonic server with the configured limits: every listener (and the
/// benchmark's empty baseline server) uses the same stack. Each call has
/// its own request budget (`server.max_pending_requests`).
pub fn grpc_server(
    config: &Config,
) -> Server<tower_layer::Stack<RequestBudgetLayer, tower_layer::Identity>> {
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
        .layer(RequestBudgetLayer::new(limits.max_pending_requests))
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
    /// period, stops every background task (the state's tracker), then
    /// flushes and closes the audit trail.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        self.state.stop.cancel();
        let grace = self.grace;
        let listeners = &mut self.listeners;
        let drained = tokio::time::timeout(grace, async {
            let mut result = Ok(());
            while let Some(joined) = listeners.join_next().await {
                if let Ok(Err(e)) = joined {
                    result = Err(e);
                }
            }
            result
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "in-flight requests did not finish within the grace period; closing"
            );
            self.listeners.shutdown().await;
        }
        // Every task ends on `stop`; a connection attempt within its own
        // timeout. Wait for them, but never longer than the grace period.
        self.state.tasks.close();
        if tokio::time::timeout(grace, self.state.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.state.tasks.len(),
                "background tasks did not stop within the grace period"
            );
        }
        // Every request is done: write what is queued, then close the trail.
        if let Some(audit) = self.audit.take() {
            audit.stop().await;
        }
        drained.unwrap_or(Ok(()))
    }

    /// Serves until `signal` fires (then shuts down gracefully) or a
    /// listener fails (then returns its error after the same shutdown).
    pub async fn serve_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let failed = tokio::select! {
            _ = signal => None,
            Some(joined) = self.listeners.join_next() => match joined {
                Ok(Err(e)) => Some(e),
                _ => None,
            },
        };
        tracing::info!("shutting down");
        let stopped = self.shutdown().await;
        match failed {
            Some(e) => Err(e),
            None => stopped,
        }
    }

    /// Tasks of the running service not yet finished (for tests: zero
    /// after shutdown).
    pub fn task_tracker(&self) -> tokio_util::task::TaskTracker {
        self.state.tasks.clone()
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
