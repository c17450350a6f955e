//! Policy versions: the version a snapshot carries (the git commit of its
//! directory, or a content hash outside git), and a policy directory as it
//! was at a git revision, materialised into a temporary directory so that
//! it loads like any other (pinning the serving policies to a commit for
//! rollback, and `policy diff`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A policy directory checked out from git at one commit.
#[derive(Debug)]
pub struct PolicyRevision {
    /// The full commit id the revision resolved to.
    pub commit: String,
    /// The short commit id (the snapshot version).
    pub short: String,
    dir: tempfile::TempDir,
}

/// Why a revision could not be materialised.
#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    /// git could not be run or answered with an error.
    #[error("{what}: {message}")]
    Git { what: String, message: String },
    /// The temporary directory could not be written.
    #[error("cannot write the policies of {rev}: {source}")]
    Io { rev: String, source: std::io::Error },
}

impl PolicyRevision {
    /// Materialises `policies` (a directory inside a git checkout) as it
    /// was at `rev` (a commit, tag or branch).
    pub fn checkout(policies: &Path, rev: &str) -> Result<Self, RevisionError> {
        if rev.starts_with('-') {
            return Err(RevisionError::Git {
                what: format!("revision '{rev}'"),
                message: "a revision cannot start with '-'".into(),
            });
        }
        let prefix = git(
            policies,
            &["rev-parse", "--show-prefix"],
            "find the policy directory in git",
        )?;
        let commit = git(
            policies,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{rev}^{{commit}}"),
            ],
            &format!("revision '{rev}' is not a commit in this repository"),
        )?;
        let short = git(
            policies,
            &["rev-parse", "--short=12", &commit],
            "shorten the commit id",
        )?;
        let listing = git(
            policies,
            &[
                "ls-tree",
                "-r",
                "-z",
                "--full-tree",
                "--name-only",
                &commit,
                "--",
                &prefix,
            ],
            &format!("list the policy files at {short}"),
        )?;
        let dir = tempfile::Builder::new()
            .prefix("portcullis-policies-")
            .tempdir()
            .map_err(|source| RevisionError::Io {
                rev: rev.into(),
                source,
            })?;
        let mut found = false;
        for path in listing.split('\0').filter(|p| !p.is_empty()) {
            let relative = path.strip_prefix(prefix.as_str()).unwrap_or(path);
            let bytes =
                git_bytes(policies, &["show", &format!("{commit}:{path}")]).map_err(|message| {
                    RevisionError::Git {
                        what: format!("read {path} at {short}"),
                        message,
                    }
                })?;
            let target = dir.path().join(relative);
            let io = |source| RevisionError::Io {
                rev: rev.into(),
                source,
            };
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::write(&target, bytes).map_err(io)?;
            found = true;
        }
        if !found {
            return Err(RevisionError::Git {
                what: format!("revision '{rev}' ({short})"),
                message: format!(
                    "has no files under {}",
                    if prefix.is_empty() {
                        "the repository root"
                    } else {
                        prefix.as_str()
                    }
                ),
            });
        }
        Ok(PolicyRevision { commit, short, dir })
    }

    /// Where the files are.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

fn git(dir: &Path, args: &[&str], what: &str) -> Result<String, RevisionError> {
    git_bytes(dir, args)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\n')
                .to_string()
        })
        .map_err(|message| RevisionError::Git {
            what: what.to_string(),
            message,
        })
}

fn git_bytes(dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(if err.is_empty() {
            format!("git exited with {}", out.status)
        } else {
            err
        })
    }
}

/// The snapshot's version: the git commit of the directory when it is in a
/// git checkout (with `-dirty.<hash>` when the files differ from the
/// commit), otherwise `sha256:<hash>` of the files.
pub(super) fn version_of(dir: &Path, files: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (name, text) in files {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    let hash = hex::encode(hasher.finalize());
    let short = &hash[..12];
    match git_commit(dir) {
        Some((commit, false)) => commit,
        Some((commit, true)) => format!("{commit}-dirty.{short}"),
        None => format!("sha256:{short}"),
    }
}

/// `(short commit, dirty)` for a directory inside a git checkout.
pub(super) fn git_commit(dir: &Path) -> Option<(String, bool)> {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "--short=12", "HEAD"])?;
    if commit.is_empty() {
        return None;
    }
    // Policy tests (tests/) are not part of the snapshot.
    let status = run(&["status", "--porcelain", "--", ".", ":(exclude)tests"])?;
    Some((commit, !status.is_empty()))
}
