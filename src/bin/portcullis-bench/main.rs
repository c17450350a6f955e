//! `portcullis-bench`: a load generator for ext_authz `Check`, RLS
//! `ShouldRateLimit` and the forward-auth HTTP listener. It starts
//! Portcullis in process (or targets a running one), drives it with a
//! bounded request mix at a fixed concurrency, and reports throughput and
//! latency percentiles. With `--baseline` it first measures an empty
//! server on the same stack and settings (tonic for the gRPC calls,
//! `server::http` for forward-auth), so the figures that matter are ratios
//! taken in one run on the same machine.
//!
//! `report` holds the figures, `load` drives a gRPC server, `burst` sends
//! one burst of concurrent RLS calls over several servers (`--burst`), `http_load`
//! the forward-auth listener, `requests` builds the calls, `token` signs them, `setup` prepares the in-process server,
//! `empty` is the baseline server and `hold` holds header-only HTTP/2
//! streams against the `portcullis` binary (`--hold-streams`).

mod burst;
mod cpu;
mod empty;
mod hold;
mod http_load;
mod load;
mod report;
mod requests;
mod setup;
mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::empty::{start_empty, start_empty_http, EmptyTransport};
use crate::http_load::{drive_http, http_mix};
use crate::load::{drive, drive_interleaved, median, Calls};
use crate::report::{print_table, Percentiles, Report};
use crate::requests::{request_mix, rls_mix};
use crate::setup::{portcullis_config, reload_under_load, roomy_copy};
use crate::token::TokenKey;

