//! The command line: one file per command group (`serve`, `policy`,
//! `check`, `audit`, `apikey`); this file parses and dispatches. Errors
//! become one `error: ...` line on stderr and exit code 1.

mod apikey;
mod audit;
mod check;
mod policy;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

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
    Serve(serve::ServeArgs),
    /// Work with a policy directory.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Work with the audit trail.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Decide one request offline and print the decision as JSON.
    Check(check::CheckArgs),
    /// Manage API keys.
    Apikey {
        #[command(subcommand)]
        command: apikey::ApiKeyCommand,
    },
}

/// Parses the command line, runs the command, and turns an error into
/// one line on stderr and a failing exit code.
pub fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(args) => args.run(),
        Command::Policy { command } => command.run(),
        Command::Audit { command } => command.run(),
        Command::Check(args) => args.run(),
        Command::Apikey { command } => command.run(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration file, or every default without one.
fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}
