//! Policy tests (`portcullis policy test`): request -> expected decision
//! cases in `<policy dir>/tests/*.yaml`, run against the directory's
//! snapshot like `opa test`. It runs cases and reports; it does not load or
//! validate the policies themselves (that is `snapshot`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::adapters::offline::check::{CheckInput, IdentityInput};
use crate::adapters::offline::response_case::{self, ResponseExpect, ResponseInput};
use crate::authz;
use crate::decision::{Decision, DenyReason, Outcome};
use crate::pipeline;
use crate::policy::snapshot::Snapshot;

/// One file of cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

/// One case: an HTTP request (with an identity standing in for
/// credentials) or, for actions no route reaches (the admin API), a Cedar
/// request; and what the policies must decide.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    request: Option<CheckInput>,
    #[serde(default)]
    cedar: Option<CedarCase>,
    /// An upstream response to run through the route's response checks.
    #[serde(default)]
    response: Option<ResponseInput>,
    expect: Expect,
}

/// A Cedar request given directly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CedarCase {
    /// e.g. `User::"dave"`.
    principal: String,
    #[serde(default)]
    parents: Vec<String>,
    /// Scopes the credential grants.
    #[serde(default)]
    scopes: Vec<String>,
    /// Whether the caller passed multi-factor authentication.
    #[serde(default)]
    mfa: bool,
    /// The action id, e.g. `audit:read`.
    action: String,
    /// e.g. `AuditLog::"main"`.
    resource: String,
    /// The context record, as JSON/YAML.
    #[serde(default)]
    context: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    decision: Outcome,
    #[serde(default)]
    status: Option<u16>,
    /// Exactly these determining policy ids (any order), when given.
    #[serde(default)]
    policies: Option<Vec<String>>,
    /// What the response checks make of `response`.
    #[serde(default)]
    response: Option<ResponseExpect>,
}

/// A case that did not decide as expected, or a file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The case file, relative to the policy directory.
    pub file: String,
    /// 1-based line of the case (or of the problem in the file).
    pub line: usize,
    /// The case name, when the file parsed.
    pub case: Option<String>,
    /// What differed.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.case {
            Some(case) => write!(
                f,
                "{}:{}: case '{}': {}",
                self.file, self.line, case, self.message
            ),
            None => write!(f, "{}:{}: {}", self.file, self.line, self.message),
        }
    }
}

/// The result of running every case.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases run.
    pub run: usize,
    /// Cases that passed.
    pub passed: usize,
    /// What failed.
    pub failures: Vec<Failure>,
    /// Enforced policies that no passing case names as determining.
    pub uncovered: Vec<String>,
}

