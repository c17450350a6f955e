//! `quotas.yaml` and `quotas/*.yaml`: envoyproxy/ratelimit's configuration
//! format, unchanged (an operator migrates by copying the file), plus our
//! extensions: `burst`, `window` (any length, instead of `unit`), and
//! `check:` rules that derive descriptors (and a cost) from the identity and
//! route for quotas enforced inside ext_authz `Check`.
//!
//! Loading reports every problem at once, each with file and line; lookup
//! (`limit_for`) follows envoyproxy/ratelimit's matching rules.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::gcra::Rate;

/// The top-level quota file and the per-domain directory.
pub const QUOTAS_FILE: &str = "quotas.yaml";
/// Per-domain files: `quotas/<anything>.yaml`.
pub const QUOTAS_DIR: &str = "quotas";

/// One problem in a quota file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaError {
    /// The file, relative to the policy directory.
    pub file: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

// --- the file format ------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileYaml {
    domain: Option<String>,
    #[serde(default)]
    descriptors: Vec<DescriptorYaml>,
    /// Our extension: descriptors built inside `Check`.
    #[serde(default)]
    check: Vec<CheckRuleYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorYaml {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimitYaml>,
    #[serde(default)]
    descriptors: Vec<DescriptorYaml>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
    #[serde(default)]
    value_to_metric: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitYaml {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<ReplacesYaml>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    requests_per_unit: Option<u64>,
    #[serde(default)]
    unlimited: bool,
    /// Extension: at most this many units at once (default requests_per_unit).
    #[serde(default)]
    burst: Option<u64>,
    /// Extension: a window of any length (`30s`, `5m`, `2h`, `1d`) instead
    /// of `unit`.
    #[serde(default)]
    window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplacesYaml {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRuleYaml {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    routes: Option<Vec<String>>,
    descriptor: Vec<EntryTemplateYaml>,
    #[serde(default)]
    cost: Option<CostYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryTemplateYaml {
    key: String,
    value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CostYaml {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    body_field: Option<String>,
    #[serde(default = "one")]
    default: u64,
}

fn one() -> u64 {
    1
}

// --- the loaded form ------------------------------------------------------

/// One limit as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaLimit {
    /// The limit's `name`, if any (used by `replaces`).
    pub name: Option<String>,
    /// Requests (units) per window.
    pub requests: u64,
    /// The window in microseconds.
    pub window_us: u64,
    /// Units allowed at once.
    pub burst: u64,
    /// `unlimited: true`: never limits, never counts.
    pub unlimited: bool,
    /// Names of limits this one replaces.
    pub replaces: Vec<String>,
    /// Shadow mode: reported, never limits.
    pub shadow: bool,
}

impl QuotaLimit {
    /// GCRA parameters.
    pub fn rate(&self) -> Rate {
        Rate::new(self.requests, self.window_us, self.burst)
    }

    /// The window in whole seconds (at least 1), for headers.
    pub fn window_seconds(&self) -> u64 {
        (self.window_us / 1_000_000).max(1)
    }
}

#[derive(Debug, Default, Clone)]
struct Node {
    limit: Option<QuotaLimit>,
    children: HashMap<(String, Option<String>), Node>,
    /// Children whose value ends in `*`: (key, value prefix), in file order.
    wildcards: Vec<(String, String)>,
}

/// Where a request's cost comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostSource {
    /// A request header (lower case) holding a non-negative integer.
    pub header: Option<String>,
    /// A JSON body field (dotted path) holding a non-negative integer.
    pub body_field: Option<String>,
    /// The cost when neither is present.
    pub default: u64,
}

/// A piece of a descriptor value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// `{name}`: a built-in (`principal`, `principal_type`, `org`, `route`,
    /// `method`, `source_ip`) or a route capture.
    Var(String),
}

/// A rule deriving one descriptor inside `Check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRule {
    /// For logs.
    pub name: String,
    /// The domain the descriptor is looked up in.
    pub domain: String,
    /// Only these routes (all when `None`).
    pub routes: Option<Vec<String>>,
    /// Entry keys and value templates.
    pub entries: Vec<(String, Vec<Part>)>,
    /// The cost charged.
    pub cost: CostSource,
}

/// Every quota domain in a policy directory.
#[derive(Debug, Clone, Default)]
pub struct QuotaConfig {
    domains: BTreeMap<String, Node>,
    /// The `check:` rules of every domain, in file order.
    pub check_rules: Vec<CheckRule>,
}

/// Built-in template variables.
pub const BUILTIN_VARS: &[&str] = &[
    "principal",
    "principal_type",
    "org",
    "route",
    "method",
    "source_ip",
];

impl QuotaConfig {
    /// True when no domain is configured.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The configured domains.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// Parses every quota file (`(relative path, text)`), reporting every
    /// problem at once.
    pub fn parse<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<QuotaConfig, Vec<QuotaError>> {
        let mut config = QuotaConfig::default();
        let mut errors = Vec::new();
        let mut domain_files: HashMap<String, String> = HashMap::new();
        for (file, text) in files {
            let err = |line: Option<usize>, message: String| QuotaError {
                file: file.to_string(),
                line,
                message,
            };
            let parsed: FileYaml = match serde_yaml_ng::from_str(text) {
                Ok(p) => p,
                Err(e) => {
                    let (line, message) = crate::yaml::located(&e);
                    errors.push(err(line, message));
                    continue;
                }
            };
            let domain = parsed.domain.clone().unwrap_or_default();
            if domain.is_empty() {
                errors.push(err(Some(1), "config file cannot have empty domain".into()));
                continue;
            }
            if let Some(first) = domain_files.get(&domain) {
                errors.push(err(
                    line_of(text, "domain:", 0),
                    format!("duplicate domain '{domain}' (first defined in {first})"),
                ));
                continue;
            }
            domain_files.insert(domain.clone(), file.to_string());
            let key_lines = key_lines(text);
            let mut counter = 0usize;
            let mut root = Node::default();
            let mut names = Vec::new();
            build(
                &parsed.descriptors,
                &mut root,
                &domain,
                &key_lines,
                &mut counter,
                &mut names,
                &mut |line, message| errors.push(err(line, message)),
            );
            for (i, rule) in parsed.check.iter().enumerate() {
                let line = line_of(text, "descriptor:", i);
                match check_rule(rule, &domain, i) {
                    Ok(r) => config.check_rules.push(r),
                    Err(message) => errors.push(err(line, message)),
                }
            }
            config.domains.insert(domain, root);
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// The limit for one descriptor, by envoyproxy/ratelimit's rules: each
    /// entry matches `key`+`value` exactly, else a `value: prefix*` wildcard,
    /// else a `key` with no value; the limit is the one on the node the last
    /// entry reaches.
    pub fn limit_for(&self, domain: &str, entries: &[(String, String)]) -> Option<&QuotaLimit> {
        let mut node = self.domains.get(domain)?;
        let mut found = None;
        for (i, (key, value)) in entries.iter().enumerate() {
            let exact = node.children.get(&(key.clone(), Some(value.clone())));
            let next = exact
                .or_else(|| {
                    node.wildcards
                        .iter()
                        .find(|(k, prefix)| k == key && value.starts_with(prefix.as_str()))
                        .and_then(|(k, prefix)| {
                            node.children.get(&(k.clone(), Some(format!("{prefix}*"))))
                        })
                })
                .or_else(|| node.children.get(&(key.clone(), None)));
            let Some(next) = next else { break };
            if i == entries.len() - 1 {
                found = next.limit.as_ref();
            }
            if next.children.is_empty() {
                break;
            }
            node = next;
        }
        found
    }
}

/// The counter key for a descriptor: domain and entries, with `\`, `|` and
/// `=` escaped so that distinct descriptors never share a key.
pub fn counter_key(domain: &str, entries: &[(String, String)]) -> String {
    // One pass, one allocation: this runs for every limit of every request.
    fn push_escaped(key: &mut String, s: &str) {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            if matches!(b, b'\\' | b'|' | b'=') {
                key.push_str(&s[start..i]);
                key.push('\\');
                start = i;
            }
        }
        key.push_str(&s[start..]);
    }
    let len = domain.len()
        + entries
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    let mut key = String::with_capacity(len + 8);
    push_escaped(&mut key, domain);
    for (k, v) in entries {
        key.push('|');
        push_escaped(&mut key, k);
        key.push('=');
        push_escaped(&mut key, v);
    }
    key
}

fn build(
    descriptors: &[DescriptorYaml],
    node: &mut Node,
    path: &str,
    key_lines: &[usize],
    counter: &mut usize,
    names: &mut Vec<String>,
    report: &mut dyn FnMut(Option<usize>, String),
) {
    for d in descriptors {
        let line = key_lines.get(*counter).copied();
        *counter += 1;
        if d.key.is_empty() {
            report(line, format!("{path}: descriptor has empty key"));
        }
        let value = d.value.clone().filter(|v| !v.is_empty());
        let composite = match &value {
            Some(v) => format!("{path}.{}_{v}", d.key),
            None => format!("{path}.{}", d.key),
        };
        let slot = (d.key.clone(), value.clone());
        if node.children.contains_key(&slot) {
            report(
                line,
                format!("duplicate descriptor composite key '{composite}'"),
            );
            continue;
        }
        let _ = (d.detailed_metric, d.value_to_metric);
        let mut child = Node::default();
        if let Some(rl) = &d.rate_limit {
            match limit(rl, d.shadow_mode, &composite) {
                Ok(l) => {
                    if let Some(n) = &l.name {
                        names.push(n.clone());
                    }
                    child.limit = Some(l);
                }
                Err(message) => report(line, message),
            }
        }
        build(
            &d.descriptors,
            &mut child,
            &composite,
            key_lines,
            counter,
            names,
            report,
        );
        if let Some(v) = &value {
            if let Some(prefix) = v.strip_suffix('*') {
                node.wildcards.push((d.key.clone(), prefix.to_string()));
            }
        }
        node.children.insert(slot, child);
    }
}

fn limit(rl: &RateLimitYaml, shadow: bool, at: &str) -> Result<QuotaLimit, String> {
    for r in &rl.replaces {
        if r.name.is_empty() {
            return Err(format!("{at}: should not have an empty replaces entry"));
        }
        if Some(&r.name) == rl.name.as_ref() {
            return Err(format!(
                "{at}: replaces should not contain name of same descriptor"
            ));
        }
    }
    let replaces = rl.replaces.iter().map(|r| r.name.clone()).collect();
    if rl.unlimited {
        if rl.unit.is_some() || rl.window.is_some() || rl.requests_per_unit.is_some() {
            return Err(format!(
                "{at}: should not specify rate limit unit or requests_per_unit when unlimited"
            ));
        }
        return Ok(QuotaLimit {
            name: rl.name.clone(),
            requests: 0,
            window_us: 1_000_000,
            burst: 0,
            unlimited: true,
            replaces,
            shadow,
        });
    }
    let window_us = match (&rl.unit, &rl.window) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{at}: give either unit or window (our extension), not both"
            ))
        }
        (Some(unit), None) => unit_us(unit).ok_or_else(|| {
            format!("{at}: invalid rate limit unit '{unit}': use second, minute, hour, day, week, month or year")
        })?,
        (None, Some(w)) => parse_window(w).ok_or_else(|| {
            format!("{at}: window '{w}' is not a duration like 30s, 5m, 2h or 1d")
        })?,
        (None, None) => {
            return Err(format!(
                "{at}: invalid rate limit unit: rate_limit needs a unit (or a window)"
            ))
        }
    };
    let requests = rl
        .requests_per_unit
        .ok_or_else(|| format!("{at}: rate_limit needs requests_per_unit"))?;
    let burst = rl.burst.unwrap_or(requests);
    if rl.burst == Some(0) {
        return Err(format!(
            "{at}: burst must be at least 1 (omit it for burst = requests_per_unit)"
        ));
    }
    Ok(QuotaLimit {
        name: rl.name.clone(),
        requests,
        window_us,
        burst,
        unlimited: false,
        replaces,
        shadow,
    })
}

