//! `portcullis-bench`: a gRPC load generator for ext_authz `Check`. It
//! starts Portcullis in process (or targets a running one), drives it with a
//! bounded request mix at a fixed concurrency, and reports throughput and
//! latency percentiles. With `--baseline` it first measures an empty
//! ext_authz server on the same tonic stack and settings, so the figures
//! that matter are ratios taken in one run on the same machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as RlsCode;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::rpc;
use hdrhistogram::Histogram;
use portcullis::authn::config::IssuerConfig;
use portcullis::config::Config;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(
    name = "portcullis-bench",
    about = "Load generator for Portcullis ext_authz Check and RLS ShouldRateLimit"
)]
struct Args {
    /// The call to load: ext_authz `Check` or RLS `ShouldRateLimit`.
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
    /// With `--rpc rls`: every call uses new quota keys (principal and
    /// address descriptors numbered by the call), cycling after this many,
    /// to measure the store's memory with many keys.
    #[arg(long)]
    keys: Option<u64>,
    /// Serve the empty ext_authz + RLS server at this address until
    /// interrupted, and measure nothing (for scripts/bench-envoy.sh).
    #[arg(long)]
    serve_empty: Option<SocketAddr>,
    /// Write the policy directory with roomy quotas (see --keep-quotas)
    /// to this directory and exit (for scripts/bench-envoy.sh).
    #[arg(long)]
    prepare_policies: Option<PathBuf>,
    /// Benchmark a running server at this address instead of starting one
    /// (its issuers will not know this run's token key: use --mix anonymous).
    #[arg(long)]
    target: Option<SocketAddr>,
    /// First measure an empty ext_authz server with the same load and
    /// report the ratio of Portcullis's throughput to it.
    #[arg(long)]
    baseline: bool,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
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
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Copy, Clone, Debug, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Rpc {
    /// ext_authz v3 `Check`.
    Check,
    /// Rate limit service v3 `ShouldRateLimit`.
    Rls,
}

#[derive(Copy, Clone, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mix {
    /// Allowed inference calls with a small set of reused (cacheable) tokens.
    Allowed,
    /// Every call carries a token never seen before.
    Uncached,
    /// 60% allowed (reused tokens), 10% forbidden, 10% mTLS workload,
    /// 10% anonymous status, 10% unknown path.
    Mixed,
    /// Anonymous status checks only (no token).
    Anonymous,
}

/// One policy reload under load.
#[derive(Debug, Serialize)]
struct Reload {
    policies: usize,
    milliseconds: f64,
    ok: bool,
}

