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
//! `files` reads and locates quota files as text, `tokens` checks a rule's
//! token reservation settings.

mod check_rules;
mod descriptors;
mod files;
#[cfg(test)]
mod fixtures;
mod format;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A map built from the quota files and looked up with a request's
/// strings: foldhash, seeded per map (so a request cannot aim its values
/// at one bucket), is several times cheaper than SipHash on these short
/// keys, and every descriptor of every request takes a few lookups.
type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

use self::check_rules::check_rule;
use self::descriptors::build;
pub use self::files::{is_quota_file, scaled};
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
    /// envoyproxy/ratelimit's `quota_mode`: over this limit refuses only
    /// when every quota-mode limit of the request is over.
    pub quota_mode: bool,
    /// Our `post_hoc`: a charge is always recorded, even past the limit.
    pub post_hoc: bool,
    /// envoyproxy/ratelimit's `detailed_metric`: the statistics key is the
    /// request's values (see [`QuotaConfig::stats_key`]).
    pub detailed_metric: bool,
    /// envoyproxy/ratelimit's descriptor `metadata`: returned in the RLS
    /// response's dynamic metadata when this limit passes.
    pub metadata: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The configured path, `domain.key_value.key` (envoyproxy/ratelimit's
    /// statistics key without `detailed_metric` / `value_to_metric`).
    pub path: Arc<str>,
    /// The statistics key depends on the request's values
    /// (`detailed_metric` here, or `value_to_metric` on the path).
    pub stats_from_request: bool,
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

    /// A limit of `requests` per `window_us` and nothing else: the RLS
    /// descriptor's `limit` override (Envoy's `limit` rate-limit action),
    /// which envoyproxy/ratelimit applies without shadow or quota mode.
    pub fn per_window(requests: u64, window_us: u64) -> QuotaLimit {
        QuotaLimit {
            name: None,
            requests,
            window_us,
            burst: requests,
            unlimited: false,
            replaces: Vec::new(),
            shadow: false,
            quota_mode: false,
            post_hoc: false,
            detailed_metric: false,
            metadata: None,
            path: Arc::from(""),
            stats_from_request: false,
        }
    }
}

/// A child whose value holds `*`: each `*` matches any run of characters
/// (envoyproxy/ratelimit's `wildcardMatch`).
#[derive(Debug, Clone)]
struct Wildcard {
    key: String,
    /// The value as written, e.g. `/v1/*/predict`.
    pattern: String,
    /// `pattern` split at each `*`.
    parts: Vec<String>,
}

