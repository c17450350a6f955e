//! `quotas.yaml` and `quotas/*.yaml`: envoyproxy/ratelimit's configuration
//! format, unchanged (an operator migrates by copying the file), plus our
//! extensions: `burst`, `window` (any length, instead of `unit`), and
//! `check:` rules that derive descriptors (and a cost) from the identity and
//! route for quotas enforced inside ext_authz `Check`.
//!
//! Loading reports every problem at once, each with file and line; lookup
//! (`limit_for`) follows envoyproxy/ratelimit's matching rules.
//!
//! This file holds the loaded form and its lookup; `format` is the file as
//! written, `descriptors` and `check_rules` check and build its two parts,
//! `files` reads and locates quota files as text.

mod check_rules;
mod descriptors;
mod files;
#[cfg(test)]
mod fixtures;
mod format;

use std::collections::{BTreeMap, HashMap};

use self::check_rules::check_rule;
use self::descriptors::build;
pub use self::files::{is_quota_file, read_domain_files, scaled, UnreadableQuotaFile};
use self::files::{key_lines, line_of};
use self::format::FileYaml;
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
                    Err(problem) => errors.push(err(line, problem.to_string())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::config::fixtures::*;

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
    fn counter_keys_do_not_collide() {
        assert_ne!(
            counter_key("d", &e(&[("a", "b|c=d")])),
            counter_key("d", &e(&[("a", "b"), ("c", "d")]))
        );
    }
}