/// What one server did under load.
#[derive(Debug, Serialize)]
struct Phase {
    server: &'static str,
    requests: u64,
    errors: u64,
    allowed: u64,
    denied: u64,
    seconds: f64,
    throughput_rps: f64,
    latency_us: Percentiles,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    rpc: Rpc,
    /// With `--reload-policies`: each reload under load.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reloads: Vec<Reload>,
    /// `local` or `redis` (RLS only).
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<&'static str>,
    mix: Mix,
    concurrency: usize,
    connections: usize,
    phases: Vec<Phase>,
    /// Portcullis's throughput divided by the empty server's.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_vs_empty: Option<f64>,
    /// Portcullis's latency minus the empty server's, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_added_us: Option<Percentiles>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.duration > 0.0 && args.duration <= 600.0,
        "--duration must be in (0, 600] seconds"
    );
    // Servers get their own runtime so that the load generator's tasks do
    // not queue behind them on one scheduler.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()?;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load")
        .enable_all()
        .build()?;

    if let Some(dir) = &args.prepare_policies {
        roomy_copy(&args.policies, dir)?;
        println!("{}", dir.display());
        return Ok(());
    }
    if let Some(addr) = args.serve_empty {
        let cancel = CancellationToken::new();
        let bound = servers.block_on(start_empty(addr, cancel.clone()))?;
        eprintln!("empty ext_authz + RLS server listening on {bound}");
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

    let keys = TokenKey::generate()?;
    let requests = Arc::new(match args.rpc {
        Rpc::Check => Calls::Check(request_mix(args.mix, &keys, args.bearer.as_deref())?),
        Rpc::Rls => Calls::Rls(rls_mix()),
    });
    let mut phases = Vec::new();
    let mut reloads = Vec::new();

    if args.baseline {
        let cancel = CancellationToken::new();
        let addr = servers.block_on(start_empty("127.0.0.1:0".parse()?, cancel.clone()))?;
        phases.push(clients.block_on(drive("empty", addr, &args, Arc::clone(&requests)))?);
        cancel.cancel();
    }
    let _keep = match args.target {
        Some(addr) => {
            phases.push(clients.block_on(drive(
                "portcullis",
                addr,
                &args,
                Arc::clone(&requests),
            ))?);
            None
        }
        None => {
            let dir = tempfile::tempdir()?;
            let config = portcullis_config(&args, &keys, dir.path())?;
            let running = servers.block_on(portcullis::server::start(&config))?;
            let addr = running.decision_addr;
            let reloader = args.reload_policies.map(|n| {
                let store = Arc::clone(&running.state.policies);
                let file = config.policies.join("scaled.cedar");
                let budget = args.warmup + args.duration;
                servers.spawn(reload_under_load(store, file, n, budget))
            });
            phases.push(clients.block_on(drive(
                "portcullis",
                addr,
                &args,
                Arc::clone(&requests),
            ))?);
            if let Some(task) = reloader {
                reloads = servers.block_on(task)??;
            }
            servers.block_on(running.shutdown())?;
            Some(dir)
        }
    };

    let (ratio, added) = match (phases.first(), phases.get(1)) {
        (Some(empty), Some(real)) if args.baseline => (
            Some(real.throughput_rps / empty.throughput_rps),
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
        latency_added_us: added,
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

fn print_table(r: &Report) {
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
    }
    println!(
        "{:<11} {:>9} {:>7} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "server", "requests", "errors", "req/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
    );
    for p in &r.phases {
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
    }
    for reload in &r.reloads {
        println!(
            "reload of {} policies under load: {:.0} ms{}",
            reload.policies,
            reload.milliseconds,
            if reload.ok { "" } else { " (FAILED)" }
        );
    }
    if let (Some(ratio), Some(added)) = (r.ratio_vs_empty, &r.latency_added_us) {
        println!(
            "ratio_vs_empty {ratio:.3}; latency added p50 {} us, p99 {} us",
            added.p50, added.p99
        );
    }
}

/// Drives one server with the request mix and measures it.
async fn drive(
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
    let seconds = started.elapsed().as_secs_f64();
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

struct WorkerResult {
    hist: Histogram<u64>,
    errors: u64,
    allowed: u64,
    denied: u64,
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
            let mut r = WorkerResult {
                hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
                errors: 0,
                allowed: 0,
                denied: 0,
            };
            let mut i = w;
            while Instant::now() < deadline {
                let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if limit.is_some_and(|l| n >= l) {
                    break;
                }
                let t = Instant::now();
                let allowed = match &*requests {
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
                let us = t.elapsed().as_micros().max(1) as u64;
                match allowed {
                    Ok(allowed) => {
                        let _ = r.hist.record(us.min(60_000_000));
                        if allowed {
                            r.allowed += 1;
                        } else {
                            r.denied += 1;
                        }
                    }
                    Err(_) => r.errors += 1,
                }
            }
            r
        });
    }
    workers.join_all().await
}

/// The calls the workers cycle through.
enum Calls {
    Check(Vec<CheckRequest>),
    Rls(Vec<RateLimitRequest>),
}

/// An ext_authz and RLS server that allows everything at once: the ceiling.
#[derive(Clone)]
struct Empty;

#[tonic::async_trait]
impl Authorization for Empty {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        }))
    }
}

#[tonic::async_trait]
impl RateLimitService for Empty {
    async fn should_rate_limit(
        &self,
        _request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: RlsCode::Ok as i32,
            ..Default::default()
        }))
    }
}

async fn start_empty(at: SocketAddr, cancel: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(at).await?;
    let addr = listener.local_addr()?;
    let config = Config::default();
    let router = portcullis::server::grpc_server(&config)
        .add_service(
            AuthorizationServer::new(Empty)
                .max_decoding_message_size(config.server.max_message_bytes),
        )
        .add_service(RateLimitServiceServer::new(Empty));
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(
                portcullis::server::nodelay(listener),
                cancel.cancelled_owned(),
            )
            .await;
    });
    Ok(addr)
}

