//! The `portcullis` command: parse the CLI, load config, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portcullis::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Policy decision point for API gateways (Envoy ext_authz)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ext_authz decisions (and the admin API) until SIGTERM/SIGINT.
    Serve {
        /// Configuration file (YAML); every field has a default.
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Policy directory (overrides `policies` in the config file).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Decision gRPC listener (overrides `listen`).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Admin gRPC listener (overrides `admin_listen`).
        #[arg(long)]
        admin_listen: Option<std::net::SocketAddr>,
        /// Operations HTTP listener: /metrics, /healthz, /readyz
        /// (overrides `http_listen`).
        #[arg(long)]
        http_listen: Option<std::net::SocketAddr>,
        /// Serve the policy directory as it was at this git revision
        /// (overrides `policy_revision`); rolling back is pinning the
        /// previous one.
        #[arg(long)]
        policy_rev: Option<String>,
    },
    /// Work with a policy directory.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Work with the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Decide one request offline and print the decision as JSON.
    Check {
        /// A JSON file describing the request (see README).
        #[arg(long)]
        request: PathBuf,
        /// Policy directory (default: the config's, else ./policies).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Configuration file, for JWT issuers.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage API keys.
    Apikey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Generate a key: prints the key once (give it to the client) and the
    /// entry to append to the keys file (which stores only its hash) or the
    /// Redis command that stores it; with --redis, stores it in Redis.
    New {
        /// The App the key authenticates.
        #[arg(long)]
        app: String,
        /// The App's organisation.
        #[arg(long)]
        org: String,
        /// Scopes, comma-separated (e.g. models:invoke).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Expiry, seconds since the Unix epoch.
        #[arg(long)]
        expires_at: Option<u64>,
        #[command(flatten)]
        redis: RedisTarget,
    },
    /// Revoke a key kept in Redis, by its public id (the 12 hex digits
    /// after `pck_`): refused from the next request on. (Keys in a keys
    /// file are revoked by setting `revoked: true` in the file.)
    Revoke {
        /// The key's public id.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        redis: RedisTarget,
    },
}

/// The Redis that holds API keys (`authentication.api_keys.redis`).
#[derive(clap::Args)]
struct RedisTarget {
    /// Store in (or revoke from) this Redis: redis://host:port/db.
    #[arg(long, env = "PORTCULLIS_REDIS_URL", conflicts_with = "redis_cluster")]
    redis: Option<String>,
    /// Or this Redis Cluster: seed nodes, comma-separated.
    #[arg(long, env = "PORTCULLIS_REDIS_CLUSTER", value_delimiter = ',')]
    redis_cluster: Vec<String>,
}

impl RedisTarget {
    fn connect(&self) -> anyhow::Result<Option<portcullis::shared_redis::SharedRedis>> {
        use portcullis::shared_redis::SharedRedis;
        let timeout = std::time::Duration::from_secs(5);
        Ok(match (&self.redis, self.redis_cluster.is_empty()) {
            (Some(url), _) => {
                Some(SharedRedis::single(url, timeout, "--redis").map_err(|e| anyhow::anyhow!(e))?)
            }
            (None, false) => Some(
                SharedRedis::cluster(&self.redis_cluster, timeout, "--redis-cluster")
                    .map_err(|e| anyhow::anyhow!(e))?,
            ),
            (None, true) => None,
        })
    }
}

