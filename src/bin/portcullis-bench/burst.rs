//! `--burst N`: N concurrent RLS `ShouldRateLimit` calls on one descriptor
//! value, spread round-robin over one or more running servers
//! (`--target`, repeated), all sent at once; reports how they were
//! answered and how long they took. This is the load of the quota fault
//! matrix (scripts/quota-fault-matrix.sh): replicas sharing a store, one
//! limit, one value, every call at the same moment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use serde::Serialize;
use tonic::transport::Endpoint;

/// The most calls one burst sends.
pub const MAX_CALLS: usize = 100_000;

/// How long one call of a burst may take before it counts as an error
/// (the client gives up): far above any deadline Portcullis applies, so
/// only a server that never answers reaches it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What one burst asks for.
#[derive(Debug, Clone)]
pub struct Burst {
    /// Calls sent at once (1..=[`MAX_CALLS`]).
    pub calls: usize,
    /// The servers, called round-robin (call `i` goes to `targets[i % n]`).
    pub targets: Vec<SocketAddr>,
    /// The RLS domain.
    pub domain: String,
    /// The descriptor's one entry, `(key, value)`.
    pub entry: (String, String),
}

/// How a burst's calls were answered; latencies in microseconds, from the
/// moment every call had been handed to its connection.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct BurstReport {
    pub calls: usize,
    pub targets: usize,
    /// `OK` answers.
    pub admitted: u64,
    /// `OVER_LIMIT` answers whose problem is not `quota_unavailable`.
    pub over_limit: u64,
    /// `OVER_LIMIT` answers with the `quota_unavailable` problem (the
    /// store was down with `on_store_error: deny`, or a call missed its
    /// deadline on a store that answered others).
    pub unavailable: u64,
    /// `UNKNOWN` answers (Envoy lets these through).
    pub unknown: u64,
    /// Calls answered with a gRPC error or not within [`CALL_TIMEOUT`].
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// One call's outcome.
enum Outcome {
    Code(i32, bool),
    Error,
}

/// Sends the burst and waits (bounded by [`CALL_TIMEOUT`] per call) for
/// every answer. Errors: a target that does not accept a connection.
pub async fn run(burst: &Burst) -> anyhow::Result<BurstReport> {
    anyhow::ensure!(
        (1..=MAX_CALLS).contains(&burst.calls),
        "--burst must be 1..={MAX_CALLS} calls"
    );
    anyhow::ensure!(
        !burst.targets.is_empty(),
        "--burst needs at least one --target"
    );
    let mut clients = Vec::new();
    for addr in &burst.targets {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connect to {addr}"))?;
        clients.push(RateLimitServiceClient::new(channel));
    }
    let request = RateLimitRequest {
        domain: burst.domain.clone(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: burst.entry.0.clone(),
                value: burst.entry.1.clone(),
            }],
            ..Default::default()
        }],
        hits_addend: 1,
    };
    // Every call waits at the barrier, so that they go out together.
    let start = Arc::new(tokio::sync::Barrier::new(burst.calls + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..burst.calls {
        let mut client = clients[i % clients.len()].clone();
        let (request, start) = (request.clone(), Arc::clone(&start));
        tasks.spawn(async move {
            start.wait().await;
            let sent = Instant::now();
            let answer =
                tokio::time::timeout(CALL_TIMEOUT, client.should_rate_limit(request)).await;
            let outcome = match answer {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let unavailable =
                        String::from_utf8_lossy(&r.raw_body).contains("quota_unavailable");
                    Outcome::Code(r.overall_code, unavailable)
                }
                _ => Outcome::Error,
            };
            (outcome, sent.elapsed())
        });
    }
    start.wait().await;
    let mut report = BurstReport {
        calls: burst.calls,
        targets: burst.targets.len(),
        admitted: 0,
        over_limit: 0,
        unavailable: 0,
        unknown: 0,
        errors: 0,
        p50_us: 0,
        p99_us: 0,
        max_us: 0,
    };
    let mut took = Vec::with_capacity(burst.calls);
    while let Some(joined) = tasks.join_next().await {
        let (outcome, t) = joined?;
        took.push(t.as_micros() as u64);
        match outcome {
            Outcome::Code(c, _) if c == Code::Ok as i32 => report.admitted += 1,
            Outcome::Code(c, true) if c == Code::OverLimit as i32 => report.unavailable += 1,
            Outcome::Code(c, false) if c == Code::OverLimit as i32 => report.over_limit += 1,
            Outcome::Code(_, _) => report.unknown += 1,
            Outcome::Error => report.errors += 1,
        }
    }
    took.sort_unstable();
    let at = |q: usize| took[(took.len() * q / 100).min(took.len() - 1)];
    report.p50_us = at(50);
    report.p99_us = at(99);
    report.max_us = *took.last().expect("at least one call");
    Ok(report)
}

/// The report as one table line (`--json` prints it as JSON instead).
pub fn print(r: &BurstReport) {
    println!(
        "burst {} calls over {} targets: admitted {}, over limit {}, unavailable {}, unknown {}, errors {}; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.calls,
        r.targets,
        r.admitted,
        r.over_limit,
        r.unavailable,
        r.unknown,
        r.errors,
        r.p50_us as f64 / 1000.0,
        r.p99_us as f64 / 1000.0,
        r.max_us as f64 / 1000.0
    );
}

/// Parses `key=value` (the descriptor entry of `--burst-entry`).
pub fn parse_entry(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE (e.g. k=v1), got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_without_a_key_is_refused() {
        assert_eq!(parse_entry("k=v1"), Ok(("k".into(), "v1".into())));
        assert_eq!(parse_entry("k="), Ok(("k".into(), String::new())));
        assert!(parse_entry("=v").is_err());
        assert!(parse_entry("kv").is_err());
    }
}