fn unit_us(unit: &str) -> Option<u64> {
    let s: u64 = match unit.to_ascii_lowercase().as_str() {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        "week" => 7 * 86_400,
        "month" => 30 * 86_400,
        "year" => 365 * 86_400,
        _ => return None,
    };
    Some(s * 1_000_000)
}

fn parse_window(w: &str) -> Option<u64> {
    let w = w.trim();
    let split = w.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = w.split_at(split);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let us = match unit {
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return None,
    };
    n.checked_mul(us)
}

fn check_rule(rule: &CheckRuleYaml, domain: &str, index: usize) -> Result<CheckRule, String> {
    let name = rule
        .name
        .clone()
        .unwrap_or_else(|| format!("check[{index}]"));
    if rule.descriptor.is_empty() {
        return Err(format!(
            "check rule '{name}': descriptor needs at least one entry"
        ));
    }
    let mut entries = Vec::new();
    for e in &rule.descriptor {
        if e.key.is_empty() {
            return Err(format!("check rule '{name}': an entry has an empty key"));
        }
        entries.push((
            e.key.clone(),
            template(&e.value).map_err(|m| format!("check rule '{name}': {m}"))?,
        ));
    }
    let cost = match &rule.cost {
        None => CostSource {
            header: None,
            body_field: None,
            default: 1,
        },
        Some(c) => CostSource {
            header: c.header.as_ref().map(|h| h.to_ascii_lowercase()),
            body_field: c.body_field.clone(),
            default: c.default,
        },
    };
    Ok(CheckRule {
        name,
        domain: domain.to_string(),
        routes: rule.routes.clone(),
        entries,
        cost,
    })
}

