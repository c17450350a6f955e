//! Impact analysis (`portcullis policy diff`): replays requests against two
//! snapshots and lists those whose decision changes. It compares; loading
//! the two versions is the caller's job (see `gitrev`).

use serde::Serialize;

use crate::adapters::offline::check::CheckInput;
use crate::decision::{Decision, Outcome};
use crate::pipeline;
use crate::policy::snapshot::Snapshot;

/// One side of a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    /// Allow or deny.
    pub decision: Outcome,
    /// HTTP status.
    pub status: u16,
    /// Determining policies.
    pub policies: Vec<String>,
}

impl From<&Decision> for Side {
    fn from(d: &Decision) -> Self {
        Side {
            decision: d.decision,
            status: d.status,
            policies: d.determining_policies.clone(),
        }
    }
}

/// A request whose decision differs between the two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Where the request came from (file:line and a name).
    pub request: String,
    /// `METHOD path as principal`.
    pub summary: String,
    /// The decision under the old snapshot.
    pub from: Side,
    /// The decision under the new snapshot.
    pub to: Side,
}

/// The outcome of a replay.
#[derive(Debug, Default, Serialize)]
pub struct Impact {
    /// Version of the old snapshot.
    pub from_version: String,
    /// Version of the new snapshot.
    pub to_version: String,
    /// Requests replayed.
    pub replayed: usize,
    /// Requests whose decision (allow/deny or status) changed.
    pub changed: Vec<Change>,
    /// Requests that could not be replayed (bad identity).
    pub skipped: Vec<String>,
}

/// Replays `requests` against both snapshots. A request changes when its
/// outcome or status differs; a different set of determining policies
/// alone is not a change in what the client sees.
pub fn diff(from: &Snapshot, to: &Snapshot, requests: &[(String, CheckInput)]) -> Impact {
    let mut impact = Impact {
        from_version: from.version.clone(),
        to_version: to.version.clone(),
        ..Impact::default()
    };
    for (name, input) in requests {
        let identity = match input.identity() {
            Ok(i) => i,
            Err(e) => {
                impact.skipped.push(format!("{name}: {e}"));
                continue;
            }
        };
        let access = input.to_access_request();
        let a = pipeline::decide_offline(from, &access, identity.clone(), input.risk);
        let b = pipeline::decide_offline(to, &access, identity, input.risk);
        impact.replayed += 1;
        if a.decision != b.decision || a.status != b.status {
            let who = input
                .identity
                .as_ref()
                .map(|i| i.principal.clone())
                .unwrap_or_else(|| "anonymous".into());
            impact.changed.push(Change {
                request: name.clone(),
                summary: format!("{} {} as {who}", access.method, access.path),
                from: Side::from(&a),
                to: Side::from(&b),
            });
        }
    }
    impact
}

/// Reads a replay file: one request per line in the `check` JSON format
/// (JSON lines); blank lines and lines starting with `#` are skipped.
pub fn read_replay(text: &str, file: &str) -> Result<Vec<(String, CheckInput)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let input = CheckInput::parse(trimmed).map_err(|e| format!("{file}:{}: {e}", i + 1))?;
        out.push((format!("{file}:{}", i + 1), input));
    }
    Ok(out)
}