impl Wildcard {
    fn matches(&self, value: &str) -> bool {
        let parts = &self.parts;
        let (first, last) = (&parts[0], &parts[parts.len() - 1]);
        let fixed: usize = parts.iter().map(String::len).sum();
        if value.len() < fixed
            || !value.starts_with(first.as_str())
            || !value.ends_with(last.as_str())
        {
            return false;
        }
        let mut rest = &value[first.len()..value.len() - last.len()];
        for part in &parts[1..parts.len() - 1] {
            match rest.find(part.as_str()) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

#[derive(Debug, Default, Clone)]
struct Node {
    /// Shared with every charge that reaches it (an `Arc`, so that a
    /// request's limits are not copied field by field).
    limit: Option<Arc<QuotaLimit>>,
    /// Children by entry key; looked up with the request's `&str`s, so
    /// matching a descriptor copies no string.
    children: Map<Children>,
    /// Children whose value holds `*`, in file order.
    wildcards: Vec<Wildcard>,
    /// `value_to_metric`: the statistics key carries the request's value.
    value_to_metric: bool,
    /// `share_threshold`: every value matching this node's wildcard shares
    /// one counter.
    share_threshold: bool,
}

/// The children of one node under one entry key: by exact value (a
/// wildcard child under its pattern), and the one without a value.
#[derive(Debug, Clone, Default)]
struct Children {
    by_value: Map<Node>,
    keyless: Option<Node>,
}

impl Children {
    /// The child for `value` (`None`: the one without a value).
    fn get(&self, value: Option<&str>) -> Option<&Node> {
        match value {
            Some(v) => self.by_value.get(v),
            None => self.keyless.as_ref(),
        }
    }
}

impl Node {
    /// The child under `key` and `value` (`None`: `key` without a value).
    fn child(&self, key: &str, value: Option<&str>) -> Option<&Node> {
        self.children.get(key)?.get(value)
    }

    /// Adds a child under `key` and `value`, replacing any there (the
    /// loader reports a taken slot first, `has_child`).
    fn add_child(&mut self, key: &str, value: Option<&str>, child: Node) {
        let slot = self.children.entry(key.to_string()).or_default();
        match value {
            Some(v) => {
                slot.by_value.insert(v.to_string(), child);
            }
            None => slot.keyless = Some(child),
        }
    }

    /// True when the slot for `key` and `value` is taken.
    fn has_child(&self, key: &str, value: Option<&str>) -> bool {
        self.child(key, value).is_some()
    }
}

/// How a descriptor entry reached its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via<'a> {
    /// `key` + `value` exactly.
    Value,
    /// A wildcard value (the pattern).
    Wildcard(&'a str),
    /// A `key` without a value.
    Key,
}

/// The limit a descriptor matched, and which of its entries share a
/// counter (`share_threshold`): `(entry index, the wildcard pattern)`.
#[derive(Debug, Clone)]
pub struct Found<'a> {
    /// The limit.
    pub limit: &'a Arc<QuotaLimit>,
    /// Entries counted under their pattern instead of their value.
    pub shared: Vec<(usize, &'a str)>,
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
    /// The domain the descriptor is looked up in (shared with every
    /// descriptor the rule derives, so deriving one allocates no copy).
    pub domain: Arc<str>,
    /// Only these routes (all when `None`).
    pub routes: Option<Vec<String>>,
    /// Entry keys (shared like `domain`) and value templates.
    pub entries: Vec<(Arc<str>, Vec<Part>)>,
    /// The cost charged.
    pub cost: CostSource,
    /// Set when the cost is a token reservation, settled from the response
    /// (ext_proc): the cost plus the prompt estimate is reserved.
    pub tokens: Option<Arc<tokens::TokenRule>>,
    /// Where it is written: the quota file and the line of its
    /// `descriptor:` (for cross-file checks).
    pub at: (String, Option<usize>),
}

/// Every quota domain in a policy directory.
#[derive(Debug, Clone, Default)]
pub struct QuotaConfig {
    domains: BTreeMap<String, Node>,
    /// Each configured domain's [`rate_limit_resource`], written once here
    /// rather than for every RLS call on it.
    resources: BTreeMap<String, String>,
    /// The `check:` rules of every domain, in file order.
    pub check_rules: Vec<CheckRule>,
}

/// The resource an RLS call on `domain` records (`Decision::resource`):
/// `RateLimitDomain::"<domain>"`, the domain quoted and escaped as Rust's
/// `Debug` writes a string.
pub fn rate_limit_resource(domain: &str) -> String {
    format!("RateLimitDomain::{domain:?}")
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
        for (file, text) in files {
            let err = |line: Option<usize>, message: String| QuotaError {
                file: file.to_string(),
                line,
                message,
            };
            let parsed: FileYaml = match serde_yaml_ng::from_str(text) {
                Ok(p) => p,
                Err(e) => {
                    let (line, message) = crate::yaml::located_in(&e, text);
                    errors.push(err(line, message));
                    continue;
                }
            };
            let domain = parsed.domain.clone().unwrap_or_default();
            if domain.is_empty() {
                errors.push(err(Some(1), "config file cannot have empty domain".into()));
                continue;
            }
            // One domain in several files merges (envoyproxy/ratelimit's
            // MERGE_DOMAIN_CONFIG); a composite key defined twice is still
            // an error, reported in the file that repeats it.
            let key_lines = key_lines(text);
            let mut counter = 0usize;
            config
                .resources
                .entry(domain.clone())
                .or_insert_with(|| rate_limit_resource(&domain));
            let root = config.domains.entry(domain.clone()).or_default();
            let mut names = Vec::new();
            build(
                &parsed.descriptors,
                root,
                &domain,
                &key_lines,
                &mut counter,
                &mut names,
                false,
                &mut |line, message| errors.push(err(line, message)),
            );
            for (i, rule) in parsed.check.iter().enumerate() {
                let line = line_of(text, "descriptor:", i);
                match check_rule(rule, &domain, i) {
                    Ok(r) => config.check_rules.push(CheckRule {
                        at: (file.to_string(), line),
                        ..r
                    }),
                    Err(problem) => errors.push(err(line, problem.to_string())),
                }
            }
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// [`rate_limit_resource`] of `domain`: kept for a configured domain,
    /// written for any other.
    pub fn resource_of(&self, domain: &str) -> String {
        match self.resources.get(domain) {
            Some(text) => text.clone(),
            None => rate_limit_resource(domain),
        }
    }

    /// True when `domain` is configured (a descriptor's `limit` override
    /// applies only in a configured domain, as in envoyproxy/ratelimit).
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The limit for one descriptor, by envoyproxy/ratelimit's rules: each
    /// entry matches `key`+`value` exactly, else a wildcard value (`*` at
    /// any position, any number of them, first in file order), else a `key`
    /// with no value; the limit is the one on the node the last entry
    /// reaches.
    pub fn limit_for(&self, domain: &str, entries: &[(String, String)]) -> Option<&QuotaLimit> {
        self.find(domain, entries).map(|f| &**f.limit)
    }

    /// [`QuotaConfig::limit_for`], with the entries that share a counter.
    pub fn find<K: AsRef<str>>(&self, domain: &str, entries: &[(K, String)]) -> Option<Found<'_>> {
        let mut found = None;
        let mut shared = Vec::new();
        self.walk(domain, entries, |i, node, via| {
            if let (Via::Wildcard(pattern), true) = (via, node.share_threshold) {
                shared.push((i, pattern));
            }
            if i == entries.len() - 1 {
                found = node.limit.as_ref();
            }
        });
        found.map(|limit| Found { limit, shared })
    }

    /// envoyproxy/ratelimit's statistics key for a descriptor's limit:
    /// `domain.key_value.key` as configured (a wildcard level by its
    /// pattern; `value_to_metric` levels by the request's value), or with
    /// the limit's `detailed_metric` the request's own `key_value`s
    /// (`share_threshold` levels by their pattern). Recorded in the
    /// decision's quota outcome (`stats_key`). `None` when no limit applies.
    pub fn stats_key<K: AsRef<str>>(
        &self,
        domain: &str,
        entries: &[(K, String)],
    ) -> Option<String> {
        let mut path = String::from(domain);
        let mut detailed = String::from(domain);
        let mut limit = None;
        let mut reached = 0;
        self.walk(domain, entries, |i, node, via| {
            let (key, value) = &entries[i];
            let shown = match via {
                Via::Wildcard(p) if node.share_threshold => Some(p),
                Via::Wildcard(_) | Via::Key if node.value_to_metric => Some(value.as_str()),
                Via::Wildcard(p) => Some(p),
                Via::Value => Some(value.as_str()),
                Via::Key => None,
            };
            for (out, v) in [
                (&mut path, shown),
                (
                    &mut detailed,
                    match via {
                        Via::Wildcard(p) if node.share_threshold => Some(p),
                        _ => Some(value.as_str()).filter(|v| !v.is_empty()),
                    },
                ),
            ] {
                out.push('.');
                out.push_str(key.as_ref());
                if let Some(v) = v {
                    out.push('_');
                    out.push_str(v);
                }
            }
            reached = i + 1;
            if i == entries.len() - 1 {
                limit = node.limit.as_ref();
            }
        });
        let limit = limit?;
        debug_assert_eq!(reached, entries.len());
        Some(if limit.detailed_metric {
            detailed
        } else {
            path
        })
    }

    /// Follows `entries` down `domain`'s tree, calling `visit(entry index,
    /// node reached, how)` per level reached.
    fn walk<'a, K: AsRef<str>>(
        &'a self,
        domain: &str,
        entries: &[(K, String)],
        mut visit: impl FnMut(usize, &'a Node, Via<'a>),
    ) {
        let Some(mut node) = self.domains.get(domain) else {
            return;
        };
        for (i, (key, value)) in entries.iter().enumerate() {
            let key = key.as_ref();
            // The value, else a wildcard, else the key alone: all three
            // under `key`'s children, looked up once.
            let next = node.children.get(key).and_then(|children| {
                children
                    .get(Some(value))
                    .map(|n| (n, Via::Value))
                    .or_else(|| {
                        node.wildcards
                            .iter()
                            .find(|w| w.key == key && w.matches(value))
                            .and_then(|w| {
                                children
                                    .get(Some(&w.pattern))
                                    .map(|n| (n, Via::Wildcard(w.pattern.as_str())))
                            })
                    })
                    .or_else(|| children.get(None).map(|n| (n, Via::Key)))
            });
            let Some((next, via)) = next else { break };
            visit(i, next, via);
            if next.children.is_empty() {
                break;
            }
            node = next;
        }
    }
}

/// The counter key for a descriptor: domain and entries, with `\`, `|` and
/// `=` escaped so that distinct descriptors never share a key.
pub fn counter_key<K: AsRef<str>>(domain: &str, entries: &[(K, String)]) -> String {
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
            .map(|(k, v)| k.as_ref().len() + v.len() + 2)
            .sum::<usize>();
    let mut key = String::with_capacity(len + 8);
    push_escaped(&mut key, domain);
    for (k, v) in entries {
        key.push('|');
        push_escaped(&mut key, k.as_ref());
        key.push('=');
        push_escaped(&mut key, v);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::config::fixtures::*;

    #[test]
    fn an_rls_call_s_resource_is_kept_for_a_configured_domain_and_written_for_others() {
        let config = load(EXAMPLE_1);
        assert_eq!(
            config.resource_of("mongo_cps"),
            r#"RateLimitDomain::"mongo_cps""#
        );
        assert_eq!(
            config.resource_of("mongo_cps"),
            rate_limit_resource("mongo_cps")
        );
        // Not configured: written as for any domain, quotes escaped.
        assert_eq!(config.resource_of(r#"a"b"#), r#"RateLimitDomain::"a\"b""#);
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
        assert_eq!(counter_key("d", &[("a|b", "c".to_string())]), "d|a\\|b=c");
        assert_ne!(
            counter_key("d", &[("a", "b|c=d".to_string())]),
            counter_key("d", &[("a", "b".to_string()), ("c", "d".to_string())])
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