#[derive(Parser, Debug)]
#[command(
    name = "portcullis-bench",
    about = "Load generator for Portcullis ext_authz Check, RLS ShouldRateLimit and forward-auth"
)]
struct Args {
    /// The call to load: ext_authz `Check`, RLS `ShouldRateLimit`, or the
    /// forward-auth HTTP listener (Envoy's HTTP mode over h2c).
    #[arg(long, value_enum, default_value_t = Rpc::Check)]
    rpc: Rpc,
    /// Quota store of the in-process server for `--rpc rls`: in process,
    /// or this Redis URL (limits then exact across replicas).
    #[arg(long)]
    redis: Option<String>,
    /// Add this many policies to the in-process server's policy directory
    /// and reload it (validated and swapped) once per second while it is
    /// under load; the report lists each reload's time, and any failed
    /// request shows in the errors column.
    #[arg(long)]
    reload_policies: Option<usize>,
    /// A bearer token for the allowed calls of the mix instead of tokens
    /// signed with this run's key (for `--target`: a token the running
    /// server trusts, e.g. from scripts/dev-token.sh).
    #[arg(long)]
    bearer: Option<String>,
    /// The tokens the mix reuses (the allowed calls' and the forbidden
    /// call's): read from this file when it exists, else minted and
    /// written to it, so that separate runs (a warm-up, then a measured
    /// run) send the same tokens. Signatures are randomised, so without
    /// it each run's tokens are new to the server's token cache.
    #[arg(long, value_name = "FILE")]
    reuse_tokens: Option<PathBuf>,
    /// With `--rpc rls`: every call uses new quota keys (principal and
    /// address descriptors numbered by the call), cycling after this many,
    /// to measure the store's memory with many keys.
    #[arg(long)]
    keys: Option<u64>,
    /// Serve the empty ext_authz + RLS + ext_proc server at this address until
    /// interrupted, and measure nothing (for scripts/bench-envoy.sh).
    #[arg(long)]
    serve_empty: Option<SocketAddr>,
    /// The empty server's transport (`--serve-empty`, `--baseline`): stock
    /// tonic connections (`nodelay`), the baseline the ratios are reported
    /// against, or the write-coalesced connections Portcullis serves
    /// (`portcullis::server::Coalesced`), to compare on the same transport.
    #[arg(long, value_enum, default_value_t = EmptyTransport::Stock)]
    empty_transport: EmptyTransport,
    /// Threads of the runtime that serves the empty handler
    /// (`--serve-empty`, `--baseline`) and Portcullis in process: match a
    /// compared Portcullis's `server.worker_threads` (scripts/bench-envoy.sh
    /// passes its WORKER_THREADS to both; scripts/bench-side-by-side.sh
    /// passes 1, as many as the one core it pins servers to). With
    /// `--serve-empty`, one thread runs tokio's current-thread scheduler,
    /// as Portcullis does; in process, always the multi-thread one (the
    /// load runs on this thread meanwhile).
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Write the policy directory with roomy quotas (see --keep-quotas)
    /// to this directory and exit (for scripts/bench-envoy.sh).
    #[arg(long)]
    prepare_policies: Option<PathBuf>,
    /// Benchmark a running server at this address instead of starting one
    /// (its issuers do not know this run's token key unless it trusts
    /// `--token-key-file`'s JWKS: otherwise use --mix anonymous or --bearer).
    /// Repeated only with `--burst` (the calls are spread over them).
    #[arg(long)]
    target: Vec<SocketAddr>,
    /// Send this many RLS `ShouldRateLimit` calls at once, all on one
    /// descriptor (`--burst-entry` in `--burst-domain`), round-robin over
    /// the `--target` servers; report admitted, over-limit, unavailable,
    /// UNKNOWN and failed calls and the latency percentiles, and exit.
    #[arg(long)]
    burst: Option<usize>,
    /// With `--burst`: the RLS domain of the calls.
    #[arg(long, default_value = "burst")]
    burst_domain: String,
    /// With `--burst`: the descriptor's one entry, `KEY=VALUE`.
    #[arg(long, default_value = "k=v", value_parser = burst::parse_entry)]
    burst_entry: (String, String),
    /// First measure an empty ext_authz server with the same load and
    /// report the ratio of Portcullis's throughput to it.
    #[arg(long)]
    baseline: bool,
    /// With `--target`: an empty handler already running at this address
    /// (`--serve-empty`), measured against the target in alternating
    /// slices (`--slices` pairs, `--duration` seconds per server in all,
    /// baseline and target in turn first: ABBA), both connected
    /// throughout. The ratio reported is the median of the pairs' ratios
    /// (target throughput / baseline throughput), with their range, so a
    /// host whose speed drifts during the run skews it less than two runs
    /// one after the other. Closed loop only.
    #[arg(long, value_name = "ADDR")]
    baseline_target: Option<SocketAddr>,
    /// With `--baseline-target`: pairs of slices (10 when not given).
    #[arg(long)]
    slices: Option<usize>,
    /// With `--baseline-target`: the process serving it. Its CPU time
    /// (`/proc/PID/stat`, Linux) around each of its slices gives its
    /// phase's `server_cpu` (share of one core, CPU µs per answer).
    #[arg(long, value_name = "PID")]
    baseline_pid: Option<u32>,
    /// With `--baseline-target`: the process serving `--target`, measured
    /// alike; with both pids, `cpu_ratio_vs_empty` is their CPU per answer's.
    #[arg(long, value_name = "PID")]
    target_pid: Option<u32>,
    /// Requests in flight at once (closed loop); with `--rate`, the most
    /// in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: send at this fixed rate (requests per second, evenly
    /// spaced) instead of as fast as answers come back, and count latency
    /// from each request's intended send time (wrk2's correction for
    /// coordinated omission). The report gives the intended and achieved
    /// rates, how many requests waited for a free slot (`--concurrency`
    /// unanswered), and the pacer's own lag. The load generator then runs
    /// on one thread that polls instead of sleeping, and spins its core.
    #[arg(long)]
    rate: Option<f64>,
    /// With `--rpc rls`: the bundled mix (address, principal and org
    /// descriptors over many keys) or one descriptor (`org` = `org0`, an
    /// effectively unlimited quota), the shape peers are compared on.
    #[arg(long, value_enum, default_value_t = RlsShape::Bundled)]
    rls_shape: RlsShape,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds of measurement per server (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Stop after this many requests per server (whichever comes first).
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds of unmeasured warm-up per server.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// The request mix.
    #[arg(long, value_enum, default_value_t = Mix::Mixed)]
    mix: Mix,
    /// Policy directory for the in-process server.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// Use the policy directory's quotas as they are. By default every
    /// limit is scaled up a million times, so that allowed requests are
    /// charged (the quota stage runs) but a benchmark never runs out.
    #[arg(long)]
    keep_quotas: bool,
    /// Mint tokens with the ES256 key in this file (PKCS#8 DER) instead of
    /// a key generated for the run; the issuer is
    /// `https://bench.portcullis.invalid/`, the audience `portcullis-bench`.
    #[arg(long)]
    token_key_file: Option<PathBuf>,
    /// Generate a token key, write it to this file (PKCS#8 DER) and its JWKS
    /// to `<file>.jwks.json` (for a server started separately), and exit.
    #[arg(long)]
    write_token_key: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// CONNSxSTREAMS, e.g. 50x1000: start the `portcullis` binary in its
    /// own process, measure a normal client's Check latency alone, then
    /// while CONNS connections each hold up to STREAMS HTTP/2 streams that
    /// send a Check's headers and never its body; report the server's
    /// resident memory before, at the peak and after.
    #[arg(long)]
    hold_streams: Option<String>,
    /// With --hold-streams: the binary to start (default: `portcullis`
    /// next to this one).
    #[arg(long)]
    portcullis: Option<PathBuf>,
    /// With --hold-streams: the server's `server:` config section, as a
    /// YAML mapping, e.g. '{max_concurrent_streams: 1024}'.
    #[arg(long)]
    server_section: Option<String>,
    /// The in-process server's `audit.durability`; several, comma
    /// separated (e.g. `queued,written,synced`), measure one server per
    /// mode in turn, and the report gives each mode's throughput ratio and
    /// p99 against the first. Default: the configuration's default.
    #[arg(long, value_enum, value_delimiter = ',')]
    audit_durability: Vec<AuditDurability>,
}

/// `audit.durability` (see `portcullis::audit::Durability`).
#[derive(Copy, Clone, Debug, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum AuditDurability {
    /// The answer does not wait for the record.
    Queued,
    /// The answer waits until the record is handed to the OS.
    Written,
    /// The answer waits until the record is written and fdatasync'ed.
    Synced,
}

