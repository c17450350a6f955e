//! Portcullis inside the test process: the pieces a test needs to call the
//! library or the tonic services directly, without a listener.

use tempfile::TempDir;

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
        let (sink, writer) = portcullis::audit::start(&portcullis::config::AuditConfig {
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

/// The decision pipeline with a fresh in-process quota store.
pub async fn decide(
    snapshot: &portcullis::snapshot::Snapshot,
    authn: &portcullis::authn::Authenticator,
    req: &portcullis::request::AccessRequest,
) -> portcullis::decision::Decision {
    let quotas = portcullis::quota::Quotas::in_process(1024);
    portcullis::pipeline::decide(snapshot, authn, &quotas, req).await
}