const ISSUER: &str = "https://bench.portcullis.invalid/";
const AUDIENCE: &str = "portcullis-bench";

/// A key generated for this run; its public half is the in-process
/// server's issuer key.
struct TokenKey {
    pkcs8: Vec<u8>,
    jwks: serde_json::Value,
}

impl TokenKey {
    fn generate() -> anyhow::Result<Self> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| anyhow::anyhow!("generate an ECDSA key"))?;
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| anyhow::anyhow!("serialise the key"))?
            .as_ref()
            .to_vec();
        let point = pair.public_key().as_ref();
        anyhow::ensure!(
            point.len() == 65 && point[0] == 4,
            "uncompressed P-256 point"
        );
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "bench",
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        }]});
        Ok(TokenKey { pkcs8, jwks })
    }

    fn mint(&self, sub: &str, org: &str, nonce: u64) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("bench".into());
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "org": org,
            "iat": now, "exp": now + 3600, "jti": nonce.to_string(),
        });
        Ok(jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        )?)
    }
}

fn portcullis_config(
    args: &Args,
    keys: &TokenKey,
    dir: &std::path::Path,
) -> anyhow::Result<Config> {
    let jwks_file = dir.join("bench.jwks.json");
    std::fs::write(&jwks_file, keys.jwks.to_string())?;
    let policies = if args.keep_quotas {
        args.policies.clone()
    } else {
        roomy_copy(&args.policies, &dir.join("policies"))?
    };
    if let Some(n) = args.reload_policies {
        anyhow::ensure!(
            !args.keep_quotas,
            "--reload-policies writes into a copy of the policy directory: drop --keep-quotas"
        );
        std::fs::write(policies.join("scaled.cedar"), scaled_policies(n, 0))?;
    }
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        admin_listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        policies,
        ..Config::default()
    };
    config.reload.watch = false;
    // The audit trail is on, as in production, in this run's directory.
    config.audit.directory = dir.join("audit");
    let issuer: IssuerConfig = serde_json::from_value(serde_json::json!({
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks_file": jwks_file,
        "algorithms": ["ES256"],
        "org_claim": "org",
    }))?;
    config.authentication.jwt.push(issuer);
    if let Some(url) = &args.redis {
        config.quotas.store = portcullis::quota::QuotaStoreKind::Redis;
        config.quotas.redis_url = Some(url.clone());
        // A store error must show up as a denial, not as a silent
        // in-process fallback that would flatter the figures.
        config.quotas.on_store_error = portcullis::quota::OnStoreError::Deny;
    }
    Ok(config)
}

/// `n` policies that never apply to the benchmark's requests (each names
/// its own principal), tagged with `generation` so each write is a change.
fn scaled_policies(n: usize, generation: u32) -> String {
    let mut text = String::with_capacity(n * 160);
    for i in 0..n {
        text.push_str(&format!(
            "@id(\"bench-g{generation}-p{i}\")\npermit (principal == User::\"bench-u{i}\", action == Action::\"invoke\", resource is ModelVersion) when {{ principal in resource.model.owner }};\n"
        ));
    }
    text
}

/// Rewrites the policy file and reloads, once per second, for `seconds`.
async fn reload_under_load(
    store: Arc<portcullis::policy::PolicyStore>,
    file: PathBuf,
    n: usize,
    seconds: f64,
) -> anyhow::Result<Vec<Reload>> {
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut generation = 1;
    // Bounded: at most one reload per second of the run, and 600 at most.
    while Instant::now() + Duration::from_secs(1) < end && generation <= 600 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::fs::write(&file, scaled_policies(n, generation)).await?;
        let started = Instant::now();
        let result = store.reload_async().await;
        out.push(Reload {
            policies: n,
            milliseconds: started.elapsed().as_secs_f64() * 1e3,
            ok: result.is_ok(),
        });
        generation += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(out)
}

