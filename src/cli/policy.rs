//! `portcullis policy`: validate a policy directory, run its test cases,
//! and list the decisions a change between two revisions would change.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use crate::config::Config;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory; prints every problem with file:line.
    Validate {
        /// The directory (default: ./policies).
        #[arg(value_parser = super::PathTo("the policy directory's path"))]
        dir: Option<PathBuf>,
        /// Also check the directory against this configuration (claims its
        /// issuers copy into the Cedar context must fit the schema).
        #[arg(long, value_parser = super::PathTo("the config file's path"))]
        config: Option<PathBuf>,
    },
    /// Run the policy test cases in DIR/tests/*.yaml; exits 1 on a failure.
    Test {
        /// The directory (default: ./policies).
        #[arg(value_parser = super::PathTo("the policy directory's path"))]
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
        #[arg(long, value_parser = super::PathTo("the policy directory's path"))]
        policies: Option<PathBuf>,
        /// Requests to replay, one `check` JSON object per line. Default:
        /// the policy test cases of both revisions.
        #[arg(long, value_parser = super::PathTo("the replay file's path"))]
        replay: Option<PathBuf>,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

impl PolicyCommand {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let or_default = |dir: Option<PathBuf>| dir.unwrap_or_else(|| PathBuf::from("policies"));
        match self {
            PolicyCommand::Validate { dir, config } => validate(or_default(dir), config.as_deref()),
            PolicyCommand::Test {
                dir,
                require_coverage,
            } => policy_test(or_default(dir), require_coverage),
            PolicyCommand::Diff {
                from,
                to,
                policies,
                replay,
                json,
            } => policy_diff(
                &or_default(policies),
                &from,
                to.as_deref(),
                replay.as_deref(),
                json,
            ),
        }
    }
}

fn validate(dir: PathBuf, config: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let dir = super::policy_dir(dir, "the directory: portcullis policy validate DIR")?;
    let claims = match config {
        Some(path) => {
            crate::policy::snapshot::ContextClaim::configured(&Config::load(path)?.authentication)
        }
        None => Vec::new(),
    };
    let loaded = crate::policy::snapshot::Snapshot::load(&dir).and_then(|s| {
        let errors = s.check_context_claims(&claims);
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(crate::policy::snapshot::LoadErrors {
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

fn location_suffix(e: &crate::policy::snapshot::LoadError) -> String {
    match e.line {
        Some(line) => format!(":{line}: {}", e.message),
        None => format!(": {}", e.message),
    }
}

fn policy_test(dir: PathBuf, require_coverage: bool) -> anyhow::Result<ExitCode> {
    let dir = super::policy_dir(dir, "the directory: portcullis policy test DIR")?;
    let snapshot = crate::policy::snapshot::Snapshot::load(&dir)?;
    let report = crate::adapters::offline::test::run(&dir, &snapshot);
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
    use crate::policy::gitrev::PolicyRevision;
    use crate::policy::snapshot::Snapshot;
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
            crate::adapters::offline::diff::read_replay(&text, &path.display().to_string())
                .map_err(|e| anyhow::anyhow!(e))?
        }
        None => {
            let mut requests = crate::adapters::offline::test::requests(&old.path());
            requests.extend(crate::adapters::offline::test::requests(&new_dir));
            requests
        }
    };
    let impact = crate::adapters::offline::diff::diff(&old_snapshot, &new_snapshot, &requests);
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

fn side(s: &crate::adapters::offline::diff::Side) -> String {
    let outcome = match s.decision {
        crate::decision::Outcome::Allow => "allow",
        crate::decision::Outcome::Deny => "deny",
    };
    format!("{outcome} {} [{}]", s.status, s.policies.join(", "))
}