/// Parses `text {var} text`.
fn template(value: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("value '{value}' has an unclosed '{{'"))?;
        let var = &after[..close];
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "value '{value}': '{{{var}}}' is not a variable name (built-ins: {}; or a route capture)",
                BUILTIN_VARS.join(", ")
            ));
        }
        parts.push(Part::Var(var.to_string()));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("value '{value}' has an unbalanced '}}'"));
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

/// Lines (1-based) of block-style `key:` fields, in document order: the
/// descriptors in pre-order.
fn key_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            let t = t.strip_prefix("- ").map(str::trim_start).unwrap_or(t);
            t.starts_with("key:")
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// The line of the `n`-th occurrence of `needle`.
fn line_of(text: &str, needle: &str, n: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().trim_start_matches("- ").starts_with(needle))
        .nth(n)
        .map(|(i, _)| i + 1)
}

/// A quota file's text with every `requests_per_unit` and `burst` value
/// multiplied by `factor`: for benchmarks that must exercise the quota
/// stage on every request without ever running out.
pub fn scaled(text: &str, factor: u64) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let trimmed = line.trim_start();
        let value = ["requests_per_unit:", "burst:"]
            .iter()
            .find_map(|key| trimmed.strip_prefix(key))
            .and_then(|rest| rest.trim().parse::<u64>().ok());
        match value {
            Some(n) => {
                let indent = &line[..line.len() - trimmed.len()];
                let key = trimmed.split(':').next().unwrap_or_default();
                out.push_str(&format!("{indent}{key}: {}", n.saturating_mul(factor)));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// True for `quotas.yaml` and `quotas/*.yaml` (relative paths).
pub fn is_quota_file(relative: &str) -> bool {
    relative == QUOTAS_FILE
        || relative
            .strip_prefix(QUOTAS_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|r| r.ends_with(".yaml") && !r.contains('/'))
}

/// Adds `quotas/*.yaml` under `dir` to `files`, keyed `quotas/NAME.yaml`.
pub fn read_domain_files(
    dir: &std::path::Path,
    files: &mut BTreeMap<String, String>,
) -> Result<(), (String, std::io::Error)> {
    let sub = dir.join(QUOTAS_DIR);
    if !sub.is_dir() {
        return Ok(());
    }
    let entries = std::fs::read_dir(&sub).map_err(|e| (QUOTAS_DIR.to_string(), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || !entry.path().is_file() {
            continue;
        }
        let key = format!("{QUOTAS_DIR}/{name}");
        let text = std::fs::read_to_string(entry.path()).map_err(|e| (key.clone(), e))?;
        files.insert(key, text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    /// Counter keys are Redis keys and in-process hashes: their form must
    /// not change. Escaping matches the original three replacements.
    #[test]
    fn counter_keys_escape_separators_unambiguously() {
        let reference = |domain: &str, entries: &[(String, String)]| {
            let esc = |s: &str| {
                s.replace('\\', "\\\\")
                    .replace('|', "\\|")
                    .replace('=', "\\=")
            };
            let mut key = esc(domain);
            for (k, v) in entries {
                key.push('|');
                key.push_str(&esc(k));
                key.push('=');
                key.push_str(&esc(v));
            }
            key
        };
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("ml_api", &[("principal", "User:alice")]),
            ("d|x", &[("k=1", "v|2"), ("a\\b", "=|\\")]),
            ("", &[("", "")]),
            ("dömain", &[("ключ", "値=|")]),
        ];
        for (domain, entries) in cases {
            let entries: Vec<(String, String)> = entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(counter_key(domain, &entries), reference(domain, &entries));
        }
        assert_eq!(counter_key("d", &[("a|b".into(), "c".into())]), "d|a\\|b=c");
        assert_ne!(
            counter_key("d", &[("a".into(), "b|c=d".into())]),
            counter_key("d", &[("a".into(), "b".into()), ("c".into(), "d".into())])
        );
    }
    use super::*;

    #[test]
    fn scaled_multiplies_rates_and_bursts_only() {
        let text = "descriptors:\n  - key: a\n    rate_limit:\n      unit: minute\n      requests_per_unit: 600\n      burst: 100\n";
        let out = super::scaled(text, 1000);
        assert!(out.contains("      requests_per_unit: 600000\n"), "{out}");
        assert!(out.contains("      burst: 100000\n"), "{out}");
        assert!(out.contains("      unit: minute\n"), "{out}");
    }

    fn load(text: &str) -> QuotaConfig {
        QuotaConfig::parse([("quotas.yaml", text)]).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn errors(text: &str) -> Vec<String> {
        QuotaConfig::parse([("quotas.yaml", text)])
            .expect_err("should fail")
            .into_iter()
            .map(|e| format!("{}:{}", e.line.unwrap_or(0), e.message))
            .collect()
    }

    fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // envoyproxy/ratelimit README, "Example 1".
    const EXAMPLE_1: &str = "\
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500

  - key: database
    value: default
    rate_limit:
      unit: second
      requests_per_unit: 500
";

    // envoyproxy/ratelimit README, "Example 2".
    const EXAMPLE_2: &str = "\
domain: messaging
descriptors:
  # Only allow 5 marketing messages a day
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5

  # Only allow 100 messages a day to any unique phone number
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
";

    // envoyproxy/ratelimit README, "Example 6" (wildcards).
    const EXAMPLE_WILDCARD: &str = "\
domain: example6
descriptors:
  - key: source_cluster
    value: proxy
    descriptors:
      - key: destination_cluster
        value: bb*
        rate_limit:
          unit: minute
          requests_per_unit: 10
";

    #[test]
    fn envoyproxy_examples_match_as_documented() {
        let c = load(EXAMPLE_1);
        assert_eq!(
            c.limit_for("mongo_cps", &e(&[("database", "users")]))
                .unwrap()
                .requests,
            500
        );
        assert!(c
            .limit_for("mongo_cps", &e(&[("database", "other")]))
            .is_none());

        let c = load(EXAMPLE_2);
        let marketing = c
            .limit_for(
                "messaging",
                &e(&[("message_type", "marketing"), ("to_number", "2061234567")]),
            )
            .unwrap();
        assert_eq!(
            (marketing.requests, marketing.window_us),
            (5, 86_400_000_000)
        );
        assert_eq!(
            c.limit_for("messaging", &e(&[("to_number", "2061234567")]))
                .unwrap()
                .requests,
            100
        );
        // A descriptor deeper than the configuration has no limit.
        assert!(c
            .limit_for("messaging", &e(&[("message_type", "marketing")]))
            .is_none());

        let c = load(EXAMPLE_WILDCARD);
        let hit = e(&[("source_cluster", "proxy"), ("destination_cluster", "bb_1")]);
        assert_eq!(c.limit_for("example6", &hit).unwrap().requests, 10);
        let miss = e(&[("source_cluster", "proxy"), ("destination_cluster", "cc_1")]);
        assert!(c.limit_for("example6", &miss).is_none());
    }

    #[test]
    fn load_time_rules_are_envoyproxys() {
        assert_eq!(
            errors("descriptors: []\n"),
            ["1:config file cannot have empty domain"]
        );
        let dup = "domain: d\ndescriptors:\n  - key: a\n    value: b\n  - key: a\n    value: b\n";
        assert_eq!(
            errors(dup),
            ["5:duplicate descriptor composite key 'd.a_b'"]
        );
        let bad_unit = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n";
        assert!(errors(bad_unit)[0].starts_with("3:d.a: invalid rate limit unit 'fortnight'"));
        let unlimited = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, unit: second, requests_per_unit: 1}\n";
        assert!(errors(unlimited)[0].contains("when unlimited"));
        let replaces = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {name: x, replaces: [{name: x}], unit: second, requests_per_unit: 1}\n";
        assert!(errors(replaces)[0].contains("replaces should not contain name of same descriptor"));
        let unknown = "domain: d\ndescriptors:\n  - key: a\n    colour: blue\n";
        let err = errors(unknown);
        assert!(
            err[0].starts_with("4:") && err[0].contains("unknown field `colour`"),
            "{err:?}"
        );
    }

    #[test]
    fn extensions_window_burst_and_check_rules() {
        let c = load(
            "domain: d\ndescriptors:\n  - key: user\n    rate_limit: {window: 30s, requests_per_unit: 10, burst: 3}\ncheck:\n  - descriptor: [{key: user, value: \"{principal}\"}]\n    cost: {header: X-Cost}\n",
        );
        let l = c.limit_for("d", &e(&[("user", "alice")])).unwrap();
        assert_eq!((l.window_us, l.burst), (30_000_000, 3));
        assert_eq!(
            c.check_rules[0].entries[0].1,
            vec![Part::Var("principal".into())]
        );
        assert_eq!(c.check_rules[0].cost.header.as_deref(), Some("x-cost"));
    }

    #[test]
    fn counter_keys_do_not_collide() {
        assert_ne!(
            counter_key("d", &e(&[("a", "b|c=d")])),
            counter_key("d", &e(&[("a", "b"), ("c", "d")]))
        );
    }
}
