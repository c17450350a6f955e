//! `responses.yaml` in the policy directory: named checks, and the routes
//! each applies to. Parsed, validated completely (every problem at once,
//! with its line) and compiled once per snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use serde::Deserialize;

use super::detect::{Check, Detector, Rules};
use super::{Action, ResponseChecks};
use crate::routes::{Method, RouteTable};
use crate::validate::pii;
use crate::validate::rules::PiiKind;

/// The file, relative to the policy directory.
pub const RESPONSES_FILE: &str = "responses.yaml";

/// The longest match a check may have, in bytes: a scanner holds this
/// much of a stream back.
pub const MAX_MATCH_LEN: usize = 4096;

/// One problem in responses.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseError {
    /// 1-based, where known.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every route's response checks.
#[derive(Debug, Clone, Default)]
pub struct ResponsePolicy {
    routes: HashMap<String, ResponseChecks>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    checks: Vec<RawCheck>,
    #[serde(default)]
    routes: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    action: Action,
    #[serde(default)]
    canaries: Option<Vec<String>>,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    max_match_len: Option<usize>,
    #[serde(default)]
    pii: Option<Vec<PiiKind>>,
    #[serde(default)]
    max_bytes: Option<u64>,
}

/// A check as compiled: a text check or a size limit.
enum Compiled {
    Text(Arc<Check>),
    Size(String, Action, u64),
}

