//! Drives a server with the request mix over a few HTTP/2 connections, and
//! measures throughput and latency: closed loop (a fixed number of requests
//! in flight, each worker sending its next as soon as its last is answered)
//! or open loop (`--rate`: a fixed arrival rate, latency counted from each
//! request's intended send time, as wrk2 does, so queueing in the server is
//! not hidden by a load generator that waits for it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as RlsCode;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};

use crate::cpu::{cpu_time, ServerCpu};
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
    let channels = connect(server, addr, args.connections).await?;
    let warmup = warmup_load(args);
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

/// `connections` HTTP/2 connections to `server` at `addr`.
async fn connect(
    server: &'static str,
    addr: SocketAddr,
    connections: usize,
) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..connections {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connect to {server} at {addr}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// The warm-up: the run's load for `--warmup` seconds, not measured.
fn warmup_load(args: &Args) -> Load {
    Load {
        concurrency: args.concurrency,
        duration: Duration::from_secs_f64(args.warmup),
        limit: None,
        rate: args.rate,
        keys: args.keys,
        first: 0,
    }
}

/// Two servers measured in alternating slices (`--baseline-target` and
/// `--target`, `--slices`): each server's figures over all of its slices,
/// and the throughput ratio of each pair of adjacent slices.
pub struct Interleaved {
    /// The baseline's slices together (the empty handler, `empty`).
    pub baseline: Phase,
    /// The target's slices together (`portcullis`).
    pub target: Phase,
    /// Per pair of slices: the target's throughput divided by the
    /// baseline's, in the order measured.
    pub ratios: Vec<f64>,
    /// With both servers' pids: the baseline's CPU per answer divided by
    /// the target's (`server_cpu`).
    pub cpu_ratio: Option<f64>,
}

/// Refuses what an interleaved run (`--baseline-target`, `--slices`)
/// cannot honour, before anything is measured. `http`: `--rpc
/// forward-auth`.
pub fn check_interleaved(args: &Args, http: bool) -> anyhow::Result<()> {
    let interleaved = args.baseline_target.is_some();
    anyhow::ensure!(
        !interleaved || (args.target.len() == 1 && !args.baseline),
        "--baseline-target compares with one --target: give one, and drop --baseline"
    );
    anyhow::ensure!(
        !interleaved || (args.rate.is_none() && !http),
        "--baseline-target interleaves closed-loop gRPC loads: drop --rate and --rpc forward-auth"
    );
    anyhow::ensure!(
        !interleaved || args.requests.is_none(),
        "--baseline-target measures slices of --duration: drop --requests"
    );
    anyhow::ensure!(
        (args.baseline_pid.is_none() && args.target_pid.is_none()) || interleaved,
        "--baseline-pid and --target-pid measure the slices of an interleaved run: add --baseline-target ADDR, or drop them"
    );
    anyhow::ensure!(
        args.slices.is_none() || interleaved,
        "--slices divides an interleaved run: add --baseline-target ADDR, or drop --slices"
    );
    Ok(())
}

/// Measures `target` against `baseline` with the same closed-loop load, in
/// `slices` pairs of slices of `--duration / slices` seconds each, both
/// servers up and connected throughout. A pair's two slices run back to
/// back, in turn baseline first and target first (ABBA), so that a host
/// whose speed drifts during the run (a virtual machine's does, by tens
/// of percent within seconds) moves both sides of a pair alike: the ratio
/// of each pair is the evidence, not two long runs minutes apart. Both
/// servers are warmed up first (`--warmup` each).
pub async fn drive_interleaved(
    baseline: SocketAddr,
    target: SocketAddr,
    slices: usize,
    args: &Args,
    requests: Arc<Calls>,
) -> anyhow::Result<Interleaved> {
    anyhow::ensure!(slices > 0, "--slices must be at least 1");
    let sides = [
        connect("empty", baseline, args.connections).await?,
        connect("portcullis", target, args.connections).await?,
    ];
    let warmup = warmup_load(args);
    let mut sent = [0u64; 2];
    for (side, channels) in sides.iter().enumerate() {
        sent[side] = calls(&run_load(channels, &warmup, &requests).await);
    }
    let slice = Duration::from_secs_f64(args.duration / slices as f64);
    let mut results: [Vec<WorkerResult>; 2] = [Vec::new(), Vec::new()];
    let mut seconds = [0.0f64; 2];
    // Each side's server process, if given, and the CPU it used in its
    // slices.
    let pids = [args.baseline_pid, args.target_pid];
    for pid in pids.into_iter().flatten() {
        cpu_time(pid)?;
    }
    let mut used = [Duration::ZERO; 2];
    let mut ratios = Vec::with_capacity(slices);
    for k in 0..slices {
        let order = if k % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut rps = [0.0f64; 2];
        for side in order {
            let load = Load {
                duration: slice,
                first: sent[side],
                ..warmup
            };
            let cpu_before = pids[side].map(cpu_time).transpose()?;
            let started = Instant::now();
            let r = run_load(&sides[side], &load, &requests).await;
            let elapsed = started.elapsed().as_secs_f64();
            if let (Some(pid), Some(before)) = (pids[side], cpu_before) {
                used[side] += cpu_time(pid)?.saturating_sub(before);
            }
            sent[side] += calls(&r);
            rps[side] = r.iter().map(|w| w.hist.len()).sum::<u64>() as f64 / elapsed;
            seconds[side] += elapsed;
            results[side].extend(r);
        }
        ratios.push(if rps[0] > 0.0 { rps[1] / rps[0] } else { 0.0 });
    }
    let [base, real] = results;
    let mut measured = [
        phase("empty", base, seconds[0], None)?,
        phase("portcullis", real, seconds[1], None)?,
    ];
    for (side, p) in measured.iter_mut().enumerate() {
        if pids[side].is_some() {
            p.server_cpu = ServerCpu::of(used[side], p.seconds, p.requests);
        }
    }
    let [baseline, target] = measured;
    let cpu_ratio = match (&baseline.server_cpu, &target.server_cpu) {
        (Some(base), Some(real)) if real.us_per_request > 0.0 => {
            Some(base.us_per_request / real.us_per_request)
        }
        _ => None,
    };
    Ok(Interleaved {
        baseline,
        target,
        ratios,
        cpu_ratio,
    })
}

/// Calls sent in a phase, answered or failed.
fn calls(results: &[WorkerResult]) -> u64 {
    results.iter().map(|w| w.hist.len() + w.errors).sum()
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The figures of one measured run from its workers' results; `rate` is
/// the open-loop arrival rate, if the run had one.
pub fn phase(
    server: &'static str,
    results: Vec<WorkerResult>,
    seconds: f64,
    rate: Option<f64>,
) -> anyhow::Result<Phase> {
    let (mut hist, mut pacing) = (micros(), micros());
    let (mut errors, mut allowed, mut denied, mut late) = (0, 0, 0, 0);
    for w in results {
        hist.add(&w.hist)?;
        pacing.add(&w.pacing)?;
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
        pacing_lag_us: rate.map(|_| Percentiles::of(&pacing)),
        latency_us: Percentiles::of(&hist),
        server_cpu: None,
    })
}

/// The longest time a histogram holds, microseconds (a minute); longer
/// times are recorded as this.
const MAX_US: u64 = 60_000_000;

/// A histogram of microseconds, 1 to [`MAX_US`], three significant digits.
fn micros() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid bounds")
}

