//! The response half of a policy test case: an upstream response to the
//! case's request, run through its route's response checks
//! (`responses.yaml`) as the gateway would, and what must come of it.

use serde::Deserialize;

use crate::decision::{Decision, Outcome};
use crate::policy::snapshot::Snapshot;

/// An upstream response (`response:` in a case).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseInput {
    /// Its `Content-Type`, e.g. `text/event-stream`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// The body in one piece.
    #[serde(default)]
    pub body: Option<String>,
    /// Or the body as the chunks the gateway passes on, one by one.
    #[serde(default)]
    pub chunks: Option<Vec<String>>,
}

/// What the checks must make of it (`expect.response:`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseExpect {
    /// The check that withholds the response (none: it goes through).
    #[serde(default)]
    pub blocked: Option<String>,
    /// Exactly these findings, when given.
    #[serde(default)]
    pub findings: Option<Vec<ExpectedFinding>>,
    /// The exact body the client receives (the error event included for
    /// a blocked stream), when given.
    #[serde(default)]
    pub body: Option<String>,
}

/// One expected finding.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExpectedFinding {
    pub check: String,
    /// `canary`, `pattern`, `max_bytes` or a personal data kind.
    pub kind: String,
    pub count: u64,
}

/// Runs `response` through the checks of the route `decision` matched.
pub fn check(
    snapshot: &Snapshot,
    decision: &Decision,
    response: &ResponseInput,
    expect: &ResponseExpect,
) -> Result<(), String> {
    if decision.decision != Outcome::Allow {
        return Err("a case with a response needs a request the policies allow".into());
    }
    let chunks: Vec<&[u8]> = match (&response.body, &response.chunks) {
        (Some(body), None) => vec![body.as_bytes()],
        (None, Some(chunks)) => chunks.iter().map(|c| c.as_bytes()).collect(),
        _ => return Err("response: give exactly one of 'body' or 'chunks'".into()),
    };
    let Some(route) = decision.route.as_deref() else {
        return Err(
            "a case with a response needs an HTTP 'request' (its route's checks apply)".into(),
        );
    };
    let (sent, blocked, findings) = match snapshot.responses.for_route(route) {
        Some(checks) => {
            let mut scan = checks.scanner(response.content_type.as_deref());
            let (mut sent, blocked) = scan.run(chunks);
            let check = blocked.map(|b| {
                sent.extend(b.body);
                b.finding.check
            });
            let findings: Vec<ExpectedFinding> = scan
                .findings()
                .iter()
                .map(|f| ExpectedFinding {
                    check: f.check.clone(),
                    kind: f.kind.as_str().to_string(),
                    count: f.count,
                })
                .collect();
            (sent, check, findings)
        }
        None => (chunks.concat(), None, Vec::new()),
    };
    if blocked != expect.blocked {
        return Err(format!(
            "expected the response {}, got it {}",
            blocked_name(&expect.blocked),
            blocked_name(&blocked)
        ));
    }
    if let Some(want) = &expect.findings {
        if *want != findings {
            return Err(format!(
                "expected response findings [{}], got [{}]",
                list(want),
                list(&findings)
            ));
        }
    }
    if let Some(body) = &expect.body {
        let got = String::from_utf8_lossy(&sent);
        if *body != got {
            return Err(format!("expected the response body {body:?}, got {got:?}"));
        }
    }
    Ok(())
}

fn blocked_name(check: &Option<String>) -> String {
    match check {
        Some(check) => format!("blocked by '{check}'"),
        None => "passed on".into(),
    }
}

fn list(findings: &[ExpectedFinding]) -> String {
    findings
        .iter()
        .map(|f| format!("{} {} x{}", f.check, f.kind, f.count))
        .collect::<Vec<_>>()
        .join(", ")
}
