//! Shipping the audit trail to an existing log system: every record the
//! writer has written is offered, without waiting, to a bounded queue that
//! one task drains in batches to an OpenTelemetry collector as OTLP logs
//! over gRPC (`audit.export`). A full queue drops the record and counts it;
//! a collector that is down or slow delays only the export, never a
//! decision: the writer's offer is a `try_send`. The files stay the
//! record of truth; the export carries each record's chain fields so that
//! a chain can be re-verified from it (`dump`). The mapping of a record to
//! an OTLP log record lives in `otlp`.

pub mod dump;
pub mod otlp;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::AuditRecord;

/// `audit.export`: where and how records are shipped (OTLP logs over
/// gRPC, the protocol of the OpenTelemetry collector's `otlp` receiver).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// The collector's OTLP/gRPC endpoint, `http://host:port` or
    /// `https://host:port` (the `otlp` receiver's gRPC port, 4317 by
    /// convention).
    pub endpoint: String,
    /// With `https`: the CA certificates (PEM) that may sign the
    /// collector's certificate. Default: the Mozilla root programme's
    /// (webpki-roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// With `https`: this client's certificate chain (PEM), for a collector
    /// that requires client certificates (`client_ca_file`); with
    /// `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM) of `cert_file`. Never logged.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// `service.name` of the exported logs' resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// `service.instance.id` of the resource: names this process's chain
    /// among the replicas' chains in the log system. Default: the host
    /// name (the pod name in Kubernetes).
    #[serde(default)]
    pub instance: Option<String>,
    /// Records that may wait for the export; a record offered to a full
    /// queue is dropped and counted.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// At most this many records per export call.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A batch smaller than `batch_size` is sent after at most this many
    /// milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Bound on one export call (connecting included), milliseconds; also
    /// how long the export may take to send what is queued at shutdown.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_service_name() -> String {
    "portcullis".into()
}
fn default_queue_size() -> usize {
    65_536
}
fn default_batch_size() -> usize {
    512
}
fn default_interval_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    5_000
}

impl ExportConfig {
    /// Every problem with the section, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let tls = self.endpoint.starts_with("https://");
        if !tls && !self.endpoint.starts_with("http://") {
            p.push(format!(
                "audit.export.endpoint: '{}' is not an http(s) URL of an OTLP/gRPC receiver (e.g. http://127.0.0.1:4317)",
                self.endpoint
            ));
        } else if tonic::transport::Endpoint::from_shared(self.endpoint.clone()).is_err() {
            p.push(format!(
                "audit.export.endpoint: '{}' is not a valid URL",
                self.endpoint
            ));
        }
        if !tls && (self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()) {
            p.push(
                "audit.export.ca_file, cert_file and key_file: only with an https:// endpoint"
                    .into(),
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            p.push("audit.export: give both cert_file and key_file (or neither)".into());
        }
        if self.queue_size == 0 || self.queue_size > 1 << 24 {
            p.push("audit.export.queue_size: between 1 and 16777216".into());
        }
        if self.batch_size == 0 || self.batch_size > 65_536 {
            p.push("audit.export.batch_size: between 1 and 65536".into());
        }
        if self.interval_ms == 0 || self.timeout_ms == 0 {
            p.push("audit.export.interval_ms and audit.export.timeout_ms: at least 1".into());
        }
        if self.instance.as_deref() == Some("") {
            p.push(
                "audit.export.instance: must not be empty (leave it out for the host name)".into(),
            );
        }
        p
    }

    /// The TLS settings of an `https` endpoint, from the files named.
    fn tls(&self) -> Result<tonic::transport::ClientTlsConfig, String> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |field: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| format!("audit.export.{field}: cannot read {}: {e}", path.display()))
        };
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_file {
            Some(path) => tls.ca_certificate(Certificate::from_pem(read("ca_file", path)?)),
            None => tls.with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            tls = tls.identity(Identity::from_pem(
                read("cert_file", cert)?,
                read("key_file", key)?,
            ));
        }
        Ok(tls)
    }

    /// The `service.instance.id` of the export: `instance`, or the host
    /// name.
    pub fn instance_id(&self) -> String {
        self.instance.clone().unwrap_or_else(host_name)
    }
}

/// The host name (`gethostname(2)`), or `unknown`.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "unknown".into(),
    }
}

/// The export's counters (metrics `portcullis_audit_export_*`, and
/// `AuditService/Status`).
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Records accepted into the export queue.
    pub queued: AtomicU64,
    /// Records the collector accepted.
    pub exported: AtomicU64,
    /// Records not queued because the queue was full.
    pub dropped: AtomicU64,
    /// Records given up on: refused by the collector (a non-retryable
    /// error or a partial success), or still unsent at shutdown.
    pub failed: AtomicU64,
    /// Export calls that failed (each retry counts).
    pub errors: AtomicU64,
}

