//! Drives a server with the request mix at a fixed concurrency over a few
//! HTTP/2 connections, and measures throughput and latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as RlsCode;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

use crate::report::{Percentiles, Phase};
use crate::requests::rls_call;
use crate::Args;

/// Drives one server with the request mix and measures it.
pub async fn drive(
    server: &'static str,
    addr: SocketAddr,
    args: &Args,
    requests: Arc<Calls>,
) -> anyhow::Result<Phase> {
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connect to {server} at {addr}"))?;
        channels.push(channel);
    }
    // Warm-up: same load, not measured.
    run_load(
        &channels,
        args.concurrency,
        Duration::from_secs_f64(args.warmup),
        None,
        &requests,
        &args.keys,
    )
    .await;
    let started = Instant::now();
    let results = run_load(
        &channels,
        args.concurrency,
        Duration::from_secs_f64(args.duration),
        args.requests,
        &requests,
        &args.keys,
    )
    .await;
    phase(server, results, started.elapsed().as_secs_f64())
}

/// The figures of one measured run from its workers' results.
pub fn phase(
    server: &'static str,
    results: Vec<WorkerResult>,
    seconds: f64,
) -> anyhow::Result<Phase> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut errors, mut allowed, mut denied) = (0, 0, 0);
    for w in results {
        hist.add(&w.hist)?;
        errors += w.errors;
        allowed += w.allowed;
        denied += w.denied;
    }
    let requests = hist.len();
    Ok(Phase {
        server,
        requests,
        errors,
        allowed,
        denied,
        seconds,
        throughput_rps: requests as f64 / seconds,
        latency_us: Percentiles {
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        },
    })
}

/// What one worker measured.
pub struct WorkerResult {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub allowed: u64,
    pub denied: u64,
}

impl WorkerResult {
    pub fn new() -> Self {
        WorkerResult {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            errors: 0,
            allowed: 0,
            denied: 0,
        }
    }

    /// One call that took `us` microseconds: allowed, denied or failed.
    pub fn record(&mut self, us: u64, outcome: Result<bool, ()>) {
        match outcome {
            Ok(allowed) => {
                let _ = self.hist.record(us.clamp(1, 60_000_000));
                if allowed {
                    self.allowed += 1;
                } else {
                    self.denied += 1;
                }
            }
            Err(()) => self.errors += 1,
        }
    }
}

/// `concurrency` workers, each with one request in flight, until `duration`
/// has passed or `limit` requests were sent in total.
async fn run_load(
    channels: &[Channel],
    concurrency: usize,
    duration: Duration,
    limit: Option<u64>,
    requests: &Arc<Calls>,
    keys: &Option<u64>,
) -> Vec<WorkerResult> {
    let deadline = Instant::now() + duration;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let channel = channels[w % channels.len()].clone();
        let mut authz = AuthorizationClient::new(channel.clone());
        let mut rls = RateLimitServiceClient::new(channel);
        let requests = Arc::clone(requests);
        let sent = Arc::clone(&sent);
        let keys = *keys;
        workers.spawn(async move {
            let mut r = WorkerResult::new();
            let mut i = w;
            while Instant::now() < deadline {
                let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if limit.is_some_and(|l| n >= l) {
                    break;
                }
                let t = Instant::now();
                let allowed = match &*requests {
                    Calls::Http(_) => unreachable!("HTTP calls are driven by http_load"),
                    Calls::Check(calls) => {
                        let req = calls[i % calls.len()].clone();
                        authz.check(req).await.map(|resp| {
                            matches!(
                                resp.into_inner().http_response,
                                Some(HttpResponse::OkResponse(_))
                            )
                        })
                    }
                    Calls::Rls(calls) => {
                        let req = match keys {
                            Some(k) => rls_call(n % k),
                            None => calls[i % calls.len()].clone(),
                        };
                        rls.should_rate_limit(req)
                            .await
                            .map(|resp| resp.into_inner().overall_code == RlsCode::Ok as i32)
                    }
                };
                i += concurrency;
                r.record(t.elapsed().as_micros() as u64, allowed.map_err(|_| ()));
            }
            r
        });
    }
    workers.join_all().await
}

/// The calls the workers cycle through.
pub enum Calls {
    Check(Vec<CheckRequest>),
    Rls(Vec<RateLimitRequest>),
    /// Forward-auth requests (`--rpc forward-auth`, `http_load`).
    Http(Vec<crate::http_load::HttpCall>),
}
