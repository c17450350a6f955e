//! `portcullis serve`: logging, the runtime, the server, and the signals
//! that stop it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::{Config, LogFormat};

/// `portcullis serve` arguments: each overrides the config file.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Configuration file (YAML); every field has a default
    /// (docs/configuration.md). Without one: the bundled ./policies, the
    /// listeners below, the audit trail in ./audit.
    #[arg(long, env = "PORTCULLIS_CONFIG", value_parser = super::PathTo("the config file's path"))]
    config: Option<PathBuf>,
    /// Policy directory (overrides `policies` in the config file)
    /// [default: policies]
    #[arg(long, value_parser = super::PathTo("the policy directory's path"))]
    policies: Option<PathBuf>,
    /// Decision gRPC listener: ext_authz, RLS, health, reflection
    /// (overrides `listen`) [default: 127.0.0.1:50051]
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Admin gRPC listener (overrides `admin_listen`)
    /// [default: 127.0.0.1:50052]
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Operations HTTP listener: /metrics, /healthz, /readyz
    /// (overrides `http_listen`) [default: 127.0.0.1:9090]
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// Forward-auth HTTP decision listener for nginx, Caddy, Traefik,
    /// Envoy's HTTP mode and Gateway API (overrides `forward_auth.listen`)
    /// [default: off]
    #[arg(long)]
    forward_auth_listen: Option<std::net::SocketAddr>,
    /// Serve the policy directory as it was at this git revision
    /// (overrides `policy_revision`); rolling back is pinning the
    /// previous one.
    #[arg(long)]
    policy_rev: Option<String>,
}

impl ServeArgs {
    /// Loads the config, applies the overrides, serves until a signal.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut c = super::load_config(self.config.as_deref())?;
        if let Some(rev) = self.policy_rev {
            c.policy_revision = Some(rev);
        }
        if let Some(p) = self.policies {
            c.policies = p;
        }
        if let Some(l) = self.listen {
            c.listen = l;
        }
        if let Some(a) = self.admin_listen {
            c.admin_listen = a;
        }
        if let Some(h) = self.http_listen {
            c.http_listen = h;
        }
        if let Some(f) = self.forward_auth_listen {
            c.forward_auth.listen = Some(f);
        }
        if c.policy_revision.is_none() {
            c.policies =
                super::policy_dir(c.policies, "--policies DIR or set `policies` in --config")?;
        }
        serve(c)
    }
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
    let otel = provider.as_ref().map(crate::otlp::layer);
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    Ok(provider)
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let scheduler = crate::server::runtime::Scheduler::for_threads(config.server.worker_threads)
        .map_err(anyhow::Error::msg)?;
    let runtime = scheduler
        .build("portcullis")
        .context("start the async runtime")?;
    // Inside the runtime: the OTLP exporter's gRPC channel lives on it.
    let tracer = {
        let _entered = runtime.enter();
        init_logging(&config)?
    };
    let served = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let running = crate::server::start(&config).await?;
        // Tests and scripts read these lines to learn the bound ports.
        println!("listening decision {}", running.decision_addr);
        println!("listening admin {}", running.admin_addr);
        println!("listening http {}", running.http_addr);
        if let Some(addr) = running.forward_auth_addr {
            println!("listening forward_auth {addr}");
        }
        tracing::info!(
            decision = %running.decision_addr,
            admin = %running.admin_addr,
            http = %running.http_addr,
            forward_auth = running.forward_auth_addr.map(|a| a.to_string()),
            worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            scheduler = scheduler.name(),
            "serving"
        );
        running.serve_until(shutdown).await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    });
    if let Some(tracer) = tracer {
        // Send the spans still batched. The batch thread exports through
        // the gRPC channel whose connection is a task on the runtime, and
        // the current-thread scheduler runs tasks only inside `block_on`:
        // the runtime keeps running until the flush is done.
        let flushed = runtime
            .block_on(async { tokio::task::spawn_blocking(move || tracer.shutdown()).await });
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("otlp: flushing spans at exit failed: {e}"),
            Err(e) => eprintln!("otlp: flushing spans at exit failed: {e}"),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn serve_help_shows_the_defaults_the_server_uses() {
        let mut cli = super::super::Cli::command();
        let help = cli
            .find_subcommand_mut("serve")
            .expect("serve")
            .render_long_help()
            .to_string();
        let defaults = crate::config::Config::default();
        for shown in [
            format!("[default: {}]", defaults.listen),
            format!("[default: {}]", defaults.admin_listen),
            format!("[default: {}]", defaults.http_listen),
            format!("[default: {}]", defaults.policies.display()),
            format!("./{}", defaults.audit.directory.display()),
        ] {
            assert!(help.contains(&shown), "serve --help lacks {shown}:\n{help}");
        }
    }
}
