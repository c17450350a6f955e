//! The audit export (`audit.export`) through the real binary: a
//! collector-like OTLP/gRPC receiver written here (the LogsService
//! `Export` RPC on 127.0.0.1:0) receives every record the server wrote,
//! with its chain fields, and `portcullis audit verify` re-verifies the
//! chain from an OTLP/JSON dump of what it received, with the Ed25519
//! public key alone, and names an edited record. A collector that refuses
//! connections, or accepts them and never answers, holds up no decision,
//! and every record it did not take is counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use serde_json::{json, Value};

use crate::audit::{admin, audit_verify, decisions, records_on_disk, Setup};
use crate::support::{metric, parse_metrics, ClosedPort};

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportLogsServiceRequest>>>);

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves `service` on 127.0.0.1:0 with a server built as the caller says
/// (e.g. with TLS); the address to export to.
async fn serve(
    service: impl LogsService,
    mut builder: tonic::transport::Server,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = builder
        .add_service(LogsServiceServer::new(service))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    (addr, tokio::spawn(async move { server.await.unwrap() }))
}

/// A collector that takes every request and rejects every record in it
/// (an OTLP partial success), saying why.
#[derive(Clone, Default)]
struct Rejecting;

#[tonic::async_trait]
impl LogsService for Rejecting {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;
        let records: usize = request
            .get_ref()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: records as i64,
                error_message: "the backend refuses these records".into(),
            }),
        }))
    }
}

impl Collector {
    /// Serves the logs service on 127.0.0.1:0; the address to export to.
    async fn start(&self) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        serve(self.clone(), tonic::transport::Server::builder()).await
    }

    /// The requests received so far, as the OpenTelemetry collector's
    /// `file` exporter writes them: one OTLP/JSON request per line.
    fn otlp_json_lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|r| otlp_json(r).to_string())
            .collect()
    }
}

fn attributes_json(attributes: &[KeyValue]) -> Value {
    attributes
        .iter()
        .map(|a| {
            let value = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => json!({ "stringValue": s }),
                // OTLP/JSON writes 64-bit integers as strings.
                Some(any_value::Value::IntValue(i)) => json!({ "intValue": i.to_string() }),
                other => panic!("unexpected attribute value {other:?}"),
            };
            json!({ "key": a.key, "value": value })
        })
        .collect()
}

/// OTLP/JSON (the protobuf JSON mapping with OTLP's lowerCamelCase names)
/// of an export request, for the fields the export sets.
fn otlp_json(request: &ExportLogsServiceRequest) -> Value {
    let resource_logs: Vec<Value> = request
        .resource_logs
        .iter()
        .map(|rl| {
            let scope_logs: Vec<Value> = rl
                .scope_logs
                .iter()
                .map(|sl| {
                    let logs: Vec<Value> = sl
                        .log_records
                        .iter()
                        .map(|l| {
                            let Some(any_value::Value::StringValue(body)) =
                                l.body.as_ref().and_then(|b| b.value.as_ref())
                            else {
                                panic!("a string body: {l:?}")
                            };
                            json!({
                                "timeUnixNano": l.time_unix_nano.to_string(),
                                "severityNumber": l.severity_number,
                                "severityText": l.severity_text,
                                "eventName": l.event_name,
                                "body": { "stringValue": body },
                                "attributes": attributes_json(&l.attributes),
                                "traceId": hex::encode(&l.trace_id),
                            })
                        })
                        .collect();
                    let scope = sl.scope.as_ref().expect("a scope");
                    json!({
                        "scope": { "name": scope.name, "version": scope.version },
                        "logRecords": logs,
                    })
                })
                .collect();
            let resource = rl.resource.as_ref().expect("a resource");
            json!({
                "resource": { "attributes": attributes_json(&resource.attributes) },
                "scopeLogs": scope_logs,
            })
        })
        .collect();
    json!({ "resourceLogs": resource_logs })
}

