//! What a run measured, and how it is printed: a table or one JSON object.

use serde::Serialize;

use crate::cpu::ServerCpu;
use crate::{AuditDurability, Mix, Rpc};

/// One policy reload under load.
#[derive(Debug, Serialize)]
pub struct Reload {
    pub policies: usize,
    pub milliseconds: f64,
    pub ok: bool,
}

/// What one server did under load.
#[derive(Debug, Serialize)]
pub struct Phase {
    pub server: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub allowed: u64,
    pub denied: u64,
    pub seconds: f64,
    pub throughput_rps: f64,
    /// Open loop (`--rate`): the intended arrival rate, requests/second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rps: Option<f64>,
    /// Open loop: calls that were due while `--concurrency` calls were
    /// unanswered, so they waited for one (the server queued).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late: Option<u64>,
    /// Open loop: how late the load generator's pacer handed calls over,
    /// microseconds after their intended times. Included in `latency_us`;
    /// a p99 near the latency's own means the generator, not the server,
    /// set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pacing_lag_us: Option<Percentiles>,
    /// Microseconds from send (open loop: from the intended send time) to
    /// the answer.
    pub latency_us: Percentiles,
    /// With `--baseline-pid` / `--target-pid`: the CPU the server process
    /// used during this phase's slices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<ServerCpu>,
}

/// Percentiles of a latency histogram, microseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(hist: &hdrhistogram::Histogram<u64>) -> Self {
        Percentiles {
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub rpc: Rpc,
    /// With `--reload-policies`: each reload under load.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reloads: Vec<Reload>,
    /// `local` or `redis` (RLS only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<&'static str>,
    pub mix: Mix,
    pub concurrency: usize,
    pub connections: usize,
    pub phases: Vec<Phase>,
    /// Portcullis's throughput divided by the empty server's; with
    /// `--baseline-target`, the median of `slice_ratios`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_vs_empty: Option<f64>,
    /// With `--baseline-target`: each pair of slices' ratio, in the order
    /// measured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slice_ratios: Vec<f64>,
    /// With `--baseline-pid` and `--target-pid`: the baseline's CPU
    /// microseconds per answer divided by the target's (`server_cpu`).
    /// Unlike `ratio_vs_empty` it does not depend on whether the load
    /// generator or the server's core bounded the baseline's throughput.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ratio_vs_empty: Option<f64>,
    /// Portcullis's latency minus the empty server's, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_added_us: Option<Percentiles>,
    /// With several `--audit-durability` modes: each against the first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub durability: Vec<DurabilityPhase>,
}

/// One audit durability mode's figures against the first mode measured.
#[derive(Debug, Serialize)]
pub struct DurabilityPhase {
    pub durability: AuditDurability,
    /// This mode's throughput divided by the first mode's.
    pub throughput_ratio: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

pub fn print_table(r: &Report) {
    match r.rpc {
        Rpc::Check => println!(
            "Check, mix {:?}, concurrency {}, connections {}",
            r.mix, r.concurrency, r.connections
        ),
        Rpc::Rls => println!(
            "ShouldRateLimit, store {}, concurrency {}, connections {}",
            r.store.unwrap_or("local"),
            r.concurrency,
            r.connections
        ),
        Rpc::ForwardAuth => println!(
            "forward-auth (HTTP, h2c, /ext-authz), mix {:?}, concurrency {}, connections {}",
            r.mix, r.concurrency, r.connections
        ),
    }
    println!(
        "{:<11} {:>9} {:>7} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "server", "requests", "errors", "req/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
    );
    for p in &r.phases {
        if let (Some(target), Some(late), Some(lag)) = (p.target_rps, p.late, &p.pacing_lag_us) {
            println!(
                "{}: open loop at {target:.0} req/s intended, {:.0} achieved, {late} waited for \
                 a free slot; pacer lag p50 {} us, p99 {} us",
                p.server, p.throughput_rps, lag.p50, lag.p99
            );
        }
        println!(
            "{:<11} {:>9} {:>7} {:>11.0} {:>8} {:>8} {:>8} {:>8} {:>8}",
            p.server,
            p.requests,
            p.errors,
            p.throughput_rps,
            p.latency_us.p50,
            p.latency_us.p90,
            p.latency_us.p99,
            p.latency_us.p999,
            p.latency_us.max
        );
        if let Some(cpu) = &p.server_cpu {
            println!(
                "{}: {:.0}% of a core, {:.1} us of CPU per answer",
                p.server,
                cpu.share_of_core * 100.0,
                cpu.us_per_request
            );
        }
    }
    for reload in &r.reloads {
        println!(
            "reload of {} policies under load: {:.0} ms{}",
            reload.policies,
            reload.milliseconds,
            if reload.ok { "" } else { " (FAILED)" }
        );
    }
    if let Some(first) = r.durability.first() {
        for d in &r.durability {
            println!(
                "audit durability {:?}: throughput {:.3} x {:?}'s, p50 {} us, p99 {} us",
                d.durability, d.throughput_ratio, first.durability, d.p50_us, d.p99_us
            );
        }
    }
    if let (Some(ratio), Some(added)) = (r.ratio_vs_empty, &r.latency_added_us) {
        println!(
            "ratio_vs_empty {ratio:.3}; latency added p50 {} us, p99 {} us",
            added.p50, added.p99
        );
    }
    if let (Some(lo), Some(hi)) = (
        r.slice_ratios.iter().copied().reduce(f64::min),
        r.slice_ratios.iter().copied().reduce(f64::max),
    ) {
        println!(
            "ratio_vs_empty is the median of {} interleaved slice pairs: {lo:.3}..{hi:.3}",
            r.slice_ratios.len()
        );
    }
    if let Some(ratio) = r.cpu_ratio_vs_empty {
        println!(
            "cpu_ratio_vs_empty {ratio:.3} (the empty server's CPU per answer over the target's)"
        );
    }
}