impl AuditDurability {
    fn config(self) -> portcullis::audit::Durability {
        match self {
            AuditDurability::Queued => portcullis::audit::Durability::Queued,
            AuditDurability::Written => portcullis::audit::Durability::Written,
            AuditDurability::Synced => portcullis::audit::Durability::Synced,
        }
    }

    /// The phase's name when several modes are measured.
    fn phase(self) -> &'static str {
        match self {
            AuditDurability::Queued => "queued",
            AuditDurability::Written => "written",
            AuditDurability::Synced => "synced",
        }
    }
}

#[derive(Copy, Clone, Debug, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Rpc {
    /// ext_authz v3 `Check`.
    Check,
    /// Rate limit service v3 `ShouldRateLimit`.
    Rls,
    /// The forward-auth HTTP listener: the mix's requests after
    /// `/ext-authz`, over h2c.
    #[serde(rename = "forward-auth")]
    ForwardAuth,
}

/// The RLS calls of `--rpc rls`.
#[derive(Copy, Clone, Debug, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RlsShape {
    /// Address, principal and org descriptors, a new address and principal
    /// per call over 256 keys.
    Bundled,
    /// One descriptor, one key.
    One,
}

#[derive(Copy, Clone, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mix {
    /// Allowed inference calls with a small set of reused (cacheable) tokens.
    Allowed,
    /// Every call carries a token never seen before (up to
    /// `requests::UNCACHED_TOKENS` calls per server in a run; beyond, the
    /// tokens come round again).
    Uncached,
    /// 60% allowed (reused tokens), 10% forbidden, 10% mTLS workload,
    /// 10% anonymous status, 10% unknown path.
    Mixed,
    /// Anonymous status checks only (no token).
    Anonymous,
}