/// Runs every `tests/*.yaml` file of `dir` against `snapshot`.
pub fn run(dir: &Path, snapshot: &Snapshot) -> Report {
    let mut report = Report::default();
    let mut covered = BTreeSet::new();
    for path in case_files(&dir.join("tests")) {
        let file = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                report.failures.push(Failure {
                    file,
                    line: 1,
                    case: None,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let cases: CaseFile = match serde_yaml_ng::from_str(&text) {
            Ok(c) => c,
            Err(e) => {
                report.failures.push(Failure {
                    file,
                    line: crate::yaml::line(&e).unwrap_or(1),
                    case: None,
                    message: e.to_string(),
                });
                continue;
            }
        };
        for (index, case) in cases.cases.iter().enumerate() {
            report.run += 1;
            let line = case_line(&text, index);
            let fail = |message: String| Failure {
                file: file.clone(),
                line,
                case: Some(case.name.clone()),
                message,
            };
            match check_case(snapshot, case) {
                Ok(determining) => {
                    report.passed += 1;
                    covered.extend(determining);
                }
                Err(message) => report.failures.push(fail(message)),
            }
        }
    }
    report.uncovered = snapshot
        .sources
        .keys()
        .filter(|id| !covered.contains(*id))
        .cloned()
        .collect();
    report
}

/// The requests of every case in `dir/tests/*.yaml`, named
/// `file:line: case name`; unreadable files are skipped (`run` reports them).
pub fn requests(dir: &Path) -> Vec<(String, CheckInput)> {
    let mut out = Vec::new();
    for path in case_files(&dir.join("tests")) {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(file) = serde_yaml_ng::from_str::<CaseFile>(&text) else {
            continue;
        };
        let name = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        for (index, case) in file.cases.into_iter().enumerate() {
            if let Some(request) = case.request {
                out.push((
                    format!("{name}:{}: {}", case_line(&text, index), case.name),
                    request,
                ));
            }
        }
    }
    out
}

/// Decides a case; `Ok(determining policies)` when it matches expectations.
fn check_case(snapshot: &Snapshot, case: &Case) -> Result<Vec<String>, String> {
    let decision = match (&case.request, &case.cedar) {
        (Some(request), None) => {
            let identity = request.identity()?;
            pipeline::decide_offline(
                snapshot,
                &request.to_access_request(),
                identity,
                request.risk,
            )
        }
        (None, Some(cedar)) => decide_cedar(snapshot, cedar)?,
        _ => return Err("give exactly one of 'request' (HTTP) or 'cedar'".into()),
    };
    let got = format!(
        "{} {} (reason: {}, determining: [{}]{})",
        outcome_name(decision.decision),
        decision.status,
        decision.reason.map(|r| r.code()).unwrap_or("none"),
        decision.determining_policies.join(", "),
        if decision.errors.is_empty() {
            String::new()
        } else {
            format!(", errors: {}", decision.errors.join("; "))
        }
    );
    let e = &case.expect;
    if decision.decision != e.decision || e.status.is_some_and(|s| s != decision.status) {
        return Err(format!(
            "expected {}{}, got {got}",
            outcome_name(e.decision),
            e.status.map(|s| format!(" {s}")).unwrap_or_default()
        ));
    }
    if let Some(expected) = &e.policies {
        let want: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        let have: BTreeSet<&str> = decision
            .determining_policies
            .iter()
            .map(String::as_str)
            .collect();
        if want != have {
            return Err(format!(
                "expected determining policies [{}], got {got}",
                expected.join(", ")
            ));
        }
    }
    match (&case.response, &e.response) {
        (Some(response), expect) => response_case::check(
            snapshot,
            &decision,
            response,
            expect.as_ref().unwrap_or(&ResponseExpect::default()),
        )?,
        (None, Some(_)) => return Err("expect.response needs a 'response' to check".into()),
        (None, None) => {}
    }
    Ok(decision.determining_policies)
}

/// Evaluates a Cedar request directly; allow is 200, deny 403.
fn decide_cedar(snapshot: &Snapshot, case: &CedarCase) -> Result<Decision, String> {
    let identity = CheckInput::identity_of(&IdentityInput {
        principal: case.principal.clone(),
        parents: case.parents.clone(),
        scopes: case.scopes.clone(),
        mfa: case.mfa,
    })?;
    let resource = case.resource.parse().map_err(|e| {
        format!(
            "resource '{}' is not a Cedar entity uid: {e}",
            case.resource
        )
    })?;
    let context = if case.context.is_null() {
        serde_json::json!({})
    } else {
        case.context.clone()
    };
    let (outcome, _shadow) = authz::authorize(
        snapshot.authz(),
        &identity,
        &case.action,
        resource,
        authz::ContextInput::Json(context),
    );
    let mut d = Decision::new(&snapshot.version);
    d.determining_policies = outcome.determining;
    d.errors = outcome.errors;
    Ok(if outcome.allowed {
        d.allow()
    } else if d.errors.is_empty() {
        d.deny(DenyReason::Forbidden, "")
    } else {
        d.deny(DenyReason::PolicyError, "")
    })
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Allow => "allow",
        Outcome::Deny => "deny",
    }
}

fn case_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// The line of the `index`-th `- name:` entry under `cases:`.
fn case_line(text: &str, index: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("- name:"))
        .nth(index)
        .map(|(i, _)| i + 1)
        .unwrap_or(1)
}