/// What one worker measured.
pub struct WorkerResult {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Open loop: calls that were due while `--concurrency` calls were
    /// in flight, so they waited for one to be answered.
    pub late: u64,
    /// Open loop: how late the pacer handed each call over, microseconds
    /// after its intended time (the load generator's own lag).
    pub pacing: Histogram<u64>,
}

impl WorkerResult {
    pub fn new() -> Self {
        WorkerResult {
            hist: micros(),
            errors: 0,
            allowed: 0,
            denied: 0,
            late: 0,
            pacing: micros(),
        }
    }

    /// The pacer handed a call over `us` microseconds after it was due.
    pub fn pace(&mut self, us: u64) {
        let _ = self.pacing.record(us.clamp(1, MAX_US));
    }

    /// One call that took `us` microseconds: allowed, denied or failed.
    pub fn record(&mut self, us: u64, outcome: Result<bool, ()>) {
        match outcome {
            Ok(allowed) => {
                let _ = self.hist.record(us.clamp(1, MAX_US));
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
    /// Open loop: requests per second, call `k` due at `start + k / rate`
    /// ([`open_loop`]); `concurrency` then bounds the calls in flight.
    rate: Option<f64>,
    /// `--keys`: RLS calls numbered by the call.
    keys: Option<u64>,
    /// Calls already sent to this server in the run: where in the mix
    /// (and in `--keys`) this phase goes on, so that the slices of an
    /// interleaved run walk the mix as one run would (each of the
    /// uncached mix's tokens new to the server, not the first ones again).
    first: u64,
}

/// `concurrency` workers until `duration` has passed or `limit` requests
/// were sent in total, each sending as soon as its last request is
/// answered (closed loop); with `rate`, the open loop of [`open_loop`].
async fn run_load(channels: &[Channel], load: &Load, requests: &Arc<Calls>) -> Vec<WorkerResult> {
    if let Some(rate) = load.rate {
        return open_loop(channels, load, rate, requests).await;
    }
    let Load {
        concurrency,
        duration,
        limit,
        keys,
        first,
        ..
    } = *load;
    let deadline = Instant::now() + duration;
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let mut client = Client::new(&channels[w % channels.len()]);
        let requests = Arc::clone(requests);
        let sent = Arc::clone(&sent);
        workers.spawn(async move {
            let mut r = WorkerResult::new();
            let mut i = first as usize + w;
            while Instant::now() < deadline {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|l| n >= l) {
                    break;
                }
                let t = Instant::now();
                let outcome = client.call(&requests, i, first + n, keys).await;
                i += concurrency;
                r.record(t.elapsed().as_micros() as u64, outcome);
            }
            r
        });
    }
    workers.join_all().await
}

/// Open loop at `rate` requests per second: call `k` is due at
/// `start + k / rate`, evenly spaced, and its latency counts from that
/// intended time to its answer, whatever delayed it (wrk2's correction
/// for coordinated omission).
///
/// The pacer hands each call to a task of its own when it is due. Tokio's
/// timer wakes in whole milliseconds, which would release the calls due
/// within one millisecond together, a burst the server would queue and
/// the report would charge to it; so within [`SPIN_WITHIN`] of the next
/// call the pacer yields instead of sleeping. The open loop runs on a
/// current-thread runtime (`main`), where each yield polls the sockets
/// without blocking: the generator spins its core (the load core, not the
/// server's) and hands calls over within microseconds of their time. A
/// `timerfd` instead (tried) woke tens of microseconds late and cost more
/// CPU, each wake-up an exit from an idle virtual CPU. How late the pacer
/// handed calls over is reported apart ([`WorkerResult::pacing`]), so a
/// load generator that cannot keep up shows. At most `concurrency` calls
/// are in flight; a call due while all are unanswered waits for one
/// (counted in `late`, its wait in its latency).
async fn open_loop(
    channels: &[Channel],
    load: &Load,
    rate: f64,
    requests: &Arc<Calls>,
) -> Vec<WorkerResult> {
    let (duration, keys, first) = (load.duration, load.keys, load.first);
    let clients: Vec<Client> = channels.iter().map(Client::new).collect();
    let slots = Arc::new(Semaphore::new(load.concurrency));
    let result = Arc::new(Mutex::new(WorkerResult::new()));
    let tracker = TaskTracker::new();
    let due = (duration.as_secs_f64() * rate).ceil() as u64;
    let calls = load.limit.map_or(due, |l| l.min(due));
    let every = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    for k in 0..calls {
        let intended = start + every.mul_f64(k as f64);
        loop {
            let now = Instant::now();
            if now >= intended {
                break;
            }
            if intended - now > SPIN_WITHIN {
                tokio::time::sleep_until((intended - SPIN_WITHIN).into()).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        let lag = intended.elapsed().as_micros() as u64;
        result.lock().expect("no panics under the lock").pace(lag);
        let mut client = clients[k as usize % clients.len()].clone();
        let (slots, result, requests) = (
            Arc::clone(&slots),
            Arc::clone(&result),
            Arc::clone(requests),
        );
        tracker.spawn(async move {
            let late = slots.available_permits() == 0;
            let _slot = slots.acquire().await.expect("never closed");
            let outcome = client
                .call(&requests, (first + k) as usize, first + k, keys)
                .await;
            let us = intended.elapsed().as_micros() as u64;
            let mut r = result.lock().expect("no panics under the lock");
            r.late += u64::from(late);
            r.record(us, outcome);
        });
    }
    tracker.close();
    tracker.wait().await;
    let r = std::mem::replace(
        &mut *result.lock().expect("no panics under the lock"),
        WorkerResult::new(),
    );
    vec![r]
}

/// Open loop: the pacer yields instead of sleeping when the next call is
/// due within this long (tokio's timer wakes in whole milliseconds).
const SPIN_WITHIN: Duration = Duration::from_millis(2);

/// One connection's clients for both RPCs.
#[derive(Clone)]
struct Client {
    authz: AuthorizationClient<Channel>,
    rls: RateLimitServiceClient<Channel>,
}

impl Client {
    fn new(channel: &Channel) -> Self {
        Client {
            authz: AuthorizationClient::new(channel.clone()),
            rls: RateLimitServiceClient::new(channel.clone()),
        }
    }

    /// Sends call `i` of the mix (with `--keys`, RLS key `n % keys`);
    /// `Ok(true)` when allowed, `Err(())` on a gRPC error.
    async fn call(
        &mut self,
        requests: &Calls,
        i: usize,
        n: u64,
        keys: Option<u64>,
    ) -> Result<bool, ()> {
        let outcome = match requests {
            Calls::Http(_) => unreachable!("HTTP calls are driven by http_load"),
            Calls::Check(calls) => {
                let req = calls[i % calls.len()].clone();
                self.authz.check(req).await.map(|resp| {
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
                self.rls
                    .should_rate_limit(req)
                    .await
                    .map(|resp| resp.into_inner().overall_code == RlsCode::Ok as i32)
            }
        };
        outcome.map_err(|_| ())
    }
}

/// The calls the workers cycle through.
pub enum Calls {
    Check(Vec<CheckRequest>),
    Rls(Vec<RateLimitRequest>),
    /// Forward-auth requests (`--rpc forward-auth`, `http_load`).
    Http(Vec<crate::http_load::HttpCall>),
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_an_odd_count_is_the_middle_value() {
        assert_eq!(median(&[0.9, 0.7, 0.8]), Some(0.8));
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[1.0, 0.25, 0.5, 0.75]), Some(0.625));
    }

    #[test]
    fn no_values_have_no_median() {
        assert_eq!(median(&[]), None);
    }
}
