//! Reading the audit files: filtered queries with paging, lookup by id, and
//! verification of the chain across files (the same check the offline
//! `portcullis audit verify` runs). Reads the files as they are; it never
//! writes them.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::chain::{CheckpointKey, Location, Verification, Verifier};
use super::signing::PublicKey;
use super::writer::list_files;
use super::AuditRecord;
use crate::time::parse_rfc3339_ms;

/// Which records a query or a tail wants. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Exact principal, e.g. `User::"alice"`.
    pub principal: String,
    /// Action: `Action::"invoke"`, or just `invoke`.
    pub action: String,
    /// Exact resource.
    pub resource: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// A determining policy id.
    pub policy_id: String,
    /// The snapshot version.
    pub policy_version: String,
    /// The record kind (`decision`, `authn_failure`, ...).
    pub kind: String,
    /// Inclusive lower bound on time, ms since the epoch.
    pub since_ms: Option<i64>,
    /// Exclusive upper bound on time, ms since the epoch.
    pub until_ms: Option<i64>,
}

impl Filter {
    /// True when `r` is wanted.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let eq = |want: &str, have: &str| want.is_empty() || want == have;
        let action_ok = self.action.is_empty()
            || self.action == r.action
            || format!("Action::{:?}", self.action) == r.action;
        let policy_ok = self.policy_id.is_empty()
            || r.determining_policies.iter().any(|p| p == &self.policy_id);
        let time_ok = match (self.since_ms, self.until_ms) {
            (None, None) => true,
            (since, until) => match parse_rfc3339_ms(&r.time) {
                Some(t) => since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u),
                None => false,
            },
        };
        eq(&self.principal, &r.principal)
            && action_ok
            && eq(&self.resource, &r.resource)
            && eq(&self.decision, &r.decision)
            && policy_ok
            && eq(&self.policy_version, &r.policy_version)
            && eq(&self.kind, r.kind.as_str())
            && time_ok
    }
}

/// Calls `f` with every line of the directory's files from the file
/// holding `from_seq` on, in chain order, until it returns false. An
/// incomplete last line of the newest file (being written right now) is
/// not passed.
fn each_line(
    dir: &Path,
    from_seq: u64,
    mut f: impl FnMut(&str, Location) -> bool,
) -> std::io::Result<()> {
    let files = list_files(dir)?;
    // The last file whose first seq is <= from_seq holds it.
    let start = files
        .iter()
        .rposition(|(first, _)| *first <= from_seq)
        .unwrap_or(0);
    let last = files.len().saturating_sub(1);
    for (index, (_, path)) in files.iter().enumerate().skip(start) {
        let mut reader = BufReader::new(File::open(path)?);
        let mut buf = Vec::new();
        let mut line_no = 0;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            let complete = buf.last() == Some(&b'\n');
            if !complete && index == last {
                // Being written right now.
                break;
            }
            line_no += 1;
            // An incomplete line in an older file is damage: pass it on.
            let end = if complete { buf.len() - 1 } else { buf.len() };
            let text = String::from_utf8_lossy(&buf[..end]);
            let at = Location {
                file: path.display().to_string(),
                line: line_no,
            };
            if !f(&text, at) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A page of matching records in chain order, starting at `from_seq`, and
/// the seq to continue from when the page is full.
pub fn query(
    dir: &Path,
    filter: &Filter,
    from_seq: u64,
    limit: usize,
) -> std::io::Result<(Vec<AuditRecord>, Option<u64>)> {
    let mut out = Vec::new();
    let mut next = None;
    each_line(dir, from_seq, |text, _| {
        let Ok(record) = serde_json::from_str::<AuditRecord>(text) else {
            // Damaged lines are Verify's business, not Query's.
            return true;
        };
        if record.seq < from_seq || !filter.matches(&record) {
            return true;
        }
        if out.len() == limit {
            next = Some(record.seq);
            return false;
        }
        out.push(record);
        true
    })?;
    Ok((out, next))
}

/// The record with `id`, if any.
pub fn get(dir: &Path, id: &str) -> std::io::Result<Option<AuditRecord>> {
    let mut found = None;
    let needle = format!("\"id\":{}", serde_json::Value::String(id.to_string()));
    each_line(dir, 0, |text, _| {
        if !text.contains(&needle) {
            return true;
        }
        match serde_json::from_str::<AuditRecord>(text) {
            Ok(r) if r.id == id => {
                found = Some(r);
                false
            }
            _ => true,
        }
    })?;
    Ok(found)
}

/// Verifies the chain in the directory for records `from..=to`, and lists
/// the files read. `written` is the seq of the last record the live
/// writer has written to the files ([`super::Head`], read before the
/// files), when one runs and has written any: a chain that ends before it
/// (within `to`) was cut short, and is reported broken where the next
/// record belonged. Records queued but not yet written are not in it, so a
/// Verify while records are being written is no false alarm.
pub fn verify_dir(
    dir: &Path,
    key: Option<&CheckpointKey>,
    from: u64,
    to: u64,
    written: Option<u64>,
) -> std::io::Result<(Verification, Vec<String>)> {
    let mut verifier = Verifier::with_range(key, from, to);
    let mut files: Vec<String> = Vec::new();
    let mut last: Option<Location> = None;
    each_line(dir, from, |text, at| {
        if files.last() != Some(&at.file) {
            files.push(at.file.clone());
        }
        last = Some(at.clone());
        verifier.line(text, at);
        !verifier.done()
    })?;
    if let Some(written) = written {
        let next = match last {
            Some(at) => Location {
                line: at.line + 1,
                ..at
            },
            None => Location {
                file: dir.display().to_string(),
                line: 1,
            },
        };
        verifier.reaches(written, next);
    }
    Ok((verifier.finish(), files))
}

/// Verifies files given by the operator, in the order of their names,
/// checking HMAC checkpoints with `key` and Ed25519 ones with
/// `public_keys` when given. An incomplete last line of the newest file (a
/// write torn when the process was killed) is reported as
/// [`Verification::torn_tail`]; one in an older file is a break (the
/// writer cuts a torn line off before it writes on, so it is damage).
pub fn verify_files(
    paths: &[PathBuf],
    key: Option<&CheckpointKey>,
    public_keys: &[PublicKey],
) -> Result<Verification, String> {
    let mut paths = paths.to_vec();
    paths.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
    let mut verifier = Verifier::new(key).with_public_keys(public_keys);
    let newest = paths.len().saturating_sub(1);
    for (index, path) in paths.iter().enumerate() {
        let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut line_no = 0;
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let at = Location {
                file: path.display().to_string(),
                line: line_no,
            };
            if buf.last() != Some(&b'\n') {
                if index == newest && !verifier.is_broken() {
                    let mut v = verifier.finish();
                    v.torn_tail = Some(at);
                    return Ok(v);
                }
                verifier.line("<incomplete line: a write torn by a crash>", at);
                break;
            }
            verifier.line(&String::from_utf8_lossy(&buf[..buf.len() - 1]), at);
            if verifier.is_broken() {
                return Ok(verifier.finish());
            }
        }
    }
    Ok(verifier.finish())
}