impl ResponsePolicy {
    /// Parses and validates responses.yaml text against the route table.
    pub fn parse(text: &str, routes: &RouteTable) -> Result<ResponsePolicy, Vec<ResponseError>> {
        let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, message) = crate::yaml::located_in(&e, text);
            vec![ResponseError { line, message }]
        })?;
        let mut errors = Vec::new();
        let mut compiled: HashMap<&str, Compiled> = HashMap::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for check in &raw.checks {
            let nth = seen.entry(&check.name).or_default();
            let line = line_of(text, &format!("name: {}", check.name), *nth);
            *nth += 1;
            let mut fail = |message: String| errors.push(ResponseError { line, message });
            if !valid_name(&check.name) {
                fail(format!(
                    "check name '{}' must be 1 to 64 of a-z, A-Z, 0-9, '_', '-', '.'",
                    check.name
                ));
                continue;
            }
            if *nth > 1 {
                fail(format!("duplicate check name '{}'", check.name));
                continue;
            }
            match compile(check) {
                Ok(c) => {
                    compiled.insert(&check.name, c);
                }
                Err(message) => fail(format!("check '{}': {message}", check.name)),
            }
        }
        let mut used = HashSet::new();
        let mut policy = ResponsePolicy::default();
        for (route_name, names) in &raw.routes {
            let line = line_of(text, &format!("{route_name}:"), 0);
            let mut fail = |message: String| errors.push(ResponseError { line, message });
            let Some(route) = routes.routes().iter().find(|r| &r.name == route_name) else {
                fail(format!("routes: no route '{route_name}' in routes.yaml"));
                continue;
            };
            if route.method == Method::Head {
                fail(format!(
                    "routes: route '{route_name}' answers HEAD, whose responses have no body to check"
                ));
                continue;
            }
            let mut rules = Rules::default();
            for name in names {
                used.insert(name.as_str());
                match compiled.get(name.as_str()) {
                    None if !raw.checks.iter().any(|c| &c.name == name) => fail(format!(
                        "routes: route '{route_name}' names check '{name}', which is not in checks"
                    )),
                    None => {}
                    Some(Compiled::Text(check)) => rules.checks.push(check.clone()),
                    Some(Compiled::Size(n, action, bytes)) => {
                        if rules.max_bytes.is_some() {
                            fail(format!(
                                "routes: route '{route_name}' has two max_bytes checks; keep one"
                            ));
                        }
                        rules.max_bytes = Some((n.clone(), *action, *bytes));
                    }
                }
            }
            // The longest match plus one character of look-ahead.
            rules.hold = rules
                .checks
                .iter()
                .map(|c| c.max_len)
                .max()
                .map_or(0, |m| m + super::detect::LOOKAHEAD);
            policy.routes.insert(
                route_name.clone(),
                ResponseChecks {
                    rules: Arc::new(rules),
                },
            );
        }
        for check in raw
            .checks
            .iter()
            .filter(|c| !used.contains(c.name.as_str()))
        {
            errors.push(ResponseError {
                line: line_of(text, &format!("name: {}", check.name), 0),
                message: format!(
                    "check '{}' applies to no route; list it under routes or remove it",
                    check.name
                ),
            });
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            errors.sort_by_key(|e| e.line);
            Err(errors)
        }
    }

    /// The checks of a route (`None`: its responses are not checked).
    pub fn for_route(&self, route: &str) -> Option<&ResponseChecks> {
        self.routes.get(route)
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn compile(raw: &RawCheck) -> Result<Compiled, String> {
    let given = [
        raw.canaries.is_some(),
        raw.pattern.is_some(),
        raw.pii.is_some(),
        raw.max_bytes.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err("give exactly one of canaries, pattern, pii, max_bytes".into());
    }
    if raw.max_match_len.is_some() && raw.pattern.is_none() {
        return Err("max_match_len applies to a pattern only".into());
    }
    let text = |detector: Detector, max_len: usize| {
        Ok(Compiled::Text(Arc::new(Check {
            name: raw.name.clone(),
            action: raw.action,
            detector,
            max_len,
            marker: format!("[REDACTED:{}]", raw.name),
        })))
    };
    if let Some(bytes) = raw.max_bytes {
        if raw.action == Action::Redact {
            return Err("a size limit cannot redact; use block or tag".into());
        }
        if bytes == 0 {
            return Err("max_bytes must be at least 1".into());
        }
        return Ok(Compiled::Size(raw.name.clone(), raw.action, bytes));
    }
    if let Some(canaries) = &raw.canaries {
        if canaries.is_empty() {
            return Err("canaries is empty; list at least one string".into());
        }
        if let Some(i) = canaries.iter().position(String::is_empty) {
            return Err(format!(
                "canary {} is empty; a canary must be a non-empty string",
                i + 1
            ));
        }
        let longest = canaries.iter().map(String::len).max().unwrap_or(0);
        if longest > MAX_MATCH_LEN {
            return Err(format!(
                "a canary is {longest} bytes; the most is {MAX_MATCH_LEN}"
            ));
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(canaries)
            .map_err(|e| format!("canaries: {e}"))?;
        return text(Detector::Canaries(ac), longest);
    }
    if let Some(pattern) = &raw.pattern {
        let hir = regex_syntax::parse(pattern)
            .map_err(|e| format!("pattern does not compile: {}", one_line(&e.to_string())))?;
        let regex = regex::Regex::new(pattern)
            .map_err(|e| format!("pattern does not compile: {}", one_line(&e.to_string())))?;
        if hir.properties().minimum_len() == Some(0) {
            return Err(
                "pattern matches the empty string; it must match at least one character".into(),
            );
        }
        let max_len = match (hir.properties().maximum_len(), raw.max_match_len) {
            (_, Some(0)) => return Err("max_match_len must be at least 1".into()),
            (_, Some(n)) => n,
            (Some(n), None) => n,
            (None, None) => {
                return Err("pattern has no longest match (+, * or {n,}); bound it ({n,m}) or set max_match_len, the longest match in bytes".into())
            }
        };
        if max_len > MAX_MATCH_LEN {
            return Err(format!(
                "pattern matches up to {max_len} bytes; the most is {MAX_MATCH_LEN} (bound it, or set a smaller max_match_len)"
            ));
        }
        return text(Detector::Pattern(regex), max_len);
    }
    let kinds = raw.pii.clone().unwrap_or_default();
    if kinds.is_empty() {
        return Err("pii is empty; list kinds (email, phone, card, ssn, iban)".into());
    }
    let max_len = kinds.iter().map(|k| pii::max_len(*k)).max().unwrap_or(0);
    text(Detector::Pii(kinds), max_len)
}

/// regex's messages span lines (the pattern, a caret, the error).
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `nth` (0-based) line that starts with `needle`, after
/// indentation and an optional `- `.
fn line_of(text: &str, needle: &str, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            l.strip_prefix("- ")
                .unwrap_or(l)
                .trim_start()
                .starts_with(needle)
        })
        .nth(nth)
        .map(|(i, _)| i + 1)
}
