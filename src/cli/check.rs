//! `portcullis check`: decide one request from a JSON file offline and
//! print the decision.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// `portcullis check` arguments.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// A JSON file describing the request (see README).
    #[arg(long, value_parser = super::PathTo("the request file's path"))]
    request: PathBuf,
    /// Policy directory (default: the config's, else ./policies).
    #[arg(long, value_parser = super::PathTo("the policy directory's path"))]
    policies: Option<PathBuf>,
    /// Configuration file, for JWT issuers.
    #[arg(long, value_parser = super::PathTo("the config file's path"))]
    config: Option<PathBuf>,
    /// Exit with status 2 when the decision is a deny (as `opa eval
    /// --fail`); without it the exit status is 0 whatever the decision.
    #[arg(long)]
    fail: bool,
}

/// The exit status of a deny under `--fail` (1 is an error).
pub const DENIED: u8 = 2;

impl CheckArgs {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let allowed = check(&self.request, self.policies, self.config.as_deref())?;
        Ok(if self.fail && !allowed {
            ExitCode::from(DENIED)
        } else {
            ExitCode::SUCCESS
        })
    }
}

fn check(
    request: &std::path::Path,
    policies: Option<PathBuf>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<bool> {
    let config = super::load_config(config)?;
    let dir = super::policy_dir(
        policies.unwrap_or(config.policies.clone()),
        "--policies DIR",
    )?;
    let text = std::fs::read_to_string(request)
        .with_context(|| format!("cannot read request file {}", request.display()))?;
    let input = crate::adapters::offline::check::CheckInput::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", request.display()))?;
    let identity = input
        .identity()
        .map_err(|e| anyhow::anyhow!("{}: {e}", request.display()))?;
    let snapshot = crate::policy::snapshot::Snapshot::load(&dir)?;
    let access = input.to_access_request();
    let decision = match identity {
        Some(identity) => {
            crate::pipeline::decide_offline(&snapshot, &access, Some(identity), input.risk)
        }
        None => {
            let (_, authn_redis) = config
                .redis_connections(&tokio_util::task::TaskTracker::new())
                .map_err(|e| anyhow::anyhow!(e))?;
            // Offline: failures are counted here only, never in the
            // replicas' shared Redis; API keys in Redis are looked up.
            let mut authn_config = config.authentication.clone();
            authn_config.failures.store = crate::authn::config::FailureStoreKind::Local;
            let authenticator = crate::authn::Authenticator::with_redis(&authn_config, authn_redis)
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
            let quotas = crate::quota::Quotas::in_process(1024);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start the async runtime")?
                .block_on(async {
                    authenticator.prefetch().await;
                    let live = crate::pipeline::Live {
                        door: crate::pipeline::Door::ExtAuthz,
                        authenticator: &authenticator,
                        quotas: &quotas,
                        audit: None,
                        anomalies: None,
                    };
                    let ask = crate::pipeline::Ask::Access(&access);
                    crate::pipeline::decide(&snapshot, ask, crate::pipeline::Mode::Enforce(live))
                        .await
                })
        }
    };
    println!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(decision.is_allowed())
}