impl ExportCounters {
    /// Records queued and not yet exported or given up on.
    pub fn pending(&self) -> u64 {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        load(&self.queued).saturating_sub(load(&self.exported) + load(&self.failed))
    }
}

/// What the rest of the audit trail sees of a running export.
#[derive(Debug, Clone)]
pub struct ExportStatus {
    /// The collector's endpoint.
    pub endpoint: String,
    /// The counters.
    pub counters: Arc<ExportCounters>,
}

/// The writer's side: offers written records, never waiting.
#[derive(Debug)]
pub struct Feed {
    tx: mpsc::Sender<Arc<AuditRecord>>,
    counters: Arc<ExportCounters>,
}

impl Feed {
    /// Queues a written record for export; a full queue drops it (counted).
    pub fn offer(&self, record: &Arc<AuditRecord>) {
        match self.tx.try_send(Arc::clone(record)) {
            Ok(()) => self.counters.queued.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The export task, owned by the audit writer: it ends once the feed is
/// dropped and everything queued is sent, or at the deadline `stop` gives.
#[derive(Debug)]
pub struct Exporter {
    task: tokio::task::JoinHandle<()>,
    give_up: CancellationToken,
    drain: Duration,
}

impl Exporter {
    /// Waits (at most `timeout_ms`) for what is queued to be sent, then
    /// gives up on the rest (counted as failed). Call after the feed is
    /// dropped (the writer thread has ended).
    pub async fn stop(mut self) {
        if tokio::time::timeout(self.drain, &mut self.task)
            .await
            .is_err()
        {
            self.give_up.cancel();
            let _ = self.task.await;
        }
    }
}

/// Starts the export on the current Tokio runtime. The connection is made
/// lazily: an absent collector is not an error here, only later, counted.
pub fn start(config: &ExportConfig) -> Result<(Feed, Exporter, ExportStatus), String> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "audit.export: needs the async runtime".to_string())?;
    let timeout = Duration::from_millis(config.timeout_ms);
    let mut endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
        .map_err(|e| format!("audit.export.endpoint: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if config.endpoint.starts_with("https://") {
        endpoint = endpoint
            .tls_config(config.tls()?)
            .map_err(|e| format!("audit.export: cannot set up TLS: {e}"))?;
    }
    let channel = {
        let _entered = runtime.enter();
        endpoint.connect_lazy()
    };
    let (tx, rx) = mpsc::channel(config.queue_size);
    let counters = Arc::new(ExportCounters::default());
    let give_up = CancellationToken::new();
    let shipper = Shipper {
        client: LogsServiceClient::new(channel),
        resource: otlp::Resource::new(&config.service_name, &config.instance_id()),
        batch_size: config.batch_size,
        interval: Duration::from_millis(config.interval_ms),
        counters: Arc::clone(&counters),
        give_up: give_up.clone(),
        last_line: None,
        unlogged_drops: 0,
    };
    tracing::info!(
        endpoint = %config.endpoint,
        instance = %shipper.resource.instance,
        "audit records are exported as OTLP logs"
    );
    let task = runtime.spawn(shipper.run(rx));
    Ok((
        Feed {
            tx,
            counters: Arc::clone(&counters),
        },
        Exporter {
            task,
            give_up,
            drain: timeout,
        },
        ExportStatus {
            endpoint: config.endpoint.clone(),
            counters,
        },
    ))
}

/// The shortest time between two export warning lines.
const LINE_INTERVAL: Duration = Duration::from_secs(10);
/// Backoff between retries of a batch: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

struct Shipper {
    client: LogsServiceClient<tonic::transport::Channel>,
    resource: otlp::Resource,
    batch_size: usize,
    interval: Duration,
    counters: Arc<ExportCounters>,
    give_up: CancellationToken,
    last_line: Option<Instant>,
    /// Drops already seen by a warning line.
    unlogged_drops: u64,
}

impl Shipper {
    async fn run(mut self, mut rx: mpsc::Receiver<Arc<AuditRecord>>) {
        loop {
            let first = tokio::select! {
                r = rx.recv() => r,
                () = self.give_up.cancelled() => None,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.interval;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) | Err(_) => break,
                }
            }
            if !self.ship(batch).await {
                break;
            }
        }
        // Given up at shutdown: whatever is still queued is not exported.
        rx.close();
        let mut left = 0;
        while rx.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            self.counters.failed.fetch_add(left, Ordering::Relaxed);
            tracing::error!(
                records = left,
                "audit export: records still queued at shutdown were not exported (the collector did not take them in time); they are in the audit files"
            );
        }
    }

    /// Sends one batch, retrying what may succeed later (the collector
    /// down, overloaded or slow) with backoff. False when told to give up
    /// (the batch is counted as failed).
    async fn ship(&mut self, batch: Vec<Arc<AuditRecord>>) -> bool {
        let n = batch.len() as u64;
        let request = self.resource.request(&batch);
        let mut backoff = BACKOFF.0;
        loop {
            self.warn_of_drops();
            let call = self.client.export(request.clone());
            let outcome = tokio::select! {
                r = call => r,
                () = self.give_up.cancelled() => {
                    self.counters.failed.fetch_add(n, Ordering::Relaxed);
                    return false;
                }
            };
            match outcome {
                Ok(response) => {
                    let rejected = response
                        .into_inner()
                        .partial_success
                        .filter(|p| p.rejected_log_records > 0);
                    let refused = rejected
                        .as_ref()
                        .map_or(0, |p| (p.rejected_log_records as u64).min(n));
                    self.counters
                        .exported
                        .fetch_add(n - refused, Ordering::Relaxed);
                    if let Some(p) = rejected {
                        self.counters.failed.fetch_add(refused, Ordering::Relaxed);
                        self.warn(&format_args!(
                            "the collector rejected {refused} of {n} records: {}",
                            p.error_message
                        ));
                    }
                    return true;
                }
                Err(status) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    if !retryable(status.code()) {
                        self.counters.failed.fetch_add(n, Ordering::Relaxed);
                        self.warn(&format_args!(
                            "the collector refused a batch of {n} records ({}: {}); not retried",
                            status.code(),
                            status.message()
                        ));
                        return true;
                    }
                    self.warn(&format_args!(
                        "cannot export {n} records ({}: {}); retrying",
                        status.code(),
                        status.message()
                    ));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.give_up.cancelled() => {
                    self.counters.failed.fetch_add(n, Ordering::Relaxed);
                    return false;
                }
            }
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    fn warn_of_drops(&mut self) {
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        if dropped > self.unlogged_drops {
            let since = dropped - self.unlogged_drops;
            if self.warn(&format_args!(
                "the export queue is full: {since} record(s) dropped from the export (they are in the audit files)"
            )) {
                self.unlogged_drops = dropped;
            }
        }
    }

    /// Logs one warning line, at most one per [`LINE_INTERVAL`]; true when
    /// logged.
    fn warn(&mut self, what: &dyn std::fmt::Display) -> bool {
        let now = Instant::now();
        if self.last_line.is_some_and(|t| now < t + LINE_INTERVAL) {
            return false;
        }
        self.last_line = Some(now);
        tracing::warn!(
            exported = self.counters.exported.load(Ordering::Relaxed),
            dropped = self.counters.dropped.load(Ordering::Relaxed),
            failed = self.counters.failed.load(Ordering::Relaxed),
            "audit export: {what}"
        );
        true
    }
}

/// Codes after which the same batch may succeed (OTLP/gRPC's retryable
/// codes, OTLP specification "Failures").
fn retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled
            | DeadlineExceeded
            | Aborted
            | OutOfRange
            | Unavailable
            | DataLoss
            | ResourceExhausted
    )
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn problems(export: &str) -> String {
        let config =
            Config::parse(&format!("audit:\n  export:\n{export}"), Path::new("c.yaml")).unwrap();
        match config.check(Path::new("c.yaml")) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn settings_are_checked_and_defaulted() {
        assert_eq!(problems("    endpoint: http://127.0.0.1:4317\n"), "");
        let config = Config::parse(
            "audit:\n  export:\n    endpoint: http://collector:4317\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        let export = config.audit.export.unwrap();
        assert_eq!((export.queue_size, export.batch_size), (65_536, 512));
        assert!(!export.instance_id().is_empty(), "the host name");
        let p = problems(
            "    endpoint: grpc://collector:4317\n    queue_size: 0\n    batch_size: 0\n    timeout_ms: 0\n    instance: ''\n    key_file: k.pem\n",
        );
        for want in [
            "audit.export.endpoint",
            "is not an http(s) URL",
            "only with an https:// endpoint",
            "give both cert_file and key_file",
            "audit.export.queue_size",
            "audit.export.batch_size",
            "audit.export.timeout_ms",
            "audit.export.instance",
        ] {
            assert!(p.contains(want), "{want}: {p}");
        }
        let err = Config::parse(
            "audit:\n  export:\n    endpoint: http://c:4317\n    headers: {}\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("headers"), "unknown fields are named: {err}");
    }
}
