//! OTLP export through the real binary: a fake collector (the OTLP/gRPC
//! trace service on 127.0.0.1:0) receives the `check` span of a request,
//! in the gateway's trace (`traceparent`), named after the service; the
//! spans still batched at SIGTERM are sent before the process exits, on
//! either runtime scheduler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::support::{self, Check};

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// (service name, span name, trace id hex, parent span id hex) of every
/// span received so far.
fn spans(collector: &Collector) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for req in collector.0.lock().unwrap().iter() {
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push((
                        service.clone(),
                        s.name.clone(),
                        hex::encode(&s.trace_id),
                        hex::encode(&s.parent_span_id),
                    ));
                }
            }
        }
    }
    out
}

/// A fake collector on 127.0.0.1:0: its address, what it received, and
/// its task (abort it at the end).
async fn collector() -> (
    std::net::SocketAddr,
    Collector,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, collector, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_batched_at_sigterm_are_exported_before_exit_on_either_scheduler() {
    for threads in [1, 2] {
        let (addr, collector, server) = collector().await;
        let dir = tempfile::tempdir().unwrap();
        // A batch interval far beyond the test: only the flush at exit
        // can send the span.
        let config = support::write_config_with(
            dir.path(),
            &format!(
                "server: {{ worker_threads: {threads} }}\notlp:\n  endpoint: \"http://{addr}\"\n  service_name: portcullis-test\n  export_interval_ms: 600000\n"
            ),
        );
        let mut pdp = support::Portcullis::start(&["--config", config.to_str().unwrap()]);
        let mut client = AuthorizationClient::connect(format!("http://{}", pdp.addr()))
            .await
            .unwrap();
        client
            .check(
                Check::get("/v1/status")
                    .header("x-request-id", "otlp-exit")
                    .build(),
            )
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let status = tokio::task::spawn_blocking(move || {
            let status = pdp.terminate(Duration::from_secs(20));
            (status, pdp.stderr())
        })
        .await
        .unwrap();
        let (status, stderr) = status;
        assert!(
            status.success(),
            "worker_threads {threads}: {status:?}\n{stderr}"
        );
        let all = spans(&collector);
        assert!(
            all.iter().any(|s| s.1 == "check"),
            "worker_threads {threads}: no `check` span flushed at exit (took {:?}); received {all:?}\nstderr:\n{stderr}",
            started.elapsed()
        );
        assert!(
            !stderr.contains("flushing spans at exit failed"),
            "{stderr}"
        );
        server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_spans_are_exported_in_the_gateways_trace() {
    let (addr, collector, server) = collector().await;

    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config_with(
        dir.path(),
        &format!(
            "otlp:\n  endpoint: \"http://{addr}\"\n  service_name: portcullis-test\n  export_interval_ms: 100\n"
        ),
    );
    let pdp = support::Portcullis::start(&["--config", config.to_str().unwrap()]);
    let mut client = AuthorizationClient::connect(format!("http://{}", pdp.addr()))
        .await
        .unwrap();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    client
        .check(
            Check::get("/v1/status")
                .header("traceparent", &format!("00-{trace_id}-{parent}-01"))
                .header("x-request-id", "otlp-1")
                .build(),
        )
        .await
        .unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let found = loop {
        let all = spans(&collector);
        if let Some(s) = all.iter().find(|s| s.1 == "check").cloned() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `check` span within 15 s; received {all:?}\nstderr:\n{}",
            pdp.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found.2, trace_id, "{found:?}");
    assert_eq!(found.3, parent, "{found:?}");
    assert!(found.0.contains("portcullis-test"), "{found:?}");
    server.abort();
}
