//! Portcullis inside the test process: the gRPC server started and stopped
//! as production does, the ext_authz service over a hand-assembled state,
//! and the decision pipeline called directly.

use std::ops::Deref;
use std::sync::Arc;

use portcullis::adapters::extauthz::AuthzService;
use portcullis::anomaly::Detector;
use portcullis::app::State;
use portcullis::authn::Authenticator;
use portcullis::config::Config;
use portcullis::policy::reload::PolicyStore;
use portcullis::request::AccessRequest;
use portcullis::server::{self, Running, StartError};
use tempfile::TempDir;

use super::check::{PREDICT, PREDICT_BODY};
use super::paths::policies_dir;

/// An audit trail in a temporary directory, for tests that assemble a
/// `server::State` themselves; keep it alive as long as the service.
pub struct TestAudit {
    /// The sink to put in `State`.
    pub sink: portcullis::audit::AuditSink,
    _writer: portcullis::audit::AuditWriter,
    _dir: TempDir,
}

impl TestAudit {
    /// Starts the writer on a fresh temporary directory.
    pub fn start() -> TestAudit {
        let dir = tempfile::tempdir().expect("temp dir");
        let (sink, writer) = portcullis::audit::start(&portcullis::audit::AuditConfig {
            directory: dir.path().to_path_buf(),
            ..Default::default()
        })
        .expect("audit trail starts");
        TestAudit {
            sink,
            _writer: writer,
            _dir: dir,
        }
    }
}

/// The ext_authz service over a `State` assembled by hand (the only place
/// the tests build one): the bundled policies, `authenticator`, in-process
/// quotas, `anomalies` when given, and an audit trail of its own, which the
/// caller keeps alive as long as the service.
pub fn authz_service(
    authenticator: Authenticator,
    anomalies: Option<Arc<Detector>>,
) -> (AuthzService, TestAudit) {
    let audit = TestAudit::start();
    let state = State {
        policies: Arc::new(PolicyStore::load(&policies_dir()).expect("bundled policies load")),
        authenticator,
        audit: audit.sink.clone(),
        quotas: portcullis::quota::Quotas::in_process(1024),
        anomalies,
        residency: Default::default(),
        tasks: Default::default(),
        stop: Default::default(),
    };
    (AuthzService::new(Arc::new(state)), audit)
}

/// Portcullis started in the test process with `server::start`, with an
/// audit trail of its own in a temporary directory (a directory takes one
/// writer). Reads as the `Running` it wraps; stop it with
/// [`TestServer::shutdown`], the path production uses.
#[derive(Debug)]
pub struct TestServer {
    running: Running,
    audit: TempDir,
}

impl TestServer {
    /// Starts `config` (see [`super::in_process_config`]); panics when it
    /// cannot.
    pub async fn start(config: Config) -> TestServer {
        TestServer::try_start(config)
            .await
            .unwrap_or_else(|e| panic!("server starts: {e}"))
    }

    /// Starts `config`, or says why it cannot.
    pub async fn try_start(mut config: Config) -> Result<TestServer, StartError> {
        let audit = tempfile::tempdir().expect("temp dir");
        config.audit.directory = audit.path().to_path_buf();
        let running = server::start(&config).await?;
        Ok(TestServer { running, audit })
    }

    /// Stops accepting, drains in-flight requests and flushes the audit
    /// trail, as on SIGTERM; hands back the trail's directory for a test to
    /// read (removed when dropped).
    pub async fn shutdown(self) -> Result<TempDir, tonic::transport::Error> {
        self.running.shutdown().await?;
        Ok(self.audit)
    }
}

impl Deref for TestServer {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.running
    }
}

/// An enforced decision (credentials verified, quotas charged on
/// `quotas`), not recorded: the stages alone.
pub async fn decide_with(
    snapshot: &portcullis::policy::snapshot::Snapshot,
    authn: &Authenticator,
    quotas: &portcullis::quota::Quotas,
    req: &AccessRequest,
) -> portcullis::decision::Decision {
    let live = portcullis::pipeline::Live {
        door: portcullis::pipeline::Door::ExtAuthz,
        authenticator: authn,
        quotas,
        audit: None,
        anomalies: None,
    };
    let ask = portcullis::pipeline::Ask::Access(req);
    portcullis::pipeline::decide(snapshot, ask, portcullis::pipeline::Mode::Enforce(live)).await
}

/// [`decide_with`] a fresh in-process quota store.
pub async fn decide(
    snapshot: &portcullis::policy::snapshot::Snapshot,
    authn: &Authenticator,
    req: &AccessRequest,
) -> portcullis::decision::Decision {
    decide_with(
        snapshot,
        authn,
        &portcullis::quota::Quotas::in_process(1024),
        req,
    )
    .await
}

/// A decision for a given identity (or none: anonymous), as offline
/// `check` and policy tests make it.
pub fn decide_as(
    snapshot: &portcullis::policy::snapshot::Snapshot,
    identity: Option<portcullis::authn::Identity>,
    req: &AccessRequest,
) -> portcullis::decision::Decision {
    portcullis::pipeline::decide_offline(snapshot, req, identity, 0)
}

/// `POST` [`PREDICT`] with a body the route accepts, as the pipeline sees
/// it; a test adds the credentials.
pub fn predict_access() -> AccessRequest {
    AccessRequest::for_test("POST", PREDICT)
        .with_json(&serde_json::from_slice(PREDICT_BODY).expect("PREDICT_BODY is JSON"))
}

/// `n` replicas serving the policy directory `policies` with the quota
/// settings `settings` (a shared store makes them one limit), each with a
/// connected channel to its decision listener. The server's own request
/// deadline is raised to 30 s: a burst on a 2-core machine shared with
/// builds must not be cut by it, which would say nothing about quotas.
pub async fn replicas(
    n: usize,
    settings: &portcullis::quota::QuotaSettings,
    policies: &std::path::Path,
) -> (Vec<TestServer>, Vec<tonic::transport::Channel>) {
    let mut servers = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..n {
        let mut config = Config {
            quotas: settings.clone(),
            ..super::in_process_config(policies)
        };
        config.server.request_timeout_ms = 30_000;
        let server = TestServer::start(config).await;
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", server.decision_addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
        servers.push(server);
        channels.push(channel);
    }
    (servers, channels)
}