/// The same allocator as the `portcullis` binary, so that the empty
/// handler served from here (`--serve-empty`, `--baseline`) and Portcullis
/// in process are measured on equal terms.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.duration > 0.0 && args.duration <= 600.0,
        "--duration must be in (0, 600] seconds"
    );
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            args.rpc != Rpc::ForwardAuth,
            "--rate (open loop) drives gRPC calls: use it with --rpc check or rls"
        );
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0,
            "--rate must be a request rate in (0, 10000000] per second"
        );
    }
    // Servers get their own runtime so that the load generator's tasks do
    // not queue behind them on one scheduler.
    anyhow::ensure!(
        (1..=1024).contains(&args.server_threads),
        "--server-threads must be 1..1024"
    );
    // `--serve-empty` on one thread: the current-thread scheduler, as
    // `portcullis serve` picks for one worker (portcullis::server::runtime),
    // so that both sides of a comparison run on the same scheduler; it runs
    // inside `block_on` until SIGTERM. In process, the servers run while
    // this thread drives the load on another runtime, so they need worker
    // threads of their own: the multi-thread scheduler.
    use portcullis::server::runtime::Scheduler;
    let scheduler = match args.serve_empty {
        Some(_) => Scheduler::of(args.server_threads),
        None => Scheduler::MultiThread(args.server_threads),
    };
    let servers = scheduler.build("server")?;
    // The open loop runs on one thread, whose pacer polls the sockets
    // while it waits for the next call's time (load::open_loop).
    let clients = match args.rate {
        Some(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("load")
            .enable_all()
            .build()?,
    };

    if let Some(calls) = args.burst {
        anyhow::ensure!(
            args.rpc == Rpc::Rls,
            "--burst sends RLS calls: add --rpc rls"
        );
        let report = clients.block_on(burst::run(&burst::Burst {
            calls,
            targets: args.target.clone(),
            domain: args.burst_domain.clone(),
            entry: args.burst_entry.clone(),
        }))?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            burst::print(&report);
        }
        return Ok(());
    }
    anyhow::ensure!(
        args.target.len() <= 1,
        "--target is repeated only with --burst"
    );
    if let Some(dir) = &args.prepare_policies {
        roomy_copy(&args.policies, dir)?;
        println!("{}", dir.display());
        return Ok(());
    }
    if let Some(addr) = args.serve_empty {
        let cancel = CancellationToken::new();
        let bound = servers.block_on(start_empty(addr, args.empty_transport, cancel.clone()))?;
        eprintln!("empty ext_authz + RLS + ext_proc server listening on {bound}");
        servers.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            anyhow::Ok(())
        })?;
        cancel.cancel();
        return Ok(());
    }

    if let Some(path) = &args.write_token_key {
        let jwks = TokenKey::generate()?.write(path)?;
        println!("{}", jwks.display());
        return Ok(());
    }
    let keys = match &args.token_key_file {
        Some(path) => TokenKey::read(path)?,
        None => TokenKey::generate()?,
    };
    let requests = Arc::new(match args.rpc {
        Rpc::Check => Calls::Check(request_mix(
            args.mix,
            &keys,
            args.bearer.as_deref(),
            args.reuse_tokens.as_deref(),
        )?),
        Rpc::Rls => Calls::Rls(rls_mix(args.rls_shape)),
        Rpc::ForwardAuth => Calls::Http(http_mix(&request_mix(
            args.mix,
            &keys,
            args.bearer.as_deref(),
            args.reuse_tokens.as_deref(),
        )?)?),
    });
    let http = args.rpc == Rpc::ForwardAuth;
    anyhow::ensure!(
        !(http && args.hold_streams.is_some()),
        "--hold-streams holds gRPC streams: drop --rpc forward-auth"
    );
    if let Some(shape) = &args.hold_streams {
        let shape = hold::parse_shape(shape)?;
        let report = clients.block_on(hold::run(&args, shape, &keys, Arc::clone(&requests)))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            hold::print(&report);
        }
        anyhow::ensure!(
            report.phases.iter().all(|p| p.errors == 0),
            "some of the normal client's calls failed"
        );
        return Ok(());
    }
    let mut phases = Vec::new();
    let mut reloads = Vec::new();

    // One phase: the calls against the server at `addr`.
    let measure = |name: &'static str, addr: SocketAddr| {
        if http {
            clients.block_on(drive_http(name, addr, &args, Arc::clone(&requests)))
        } else {
            clients.block_on(drive(name, addr, &args, Arc::clone(&requests)))
        }
    };
    if args.baseline {
        let cancel = CancellationToken::new();
        let at = "127.0.0.1:0".parse()?;
        let addr = if http {
            servers.block_on(start_empty_http(at, cancel.clone()))?
        } else {
            servers.block_on(start_empty(at, args.empty_transport, cancel.clone()))?
        };
        phases.push(measure("empty", addr)?);
        cancel.cancel();
    }
    anyhow::ensure!(
        args.target.is_empty() || args.audit_durability.is_empty(),
        "--audit-durability configures the in-process server: drop it with --target"
    );
    let modes: Vec<Option<AuditDurability>> = if args.audit_durability.is_empty() {
        vec![None]
    } else {
        args.audit_durability.iter().copied().map(Some).collect()
    };
    load::check_interleaved(&args, http)?;
    let mut slice_ratios = Vec::new();
    let mut cpu_ratio = None;
    match (args.target.first().copied(), args.baseline_target) {
        (Some(addr), Some(baseline)) => {
            let run = clients.block_on(drive_interleaved(
                baseline,
                addr,
                args.slices.unwrap_or(10),
                &args,
                Arc::clone(&requests),
            ))?;
            cpu_ratio = run.cpu_ratio;
            phases.push(run.baseline);
            phases.push(run.target);
            slice_ratios = run.ratios;
        }
        (Some(addr), None) => {
            phases.push(measure("portcullis", addr)?);
        }
        (None, _) => {
            for &mode in &modes {
                let dir = tempfile::tempdir()?;
                let mut config = portcullis_config(&args, &keys, dir.path())?;
                let name = match mode {
                    Some(m) => {
                        config.audit.durability = m.config();
                        if modes.len() > 1 {
                            m.phase()
                        } else {
                            "portcullis"
                        }
                    }
                    None => "portcullis",
                };
                if http {
                    // Envoy's HTTP mode sends bodies (deploy/forward-auth).
                    config.forward_auth.listen = Some("127.0.0.1:0".parse()?);
                    config.forward_auth.bodies_forwarded.request_line = true;
                    config.forward_auth.trusted_proxies =
                        vec!["127.0.0.1".parse().map_err(anyhow::Error::msg)?];
                }
                let running = servers.block_on(portcullis::server::start(&config))?;
                let addr = match running.forward_auth_addr {
                    Some(addr) if http => addr,
                    _ => running.decision_addr,
                };
                let reloader = args.reload_policies.map(|n| {
                    let store = Arc::clone(&running.state.policies);
                    let file = config.policies.join("scaled.cedar");
                    let budget = args.warmup + args.duration;
                    servers.spawn(reload_under_load(store, file, n, budget))
                });
                phases.push(measure(name, addr)?);
                if let Some(task) = reloader {
                    reloads.extend(servers.block_on(task)??);
                }
                servers.block_on(running.shutdown())?;
                // Each phase's audit files go with it (the disk is shared).
                drop(dir);
            }
        }
    }

    let (ratio, added) = match (phases.first(), phases.get(1)) {
        (Some(empty), Some(real)) if args.baseline || !slice_ratios.is_empty() => (
            median(&slice_ratios).or(Some(real.throughput_rps / empty.throughput_rps)),
            Some(Percentiles {
                p50: real.latency_us.p50.saturating_sub(empty.latency_us.p50),
                p90: real.latency_us.p90.saturating_sub(empty.latency_us.p90),
                p99: real.latency_us.p99.saturating_sub(empty.latency_us.p99),
                p999: real.latency_us.p999.saturating_sub(empty.latency_us.p999),
                max: real.latency_us.max.saturating_sub(empty.latency_us.max),
            }),
        ),
        _ => (None, None),
    };
    let durability = durability_report(&modes, &phases[usize::from(args.baseline)..]);
    let report = Report {
        rpc: args.rpc,
        reloads,
        store: (args.rpc == Rpc::Rls).then_some(if args.redis.is_some() {
            "redis"
        } else {
            "local"
        }),
        mix: args.mix,
        concurrency: args.concurrency,
        connections: args.connections,
        phases,
        ratio_vs_empty: ratio,
        slice_ratios,
        cpu_ratio_vs_empty: cpu_ratio,
        latency_added_us: added,
        durability,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if report.reloads.iter().any(|r| !r.ok) {
        anyhow::bail!("a policy reload failed");
    }
    if report.phases.iter().any(|p| p.errors > 0) {
        anyhow::bail!("some requests failed (see the errors column)");
    }
    Ok(())
}

/// With several `--audit-durability` modes: each mode's phase against the
/// first mode's (`phases` holds one phase per mode, in order).
fn durability_report(
    modes: &[Option<AuditDurability>],
    phases: &[report::Phase],
) -> Vec<report::DurabilityPhase> {
    if modes.len() < 2 || phases.len() != modes.len() {
        return Vec::new();
    }
    let first = &phases[0];
    modes
        .iter()
        .zip(phases)
        .filter_map(|(mode, phase)| {
            Some(report::DurabilityPhase {
                durability: (*mode)?,
                throughput_ratio: phase.throughput_rps / first.throughput_rps,
                p50_us: phase.latency_us.p50,
                p99_us: phase.latency_us.p99,
            })
        })
        .collect()
}