/// seq -> (chain attributes seq, prev, hash; the body) of every record
/// received, and the `service.instance.id` of each request.
fn received(collector: &Collector) -> (BTreeMap<u64, (Value, String)>, Vec<String>) {
    let mut records = BTreeMap::new();
    let mut instances = Vec::new();
    for line in collector.otlp_json_lines() {
        let request: Value = serde_json::from_str(&line).unwrap();
        for rl in request["resourceLogs"].as_array().unwrap() {
            let attribute = |attrs: &Value, key: &str| -> Value {
                attrs
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["key"] == key)
                    .map(|a| a["value"].clone())
                    .unwrap_or(Value::Null)
            };
            instances.push(
                attribute(&rl["resource"]["attributes"], "service.instance.id")["stringValue"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            for sl in rl["scopeLogs"].as_array().unwrap() {
                assert_eq!(sl["scope"]["name"], "portcullis.audit");
                for log in sl["logRecords"].as_array().unwrap() {
                    let attrs = &log["attributes"];
                    let chain = json!({
                        "seq": attribute(attrs, "portcullis.audit.seq")["intValue"],
                        "prev": attribute(attrs, "portcullis.audit.prev")["stringValue"],
                        "hash": attribute(attrs, "portcullis.audit.hash")["stringValue"],
                    });
                    let seq: u64 = chain["seq"].as_str().unwrap().parse().unwrap();
                    let body = log["body"]["stringValue"].as_str().unwrap().to_string();
                    records.insert(seq, (chain, body));
                }
            }
        }
    }
    (records, instances)
}

/// An Ed25519 signing key file and its public key file, in `dir`.
fn signing_key(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use portcullis::audit::signing::{generate_pkcs8, pkcs8_pem, SigningKey};
    let der = generate_pkcs8();
    let private = dir.join("signing.pem");
    let public = dir.join("signing.pub.pem");
    std::fs::write(&private, pkcs8_pem(&der)).unwrap();
    std::fs::write(
        &public,
        SigningKey::from_pkcs8(&der).unwrap().public_key().to_pem(),
    )
    .unwrap();
    (private, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_records_carry_their_chain_and_reverify_from_a_collector_dump() {
    let collector = Collector::default();
    let (addr, server) = collector.start().await;
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = signing_key(keys.path());
    let setup = Setup::with_extra(
        10,
        &format!(
            "  signing_key_file: {}\n  export:\n    endpoint: http://{addr}\n    instance: replica-a\n    interval_ms: 50\n",
            private.display()
        ),
    );
    let mut pdp = setup.start();
    decisions(pdp.addr(), 30, 4).await;
    let status = admin(&mut pdp, Some("dave"), "AuditService/Status", &json!({}));
    assert_eq!(status["durability"], "written", "{status}");
    assert_eq!(
        status["export"]["endpoint"],
        format!("http://{addr}"),
        "{status}"
    );
    // SIGTERM: the final checkpoint is written, then exported.
    assert!(pdp.terminate(Duration::from_secs(20)).success());

    let on_disk = records_on_disk(&setup.audit_dir());
    let (exported, instances) = received(&collector);
    assert!(instances.iter().all(|i| i == "replica-a"), "{instances:?}");
    assert_eq!(
        exported.len(),
        on_disk.len(),
        "every written record is exported, once per seq\nstderr:\n{}",
        pdp.stderr()
    );
    for record in &on_disk {
        let seq = record["seq"].as_u64().unwrap();
        let (chain, body) = &exported[&seq];
        assert_eq!(chain["seq"], seq.to_string());
        assert_eq!(chain["prev"], record["prev"], "seq {seq}");
        assert_eq!(chain["hash"], record["hash"], "seq {seq}");
        assert_eq!(
            &serde_json::from_str::<Value>(body).unwrap(),
            record,
            "seq {seq}"
        );
    }
    assert!(
        on_disk
            .iter()
            .any(|r| r["kind"] == "checkpoint" && r["checkpoint_sig"].is_string()),
        "the chain has Ed25519 checkpoints to check"
    );

    // The dump as the collector's file exporter writes it, with one batch
    // delivered twice (an export retried): the chain verifies with the
    // public key alone.
    let dump_dir = tempfile::tempdir().unwrap();
    let dump = dump_dir.path().join("audit-logs.json");
    let mut lines = collector.otlp_json_lines();
    lines.push(lines[0].clone());
    std::fs::write(&dump, lines.join("\n") + "\n").unwrap();
    let flags = ["--public-key".as_ref(), public.as_os_str()];
    let (ok, out) = audit_verify(&dump, &flags);
    assert!(ok, "{out}");
    assert!(out.contains("chain replica-a: ok:"), "{out}");
    assert!(
        out.contains(&format!("{} record(s)", on_disk.len())),
        "{out}"
    );

    // An edited record in the export is named.
    let edited: Vec<String> = lines
        .iter()
        .map(|l| l.replacen("load-3", "load-X", 1))
        .collect();
    assert_ne!(edited, lines, "the dump holds request id load-3");
    std::fs::write(&dump, edited.join("\n") + "\n").unwrap();
    let (ok, out) = audit_verify(&dump, &flags);
    assert!(!ok, "{out}");
    assert!(out.contains("chain replica-a: BROKEN"), "{out}");
    assert!(out.contains("does not match its hash"), "{out}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_exported_over_tls_to_a_collector_that_requires_a_client_certificate() {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let pki = crate::support::TestPki::generate();
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&pki.server_cert),
            read(&pki.server_key),
        ))
        .client_ca_root(Certificate::from_pem(read(&pki.ca)));
    let collector = Collector::default();
    let (addr, server) = serve(
        collector.clone(),
        tonic::transport::Server::builder().tls_config(tls).unwrap(),
    )
    .await;
    let setup = Setup::with_extra(
        1000,
        &format!(
            "  export:\n    endpoint: https://localhost:{}\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n    interval_ms: 20\n",
            addr.port(),
            pki.ca.display(),
            pki.client_cert.display(),
            pki.client_key.display()
        ),
    );
    let mut pdp = setup.start();
    decisions(pdp.addr(), 6, 2).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let on_disk = loop {
        let on_disk = records_on_disk(&setup.audit_dir());
        if received(&collector).0.len() >= on_disk.len() {
            break on_disk;
        }
        assert!(
            Instant::now() < deadline,
            "the records reach the TLS collector within 15 s\nstderr:\n{}",
            pdp.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(on_disk.len() >= 6, "{on_disk:?}");
    assert!(pdp.terminate(Duration::from_secs(20)).success());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_collector_rejects_are_counted_as_failed_not_exported() {
    let (addr, server) = serve(Rejecting, tonic::transport::Server::builder()).await;
    let setup = Setup::with_extra(
        1000,
        &format!("  export:\n    endpoint: http://{addr}\n    interval_ms: 10\n"),
    );
    let mut pdp = setup.start();
    decisions(pdp.addr(), 10, 2).await;
    wait_for_metrics(&mut pdp, "every written record counted as failed", |text| {
        let m = &parse_metrics(text);
        let records = |result: &str| {
            metric(
                m,
                "portcullis_audit_export_records_total",
                &[("result", result)],
            )
        };
        let written = metric(m, "portcullis_audit_records_written_total", &[]);
        written >= 10.0 && records("failed") == written && records("exported") == 0.0
    });
    assert!(
        pdp.stderr().contains("the collector rejected")
            && pdp.stderr().contains("the backend refuses these records"),
        "{}",
        pdp.stderr()
    );
    assert!(pdp.terminate(Duration::from_secs(20)).success());
    server.abort();
}

/// Waits (at most 15 s) until `check` holds for the scraped metrics.
fn wait_for_metrics(
    pdp: &mut crate::support::Portcullis,
    what: &str,
    check: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, text) = pdp.http_get("/metrics");
        if check(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within 15 s; metrics:\n{text}\nstderr:\n{}",
            pdp.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_silent_collector_never_holds_up_decisions_and_every_loss_is_counted() {
    // Accepts connections and never answers: every export call hangs
    // until its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let refusing = ClosedPort::new();
    for (name, addr) in [("refusing", refusing.addr), ("silent", silent_addr)] {
        // fail_closed + written: answers wait for the audit write, and
        // must not wait for the export.
        let setup = Setup::with_extra(
            1000,
            &format!(
                "  on_full: fail_closed\n  durability: written\n  export:\n    endpoint: http://{addr}\n    queue_size: 4\n    batch_size: 2\n    interval_ms: 10\n    timeout_ms: 300\n"
            ),
        );
        let mut pdp = setup.start();
        let ids = decisions(pdp.addr(), 40, 4).await;
        assert_eq!(ids.len(), 40, "{name}: every decision answered");
        let records = records_on_disk(&setup.audit_dir());
        let refused = records.iter().filter(|r| r["status"] == 503).count();
        assert_eq!(
            refused, 0,
            "{name}: no decision refused for the export's sake"
        );

        wait_for_metrics(
            &mut pdp,
            &format!("{name}: drops and failed calls counted"),
            |text| {
                let m = &parse_metrics(text);
                let records = |result: &str| {
                    metric(
                        m,
                        "portcullis_audit_export_records_total",
                        &[("result", result)],
                    )
                };
                records("dropped") > 0.0
                    && records("exported") == 0.0
                    && metric(m, "portcullis_audit_export_errors_total", &[]) > 0.0
            },
        );
        assert!(pdp.terminate(Duration::from_secs(15)).success(), "{name}");
        let stderr = pdp.stderr();
        assert!(
            stderr.contains("audit export: "),
            "{name}: a warning line\n{stderr}"
        );
        assert!(
            stderr.contains("were not exported"),
            "{name}: what was still queued at shutdown is reported\n{stderr}"
        );
        let (ok, out) = audit_verify(&setup.audit_dir(), &[]);
        assert!(ok, "{name}: the files are whole: {out}");
    }
    held.abort();
}
