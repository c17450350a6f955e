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

/// The value parser of every path argument: an empty path is refused
/// naming the argument and what to give (`--config: empty; give the config
/// file's path`), where clap's own parser said no value was supplied and
/// an empty path reaching a command named nothing (`cannot read config
/// file : ...`). Any other path, UTF-8 or not, is taken as given.
/// Holds what to give, e.g. `the config file's path`.
#[derive(Clone)]
struct PathTo(&'static str);

impl clap::builder::TypedValueParser for PathTo {
    type Value = std::path::PathBuf;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        if !value.is_empty() {
            return Ok(value.into());
        }
        let name = match arg {
            Some(a) => match a.get_long() {
                Some(long) => format!("--{long}"),
                None => a.get_id().as_str().to_uppercase(),
            },
            None => "the path".to_string(),
        };
        let message = format!("{name}: empty; give {}\n", self.0);
        Err(clap::Error::raw(clap::error::ErrorKind::InvalidValue, message).with_cmd(cmd))
    }
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
    fn an_empty_path_argument_is_refused_naming_it_and_what_to_give() {
        for (args, message) in [
            (
                &["serve", "--config", ""][..],
                "--config: empty; give the config file's path",
            ),
            (
                &["serve", "--policies", ""],
                "--policies: empty; give the policy directory's path",
            ),
            (
                &["check", "--request", "r.json", "--config", ""],
                "--config: empty; give the config file's path",
            ),
            (
                &["check", "--request", ""],
                "--request: empty; give the request file's path",
            ),
            (
                &["policy", "validate", "--config", ""],
                "--config: empty; give the config file's path",
            ),
            (
                &["policy", "validate", ""],
                "DIR: empty; give the policy directory's path",
            ),
            (
                &["policy", "test", ""],
                "DIR: empty; give the policy directory's path",
            ),
            (
                &["policy", "diff", "--from", "HEAD", "--replay", ""],
                "--replay: empty; give the replay file's path",
            ),
            (
                &["audit", "public-key", "--config", ""],
                "--config: empty; give the config file's path",
            ),
            (
                &["audit", "verify", "audit", ""],
                "FILES: empty; give the path of an audit file or directory",
            ),
            (
                &["audit", "verify", "audit", "--key-file", ""],
                "--key-file: empty; give the HMAC key file's path",
            ),
            (
                &["audit", "verify", "audit", "--public-key", ""],
                "--public-key: empty; give the public key file's path",
            ),
        ] {
            let argv = std::iter::once("portcullis").chain(args.iter().copied());
            let Err(e) = Cli::try_parse_from(argv) else {
                panic!("{args:?} parsed")
            };
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{args:?}");
            assert_eq!(e.to_string(), format!("error: {message}\n"), "{args:?}");
        }
        // Any other path is taken as given.
        assert!(Cli::try_parse_from(["portcullis", "serve", "--config", " "]).is_ok());
    }
}
