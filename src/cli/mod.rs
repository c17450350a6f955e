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
    let command = Cli::parse().command;
    if !matches!(command, Command::Serve(_)) {
        die_quietly_on_a_closed_pipe();
    }
    let result = match command {
        Command::Serve(args) => args.run(),
        Command::Policy { command } => command.run(),
        Command::Audit { command } => command.run(),
        Command::Check(args) => args.run(),
        Command::Apikey { command } => command.run(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, a cause left out when the text
/// before already says it (`cannot listen on ...: Address in use` once,
/// not twice).
fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// A command whose output is piped into `head` ends quietly when the pipe
/// closes, as other command-line tools do, instead of panicking in
/// `println!`. Not for `serve`: a server must survive a peer that hangs up.
fn die_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE, before any
    // thread is started, touches no Rust state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `dir` when it is a directory; otherwise an error that says how to
/// name one (`how`).
fn policy_dir(dir: std::path::PathBuf, how: &str) -> anyhow::Result<std::path::PathBuf> {
    if dir.as_os_str().is_empty() {
        anyhow::bail!("the policy directory's path is empty; pass {how}");
    }
    if dir.is_dir() {
        return Ok(dir);
    }
    let what = if dir.exists() {
        "is not a directory"
    } else {
        "does not exist"
    };
    anyhow::bail!("policy directory {} {what}; pass {how}", dir.display())
}

/// The configuration file, or every default without one.
fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e =
            anyhow::Error::new(io).context("cannot listen on 127.0.0.1:1: Address already in use");
        assert_eq!(
            describe(&e),
            "cannot listen on 127.0.0.1:1: Address already in use"
        );
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(io).context("cannot read c.yaml");
        assert_eq!(describe(&e), "cannot read c.yaml: No such file");
    }

    #[test]
    fn a_missing_policy_directory_says_how_to_name_one() {
        let e = policy_dir("/nonexistent/policies".into(), "--policies DIR").unwrap_err();
        assert_eq!(
            e.to_string(),
            "policy directory /nonexistent/policies does not exist; pass --policies DIR"
        );
    }

    #[test]
    fn an_empty_policy_directory_path_says_how_to_name_one() {
        let e = policy_dir("".into(), "--policies DIR").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the policy directory's path is empty; pass --policies DIR"
        );
    }
}