// Parsed once per run; the size difference between variants is irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum AuditCommand {
    /// Verify audit files offline: the hash chain, and checkpoint
    /// signatures with --key-file. Names the first broken record.
    Verify {
        /// Audit files (audit-*.jsonl) or directories holding them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The HMAC key file the server signs checkpoints with.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Query a running server's audit trail (AuditService/Query) and print
    /// the records as JSON lines. The bearer token comes from the
    /// PORTCULLIS_ADMIN_TOKEN environment variable, never the command line.
    Query {
        /// The admin listener.
        #[arg(long, default_value = "127.0.0.1:50052")]
        admin: std::net::SocketAddr,
        /// Principal, e.g. 'User::"alice"'.
        #[arg(long)]
        principal: Option<String>,
        /// Action, e.g. invoke or 'Action::"invoke"'.
        #[arg(long)]
        action: Option<String>,
        /// Resource, e.g. 'ModelVersion::"sentiment/v2"'.
        #[arg(long)]
        resource: Option<String>,
        /// allow or deny.
        #[arg(long)]
        decision: Option<String>,
        /// A determining policy id.
        #[arg(long)]
        policy_id: Option<String>,
        /// A policy snapshot version.
        #[arg(long)]
        policy_version: Option<String>,
        /// Record kind: decision, authn_failure, policy_reload, policy_rejected, admin_call, checkpoint.
        #[arg(long)]
        kind: Option<String>,
        /// From this time on (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Only the last N seconds.
        #[arg(long)]
        within_seconds: Option<u64>,
        /// At most this many records in all.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory; prints every problem with file:line.
    Validate {
        /// The directory (default: ./policies).
        dir: Option<PathBuf>,
        /// Also check the directory against this configuration (claims its
        /// issuers copy into the Cedar context must fit the schema).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the policy test cases in DIR/tests/*.yaml; exits 1 on a failure.
    Test {
        /// The directory (default: ./policies).
        dir: Option<PathBuf>,
        /// Also fail when an enforced policy is not the determining policy
        /// of any passing case.
        #[arg(long)]
        require_coverage: bool,
    },
    /// List the requests whose decision changes between two git revisions
    /// of the policy directory.
    Diff {
        /// The old revision (commit, tag, branch).
        #[arg(long)]
        from: String,
        /// The new revision (default: the working tree).
        #[arg(long)]
        to: Option<String>,
        /// The policy directory inside a git checkout (default: ./policies).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Requests to replay, one `check` JSON object per line. Default:
        /// the policy test cases of both revisions.
        #[arg(long)]
        replay: Option<PathBuf>,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            policies,
            listen,
            admin_listen,
            http_listen,
            policy_rev,
        } => load_config(config.as_deref()).and_then(|mut c| {
            if let Some(rev) = policy_rev {
                c.policy_revision = Some(rev);
            }
            if let Some(p) = policies {
                c.policies = p;
            }
            if let Some(l) = listen {
                c.listen = l;
            }
            if let Some(a) = admin_listen {
                c.admin_listen = a;
            }
            if let Some(h) = http_listen {
                c.http_listen = h;
            }
            serve(c)
        }),
        Command::Policy {
            command: PolicyCommand::Validate { dir, config },
        } => validate(
            dir.unwrap_or_else(|| PathBuf::from("policies")),
            config.as_deref(),
        ),
        Command::Policy {
            command:
                PolicyCommand::Test {
                    dir,
                    require_coverage,
                },
        } => policy_test(
            dir.unwrap_or_else(|| PathBuf::from("policies")),
            require_coverage,
        ),
        Command::Policy {
            command:
                PolicyCommand::Diff {
                    from,
                    to,
                    policies,
                    replay,
                    json,
                },
        } => policy_diff(
            &policies.unwrap_or_else(|| PathBuf::from("policies")),
            &from,
            to.as_deref(),
            replay.as_deref(),
            json,
        ),
        Command::Check {
            request,
            policies,
            config,
        } => check(&request, policies, config.as_deref()),
        Command::Audit {
            command: AuditCommand::Verify { files, key_file },
        } => audit_verify(&files, key_file.as_deref()),
        Command::Audit {
            command:
                AuditCommand::Query {
                    admin,
                    principal,
                    action,
                    resource,
                    decision,
                    policy_id,
                    policy_version,
                    kind,
                    since,
                    until,
                    within_seconds,
                    limit,
                },
        } => audit_query(
            admin,
            portcullis::proto::QueryRequest {
                principal: principal.unwrap_or_default(),
                action: action.unwrap_or_default(),
                resource: resource.unwrap_or_default(),
                decision: decision.unwrap_or_default(),
                policy_id: policy_id.unwrap_or_default(),
                policy_version: policy_version.unwrap_or_default(),
                kind: kind.unwrap_or_default(),
                since: since.unwrap_or_default(),
                until: until.unwrap_or_default(),
                within_seconds: within_seconds.unwrap_or_default(),
                limit: 0,
                page_token: String::new(),
            },
            limit,
        ),
        Command::Apikey {
            command:
                ApiKeyCommand::New {
                    app,
                    org,
                    scopes,
                    expires_at,
                    redis,
                },
        } => apikey_new(&app, &org, scopes, expires_at, &redis),
        Command::Apikey {
            command: ApiKeyCommand::Revoke { id, redis },
        } => apikey_revoke(&id, &redis),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

/// Logs on stderr (JSON or text) and, with `otlp:` configured, spans
/// exported to the collector. Returns the tracer provider to flush at exit.
fn init_logging(
    config: &Config,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match config.log.format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let provider = match &config.otlp {
        Some(otlp) => Some(otlp.provider().map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };
    let otel = provider.as_ref().map(portcullis::otlp::layer);
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    Ok(provider)
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    // Inside the runtime: the OTLP exporter's gRPC channel lives on it.
    let tracer = {
        let _entered = runtime.enter();
        init_logging(&config)?
    };
    let served = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let running = portcullis::server::start(&config).await?;
        // Tests and scripts read these lines to learn the bound ports.
        println!("listening decision {}", running.decision_addr);
        println!("listening admin {}", running.admin_addr);
        println!("listening http {}", running.http_addr);
        tracing::info!(
            decision = %running.decision_addr,
            admin = %running.admin_addr,
            http = %running.http_addr,
            "serving"
        );
        running.serve_until(shutdown).await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    });
    if let Some(tracer) = tracer {
        // Send the spans still batched.
        if let Err(e) = tracer.shutdown() {
            eprintln!("otlp: flushing spans at exit failed: {e}");
        }
    }
    served
}

/// Registers the SIGTERM/SIGINT handlers now (before the listeners
/// announce themselves, so an early signal still stops us gracefully) and
/// returns a future that completes on the first of them.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn validate(dir: PathBuf, config: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let claims = match config {
        Some(path) => {
            portcullis::snapshot::ContextClaim::configured(&Config::load(path)?.authentication)
        }
        None => Vec::new(),
    };
    let loaded = portcullis::snapshot::Snapshot::load(&dir).and_then(|s| {
        let errors = s.check_context_claims(&claims);
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(portcullis::snapshot::LoadErrors {
                directory: dir.clone(),
                errors,
            })
        }
    });
    match loaded {
        Ok(s) => {
            println!(
                "{}: ok ({} policies, {} routes, version {})",
                dir.display(),
                s.policy_count(),
                s.routes.routes().len(),
                s.version
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.errors {
                eprintln!(
                    "{}",
                    dir.join(&e.file).display().to_string() + &location_suffix(e)
                );
            }
            eprintln!("{} problem(s) in {}", errors.errors.len(), dir.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn location_suffix(e: &portcullis::snapshot::LoadError) -> String {
    match e.line {
        Some(line) => format!(":{line}: {}", e.message),
        None => format!(": {}", e.message),
    }
}

fn check(
    request: &std::path::Path,
    policies: Option<PathBuf>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let dir = policies.unwrap_or(config.policies.clone());
    let text = std::fs::read_to_string(request)
        .with_context(|| format!("cannot read request file {}", request.display()))?;
    let input = portcullis::check::CheckInput::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", request.display()))?;
    let identity = input
        .identity()
        .map_err(|e| anyhow::anyhow!("{}: {e}", request.display()))?;
    let snapshot = portcullis::snapshot::Snapshot::load(&dir)?;
    let access = input.to_access_request();
    let decision = match identity {
        Some(identity) => {
            portcullis::pipeline::decide_as_at_risk(&snapshot, Some(identity), &access, input.risk)
        }
        None => {
            let (_, authn_redis) = config.redis_connections().map_err(|e| anyhow::anyhow!(e))?;
            // Offline: failures are counted here only, never in the
            // replicas' shared Redis; API keys in Redis are looked up.
            let mut authn_config = config.authentication.clone();
            authn_config.failures.store = portcullis::config::FailureStoreKind::Local;
            let authenticator =
                portcullis::authn::Authenticator::with_redis(&authn_config, authn_redis).map_err(
                    |errs| {
                        anyhow::anyhow!(
                            "{}",
                            errs.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("\n")
                        )
                    },
                )?;
            // Offline: quotas are charged against a fresh in-process store,
            // so the answer shows each limit as a new client would meet it.
            let quotas = portcullis::quota::Quotas::in_process(1024);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start the async runtime")?
                .block_on(async {
                    authenticator.prefetch().await;
                    portcullis::pipeline::decide(&snapshot, &authenticator, &quotas, &access).await
                })
        }
    };
    println!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(ExitCode::SUCCESS)
}

fn policy_test(dir: PathBuf, require_coverage: bool) -> anyhow::Result<ExitCode> {
    let snapshot = portcullis::snapshot::Snapshot::load(&dir)?;
    let report = portcullis::policytest::run(&dir, &snapshot);
    for f in &report.failures {
        eprintln!(
            "FAIL {}",
            dir.join(&f.file).display().to_string() + &f.to_string()[f.file.len()..]
        );
    }
    if !report.uncovered.is_empty() {
        eprintln!(
            "not covered (no passing case has them as determining policy): {}",
            report.uncovered.join(", ")
        );
    }
    println!(
        "policy tests in {}: {} run, {} passed, {} failed; {} of {} policies covered (version {})",
        dir.display(),
        report.run,
        report.passed,
        report.failures.len(),
        snapshot.sources.len() - report.uncovered.len(),
        snapshot.sources.len(),
        snapshot.version
    );
    let failed = !report.failures.is_empty() || (require_coverage && !report.uncovered.is_empty());
    if report.run == 0 {
        eprintln!("no test cases found in {}", dir.join("tests").display());
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn policy_diff(
    dir: &std::path::Path,
    from: &str,
    to: Option<&str>,
    replay: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use portcullis::gitrev::PolicyRevision;
    use portcullis::snapshot::Snapshot;
    let old = PolicyRevision::checkout(dir, from)?;
    let old_snapshot = Snapshot::load_versioned(&old.path(), Some(old.short.clone()))
        .with_context(|| format!("the policies at {from} do not load"))?;
    let new = to
        .map(|rev| PolicyRevision::checkout(dir, rev))
        .transpose()?;
    let new_dir = new
        .as_ref()
        .map(|r| r.path())
        .unwrap_or_else(|| dir.to_path_buf());
    let new_snapshot = Snapshot::load_versioned(&new_dir, new.as_ref().map(|r| r.short.clone()))
        .with_context(|| {
            format!(
                "the policies at {} do not load",
                to.unwrap_or("the working tree")
            )
        })?;
    let requests = match replay {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read replay file {}", path.display()))?;
            portcullis::policydiff::read_replay(&text, &path.display().to_string())
                .map_err(|e| anyhow::anyhow!(e))?
        }
        None => {
            let mut requests = portcullis::policytest::requests(&old.path());
            requests.extend(portcullis::policytest::requests(&new_dir));
            requests
        }
    };
    let impact = portcullis::policydiff::diff(&old_snapshot, &new_snapshot, &requests);
    if json {
        println!("{}", serde_json::to_string_pretty(&impact)?);
    } else {
        for c in &impact.changed {
            println!(
                "CHANGED {}: {} -> {}  ({})",
                c.summary,
                side(&c.from),
                side(&c.to),
                c.request
            );
        }
        for s in &impact.skipped {
            eprintln!("skipped {s}");
        }
        println!(
            "{} request(s) replayed from {} to {}: {} decision(s) change",
            impact.replayed,
            impact.from_version,
            impact.to_version,
            impact.changed.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn side(s: &portcullis::policydiff::Side) -> String {
    let outcome = match s.decision {
        portcullis::decision::Outcome::Allow => "allow",
        portcullis::decision::Outcome::Deny => "deny",
    };
    format!("{outcome} {} [{}]", s.status, s.policies.join(", "))
}
fn audit_verify(
    inputs: &[PathBuf],
    key_file: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use portcullis::audit::chain::CheckpointKey;
    let key = key_file
        .map(CheckpointKey::from_file)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let found = portcullis::audit::writer::list_files(input)
                .with_context(|| format!("cannot list {}", input.display()))?;
            if found.is_empty() {
                anyhow::bail!("{}: no audit files (audit-*.jsonl) in it", input.display());
            }
            files.extend(found.into_iter().map(|(_, p)| p));
        } else {
            files.push(input.clone());
        }
    }
    let v = portcullis::audit::query::verify_files(&files, key.as_ref())
        .map_err(|e| anyhow::anyhow!(e))?;
    let range = match (v.first_seq, v.last_seq) {
        (Some(a), Some(b)) => format!(" (seq {a}..={b})"),
        _ => String::new(),
    };
    let checkpoints = if key.is_some() {
        format!(
            "{} checkpoint signature(s) verified",
            v.checkpoints_verified
        )
    } else {
        format!(
            "{} checkpoint(s) not checked (give --key-file to check their signatures)",
            v.checkpoints_unchecked
        )
    };
    match &v.broken {
        None => {
            println!(
                "ok: {} record(s){range} chain intact; {checkpoints}; head {}",
                v.records, v.head
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            println!("BROKEN: {b}");
            println!(
                "{} record(s){range} verified before the break; {checkpoints}",
                v.records
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A thin client of `AuditService/Query`: follows pages until `limit`
/// records, prints each as one JSON line (the shape of the audit files).
fn audit_query(
    admin: std::net::SocketAddr,
    mut request: portcullis::proto::QueryRequest,
    limit: u64,
) -> anyhow::Result<ExitCode> {
    use portcullis::proto::audit_service_client::AuditServiceClient;
    let token = std::env::var("PORTCULLIS_ADMIN_TOKEN").ok();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let mut client = AuditServiceClient::connect(format!("http://{admin}"))
            .await
            .with_context(|| format!("cannot connect to the admin API at {admin}"))?;
        let mut printed = 0u64;
        while printed < limit {
            request.limit = u32::try_from((limit - printed).min(1000)).unwrap_or(1000);
            let mut call = tonic::Request::new(request.clone());
            if let Some(token) = &token {
                let value = format!("Bearer {token}").parse().map_err(|_| {
                    anyhow::anyhow!("PORTCULLIS_ADMIN_TOKEN is not a valid header value")
                })?;
                call.metadata_mut().insert("authorization", value);
            }
            let page = client
                .query(call)
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            for record in page.records {
                let record =
                    portcullis::admin::from_proto(record).map_err(|e| anyhow::anyhow!(e))?;
                println!("{}", serde_json::to_string(&record)?);
                printed += 1;
            }
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        Ok(ExitCode::SUCCESS)
    })
}
fn apikey_new(
    app: &str,
    org: &str,
    scopes: Vec<String>,
    expires_at: Option<u64>,
    redis: &RedisTarget,
) -> anyhow::Result<ExitCode> {
    for (what, value) in [("--app", app), ("--org", org)] {
        anyhow::ensure!(!value.trim().is_empty(), "{what} must not be empty");
    }
    let scopes: Vec<String> = scopes
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = scopes.iter().find(|s| s.contains(char::is_whitespace)) {
        anyhow::bail!("--scopes: '{bad}' contains whitespace; a scope is one word");
    }
    let new = portcullis::authn::apikey::generate(app, org, scopes, expires_at);
    let store = redis.connect()?;
    if let Some(redis) = store {
        let stored = redis_run(async {
            let mut con = redis.connection().await?;
            Ok(portcullis::authn::apikey_redis::store(&mut con, &new.stored).await?)
        })?;
        anyhow::ensure!(
            stored,
            "a key with id {} already exists in Redis; run the command again",
            new.stored.id
        );
        println!("key: {}", new.key);
        println!(
            "# stored in Redis as {} (the key itself is not stored)",
            portcullis::authn::apikey_redis::redis_key(&new.stored.id)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let entry = serde_json::to_string(&new.stored)?;
    println!("key: {}", new.key);
    println!("# append to the API keys file under `keys:` (the key itself is not stored):");
    println!("  - {entry}");
    println!("# or, for keys in Redis (authentication.api_keys.redis: true), run:");
    let argv: Vec<String> = portcullis::authn::apikey_redis::hset_command(&new.stored)
        .iter()
        .map(|a| shell_quote(a))
        .collect();
    println!("redis-cli {}", argv.join(" "));
    Ok(ExitCode::SUCCESS)
}

fn apikey_revoke(id: &str, redis: &RedisTarget) -> anyhow::Result<ExitCode> {
    let Some(redis) = redis.connect()? else {
        anyhow::bail!(
            "name the Redis that holds the keys with --redis URL or --redis-cluster URLS \
             (keys in a keys file are revoked by setting `revoked: true` in the file)"
        );
    };
    let id = id.strip_prefix("pck_").unwrap_or(id);
    anyhow::ensure!(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "--id: a key id is the 12 hex digits after `pck_`"
    );
    let revoked = redis_run(async {
        let mut con = redis.connection().await?;
        Ok(portcullis::authn::apikey_redis::revoke(&mut con, id).await?)
    })?;
    anyhow::ensure!(revoked, "no API key with id {id} in Redis");
    println!("revoked API key {id}");
    Ok(ExitCode::SUCCESS)
}

/// Runs one Redis exchange for a CLI command, bounded in time.
fn redis_run<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?
        .block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), work)
                .await
                .map_err(|_| anyhow::anyhow!("Redis did not answer within 10 s"))?
        })
}

/// Quotes `s` for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/=@%+,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