/// A copy of the policy directory's files with every quota scaled up a
/// million times (see `--keep-quotas`).
fn roomy_copy(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(to.join("quotas"))?;
    for sub in ["", "quotas", "shadow", "schemas"] {
        let Ok(entries) = std::fs::read_dir(from.join(sub)) else {
            continue;
        };
        std::fs::create_dir_all(to.join(sub))?;
        for entry in entries {
            let path = entry?.path();
            if !path.is_file() {
                continue;
            }
            let target = to.join(sub).join(path.file_name().expect("a file name"));
            let is_quota = sub == "quotas" || path.file_name().is_some_and(|n| n == "quotas.yaml");
            if is_quota {
                let text = std::fs::read_to_string(&path)?;
                std::fs::write(&target, portcullis::quota::config::scaled(&text, 1_000_000))?;
            } else {
                std::fs::copy(&path, &target)?;
            }
        }
    }
    Ok(to.to_path_buf())
}

fn check(method: &str, path: &str, headers: &[(&str, String)], principal: &str) -> CheckRequest {
    // Inference calls carry a body the predict route validates (schema,
    // model input constraints, PII scan), as real ones do.
    let (body, content_type) = if method == "POST" {
        (
            br#"{"features": ["the delivery was quick and the support friendly"], "max_tokens": 64}"#
                .to_vec(),
            Some(("content-type".to_string(), "application/json".to_string())),
        )
    } else {
        (Vec::new(), None)
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: principal.into(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "api.bench".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .chain(content_type)
                        .collect(),
                    raw_body: body,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The requests the workers cycle through, in mix proportions.
fn request_mix(
    mix: Mix,
    keys: &TokenKey,
    given: Option<&str>,
) -> anyhow::Result<Vec<CheckRequest>> {
    const PREDICT: &str = "/v1/models/sentiment/versions/v2:predict";
    let bearer = |t: String| vec![("authorization", format!("Bearer {t}"))];
    let reused: Vec<String> = match given {
        Some(token) => vec![token.to_string()],
        None => (0..16)
            .map(|i| keys.mint("alice", "acme", i))
            .collect::<anyhow::Result<_>>()?,
    };
    let allowed = |i: usize| {
        check(
            "POST",
            PREDICT,
            &bearer(reused[i % reused.len()].clone()),
            "",
        )
    };
    Ok(match mix {
        Mix::Allowed => (0..64).map(allowed).collect(),
        Mix::Uncached => (0..20_000u64)
            .map(|i| {
                Ok(check(
                    "POST",
                    PREDICT,
                    &bearer(keys.mint("alice", "acme", 1_000 + i)?),
                    "",
                ))
            })
            .collect::<anyhow::Result<_>>()?,
        Mix::Anonymous => vec![check("GET", "/v1/status", &[], "")],
        Mix::Mixed => {
            let bob = keys.mint("bob", "acme", 99)?;
            let mut out = Vec::new();
            for i in 0..6 {
                out.push(allowed(i));
            }
            out.push(check("POST", PREDICT, &bearer(bob), ""));
            out.push(check(
                "POST",
                PREDICT,
                &[],
                "spiffe://acme.example/ns/ml/sa/batch-scorer",
            ));
            out.push(check("GET", "/v1/status", &[], ""));
            out.push(check("GET", "/v1/nowhere", &[], ""));
            out
        }
    })
}

/// RLS calls as Envoy's ratelimit filter sends them for the bundled
/// `quotas.yaml`: per address, per principal and per org, over many keys.
fn rls_mix() -> Vec<RateLimitRequest> {
    (0..256u64).map(rls_call).collect()
}

/// The `i`th RLS call: its own address and principal, one of eight orgs.
fn rls_call(i: u64) -> RateLimitRequest {
    let entry = |key: &str, value: String| Entry {
        key: key.into(),
        value,
    };
    let descriptor = |entries: Vec<Entry>| RateLimitDescriptor {
        entries,
        ..Default::default()
    };
    RateLimitRequest {
        domain: "ml_api".into(),
        descriptors: vec![
            descriptor(vec![entry(
                "remote_address",
                format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            )]),
            descriptor(vec![entry("principal", format!("User:u{i}"))]),
            descriptor(vec![entry("org", format!("org{}", i % 8))]),
        ],
        hits_addend: 1,
    }
}
