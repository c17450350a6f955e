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
    },
    /// Work with a policy directory.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
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
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory; prints every problem with file:line.
    Validate {
        /// The directory (default: ./policies).
        dir: Option<PathBuf>,
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
        } => load_config(config.as_deref()).and_then(|mut c| {
            if let Some(p) = policies {
                c.policies = p;
            }
            if let Some(l) = listen {
                c.listen = l;
            }
            if let Some(a) = admin_listen {
                c.admin_listen = a;
            }
            serve(c)
        }),
        Command::Policy {
            command: PolicyCommand::Validate { dir },
        } => validate(dir.unwrap_or_else(|| PathBuf::from("policies"))),
        Command::Check {
            request,
            policies,
            config,
        } => check(&request, policies, config.as_deref()),
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

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let running = portcullis::server::start(&config).await?;
        let stop = shutdown_signal();
        // Tests and scripts read these lines to learn the bound ports.
        println!("listening decision {}", running.decision_addr);
        println!("listening admin {}", running.admin_addr);
        tracing::info!(decision = %running.decision_addr, admin = %running.admin_addr, "serving");
        running.serve_until(stop).await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Registers for SIGTERM/Ctrl-C now (so a signal sent as soon as the
/// `listening` lines appear is not lost) and resolves when one arrives.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate()).ok()
    };
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn validate(dir: PathBuf) -> anyhow::Result<ExitCode> {
    match portcullis::snapshot::Snapshot::load(&dir) {
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
        Some(identity) => portcullis::pipeline::decide_as(&snapshot, Some(identity), &access),
        None => {
            let authenticator = portcullis::authn::Authenticator::new(&config.authentication)
                .map_err(|errs| {
                    anyhow::anyhow!(
                        "{}",
                        errs.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })?;
            // Offline: quotas are charged against a fresh in-process store,
            // so the answer shows each limit as a new client would meet it.
            let quotas = portcullis::quota::Quotas::in_process(1024);
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?
                .block_on(portcullis::pipeline::decide(
                    &snapshot,
                    &authenticator,
                    &quotas,
                    &access,
                ))
        }
    };
    println!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(ExitCode::SUCCESS)
}
