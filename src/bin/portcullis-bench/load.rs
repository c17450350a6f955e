//! Drives a server with the request mix over a few HTTP/2 connections, and
//! measures throughput and latency: closed loop (a fixed number of requests
//! in flight, each worker sending its next as soon as its last is answered)
//! or open loop (`--rate`: a fixed arrival rate, latency counted from each
//! request's intended send time, as wrk2 does, so queueing in the server is
//! not hidden by a load generator that waits for it).

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
    let warmup = Load {
        concurrency: args.concurrency,
        duration: Duration::from_secs_f64(args.warmup),
        limit: None,
        rate: args.rate,
        keys: args.keys,
    };
    run_load(&channels, &warmup, &requests).await;
    let started = Instant::now();
    let measured = Load {
        duration: Duration::from_secs_f64(args.duration),
        limit: args.requests,
        ..warmup
    };
    let results = run_load(&channels, &measured, &requests).await;
    phase(server, results, started.elapsed().as_secs_f64(), args.rate)
}

/// The figures of one measured run from its workers' results; `rate` is
/// the open-loop arrival rate, if the run had one.
pub fn phase(
    server: &'static str,
    results: Vec<WorkerResult>,
    seconds: f64,
    rate: Option<f64>,
) -> anyhow::Result<Phase> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut errors, mut allowed, mut denied, mut late) = (0, 0, 0, 0);
    for w in results {
        hist.add(&w.hist)?;
        errors += w.errors;
        allowed += w.allowed;
        denied += w.denied;
        late += w.late;
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
        target_rps: rate,
        late: rate.map(|_| late),
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
    /// Open loop: requests sent after their intended time because this
    /// worker's previous request was still unanswered.
    pub late: u64,
}

impl WorkerResult {
    pub fn new() -> Self {
        WorkerResult {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            errors: 0,
            allowed: 0,
            denied: 0,
            late: 0,
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

/// One load phase.
#[derive(Clone, Copy)]
struct Load {
    /// Workers, each with at most one request in flight.
    concurrency: usize,
    /// How long the phase sends.
    duration: Duration,
    /// Stop after this many requests in total.
    limit: Option<u64>,
    /// Open loop: requests per second over all workers; worker `w` sends
    /// request `k` at `start + (k * concurrency + w) / rate`.
    rate: Option<f64>,
    /// `--keys`: RLS calls numbered by the call.
    keys: Option<u64>,
}

/// `concurrency` workers until `duration` has passed or `limit` requests
/// were sent in total: closed loop (each worker sends as soon as its last
/// request is answered), or open loop at `rate`.
///
/// Open-loop latency is counted from the intended send time when the worker
/// was still waiting for its previous answer at that time (the delay is the
/// server's queue, wrk2's coordinated-omission correction); a worker that
/// was idle sleeps until the intended time and counts from the moment it
/// sends, so the timer's millisecond granularity is not charged to the
/// server.
async fn run_load(channels: &[Channel], load: &Load, requests: &Arc<Calls>) -> Vec<WorkerResult> {
    let Load {
        concurrency,
        duration,
        limit,
        rate,
        keys,
    } = *load;
    let start = Instant::now();
    let deadline = start + duration;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let channel = channels[w % channels.len()].clone();
        let mut authz = AuthorizationClient::new(channel.clone());
        let mut rls = RateLimitServiceClient::new(channel);
        let requests = Arc::clone(requests);
        let sent = Arc::clone(&sent);
        // Open loop: this worker's first send time and its interval.
        let schedule = rate.map(|rate| {
            (
                start + Duration::from_secs_f64(w as f64 / rate),
                Duration::from_secs_f64(concurrency as f64 / rate),
            )
        });
        workers.spawn(async move {
            let mut r = WorkerResult::new();
            let mut i = w;
            let mut next = schedule.map(|(first, _)| first);
            while Instant::now() < deadline {
                let t = match (next, schedule) {
                    (Some(intended), Some((_, every))) => {
                        if intended >= deadline {
                            break;
                        }
                        next = Some(intended + every);
                        if Instant::now() < intended {
                            tokio::time::sleep_until(intended.into()).await;
                            Instant::now()
                        } else {
                            r.late += 1;
                            intended
                        }
                    }
                    _ => Instant::now(),
                };
                let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if limit.is_some_and(|l| n >= l) {
                    break;
                }
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
