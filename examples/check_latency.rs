//! Measures ext_authz `Check` round trips against a running Portcullis:
//! N calls of an anonymous `GET /v1/status`, `C` at a time on one HTTP/2
//! connection; prints throughput and latency percentiles.
//!
//!   cargo run --release --example check_latency -- 127.0.0.1:50051 2000 1
//!
//! A measuring tool, not a test: numbers depend on the machine and build.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

fn request(i: usize) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: format!("bench-{i}"),
                    method: "GET".into(),
                    path: "/v1/status".into(),
                    host: "api.bench".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:50051".into());
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let concurrency: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1)
        .max(1);
    let client = AuthorizationClient::connect(format!("http://{addr}")).await?;
    // Warm up the connection and the server.
    client.clone().check(request(0)).await?;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut latencies: Vec<Duration> = Vec::with_capacity(n);
    for i in 0..n {
        if tasks.len() >= concurrency {
            latencies.push(tasks.join_next().await.expect("a task")??);
        }
        let mut c = client.clone();
        tasks.spawn(async move {
            let t = Instant::now();
            c.check(request(i)).await.map(|_| t.elapsed())
        });
    }
    while let Some(done) = tasks.join_next().await {
        latencies.push(done??);
    }
    let total = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{n} checks, concurrency {concurrency}: {:.0}/s; latency p50 {:?}, p99 {:?}, max {:?}",
        n as f64 / total.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}
