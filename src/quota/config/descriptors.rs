//! The descriptor tree of one quota file, by envoyproxy/ratelimit's load
//! rules: composite keys, duplicates, and each `rate_limit` turned into a
//! [`QuotaLimit`] (with our `window` and `burst`).

use super::format::{DescriptorYaml, RateLimitYaml};
use std::sync::Arc;

use super::{Node, QuotaLimit, Wildcard};

/// Why a descriptor's `rate_limit` cannot be used; `at` is the descriptor's
/// composite key (e.g. `domain.key_value`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRateLimit {
    #[error("{at}: should not have an empty replaces entry")]
    EmptyReplaces { at: String },
    #[error("{at}: replaces should not contain name of same descriptor")]
    ReplacesItself { at: String },
    #[error("{at}: should not specify rate limit unit or requests_per_unit when unlimited")]
    UnlimitedWithRate { at: String },
    #[error("{at}: give either unit or window (our extension), not both")]
    UnitAndWindow { at: String },
    #[error("{at}: invalid rate limit unit '{unit}': use second, minute, hour, day, week, month or year")]
    UnknownUnit { at: String, unit: String },
    #[error("{at}: window '{window}' is not a duration like 30s, 5m, 2h or 1d")]
    BadWindow { at: String, window: String },
    #[error("{at}: invalid rate limit unit: rate_limit needs a unit (or a window)")]
    NoUnit { at: String },
    #[error("{at}: rate_limit needs requests_per_unit")]
    NoRequestsPerUnit { at: String },
    #[error("{at}: burst must be at least 1 (omit it for burst = requests_per_unit)")]
    ZeroBurst { at: String },
}

/// Adds `descriptors` under `node`, reporting each problem at its line;
/// `key_lines` holds the line of every descriptor in pre-order.
#[allow(clippy::too_many_arguments)] // one recursion carrying its load context
pub(super) fn build(
    descriptors: &[DescriptorYaml],
    node: &mut Node,
    path: &str,
    key_lines: &[usize],
    counter: &mut usize,
    names: &mut Vec<String>,
    value_to_metric: bool,
    report: &mut dyn FnMut(Option<usize>, String),
) {
    for d in descriptors {
        let value_to_metric = value_to_metric || d.value_to_metric;
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
        if node.has_child(&d.key, value.as_deref()) {
            report(
                line,
                format!("duplicate descriptor composite key '{composite}'"),
            );
            continue;
        }
        let is_wildcard = value.as_deref().is_some_and(|v| v.contains('*'));
        if d.share_threshold && !is_wildcard {
            report(
                line,
                format!("share_threshold can only be used with wildcard values (containing '*'), but found key '{composite}'"),
            );
        }
        let mut child = Node {
            value_to_metric: d.value_to_metric,
            share_threshold: d.share_threshold,
            ..Node::default()
        };
        if let Some(rl) = &d.rate_limit {
            match limit(rl, d, &composite) {
                Ok(mut l) => {
                    l.stats_from_request = l.detailed_metric || value_to_metric;
                    if let Some(n) = &l.name {
                        names.push(n.clone());
                    }
                    child.limit = Some(Arc::new(l));
                }
                Err(problem) => report(line, problem.to_string()),
            }
        }
        build(
            &d.descriptors,
            &mut child,
            &composite,
            key_lines,
            counter,
            names,
            value_to_metric,
            report,
        );
        if let Some(v) = value.as_ref().filter(|_| is_wildcard) {
            node.wildcards.push(Wildcard {
                key: d.key.clone(),
                pattern: v.clone(),
                parts: v.split('*').map(str::to_string).collect(),
            });
        }
        node.add_child(&d.key, value.as_deref(), child);
    }
}

fn limit(rl: &RateLimitYaml, d: &DescriptorYaml, path: &str) -> Result<QuotaLimit, BadRateLimit> {
    let shadow = d.shadow_mode;
    let at = || path.to_owned();
    for r in &rl.replaces {
        if r.name.is_empty() {
            return Err(BadRateLimit::EmptyReplaces { at: at() });
        }
        if Some(&r.name) == rl.name.as_ref() {
            return Err(BadRateLimit::ReplacesItself { at: at() });
        }
    }
    let replaces = rl.replaces.iter().map(|r| r.name.clone()).collect();
    // (requests, window, burst): an unlimited limit counts nothing.
    let (requests, window_us, burst) = if rl.unlimited {
        if rl.unit.is_some() || rl.window.is_some() || rl.requests_per_unit.is_some() {
            return Err(BadRateLimit::UnlimitedWithRate { at: at() });
        }
        (0, 1_000_000, 0)
    } else {
        let window_us = match (&rl.unit, &rl.window) {
            (Some(_), Some(_)) => return Err(BadRateLimit::UnitAndWindow { at: at() }),
            (Some(unit), None) => unit_us(unit).ok_or_else(|| BadRateLimit::UnknownUnit {
                at: at(),
                unit: unit.clone(),
            })?,
            (None, Some(w)) => parse_window(w).ok_or_else(|| BadRateLimit::BadWindow {
                at: at(),
                window: w.clone(),
            })?,
            (None, None) => return Err(BadRateLimit::NoUnit { at: at() }),
        };
        let requests = rl
            .requests_per_unit
            .ok_or_else(|| BadRateLimit::NoRequestsPerUnit { at: at() })?;
        if rl.burst == Some(0) {
            return Err(BadRateLimit::ZeroBurst { at: at() });
        }
        (requests, window_us, rl.burst.unwrap_or(requests))
    };
    Ok(QuotaLimit {
        name: rl.name.clone(),
        requests,
        window_us,
        burst,
        unlimited: rl.unlimited,
        replaces,
        shadow,
        quota_mode: d.quota_mode,
        post_hoc: rl.post_hoc,
        detailed_metric: d.detailed_metric,
        metadata: d.metadata.clone().map(Arc::new),
        path: Arc::from(path),
        stats_from_request: false,
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

pub(super) fn parse_window(w: &str) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::config::QuotaConfig;

    fn errors(text: &str) -> Vec<String> {
        QuotaConfig::parse([("quotas.yaml", text)])
            .expect_err("should fail")
            .into_iter()
            .map(|e| format!("{}:{}", e.line.unwrap_or(0), e.message))
            .collect()
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

    /// The fields serde accepts at `path` of a quota file, from its own
    /// unknown-field error (so a field added to `format.rs` shows up here).
    fn accepted(text: &str) -> Vec<String> {
        let err = errors(text).join("\n");
        let list = err.split("expected one of ").nth(1).expect(&err);
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    /// What the matcher and the store get from a config: the limit (every
    /// field of it reaches the charge or the RLS status), the entries
    /// counted under a pattern, and the statistics key.
    fn observed(text: &str) -> String {
        let c =
            QuotaConfig::parse([("quotas.yaml", text)]).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        let mut out = String::new();
        for entries in [
            &[("k", "vx")][..],
            &[("k", "vx"), ("s", "t")],
            &[("j", "vx")],
            &[("k", "wx")],
        ] {
            let entries: Vec<(String, String)> = entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let found = c.find("d", &entries);
            out.push_str(&format!(
                "{:?} {:?} {:?}\n",
                found.as_ref().map(|f| f.limit),
                found.as_ref().map(|f| f.shared.clone()),
                c.stats_key("d", &entries)
            ));
        }
        out
    }

    /// No accepted-but-ignored field: every field the loader accepts
    /// changes what the matcher or the store gets.
    #[test]
    fn every_accepted_field_changes_an_answer() {
        let base = |descriptor: &str, rate_limit: &str| {
            format!("domain: d\ndescriptors:\n  - key: k\n    value: v*\n{descriptor}    rate_limit: {{{rate_limit}}}\n")
        };
        let rl = "unit: minute, requests_per_unit: 5";
        let plain = observed(&base("", rl));
        let descriptor_variants = [
            ("key", "domain: d\ndescriptors:\n  - key: j\n    value: v*\n    rate_limit: {unit: minute, requests_per_unit: 5}\n".to_string()),
            ("value", "domain: d\ndescriptors:\n  - key: k\n    value: w*\n    rate_limit: {unit: minute, requests_per_unit: 5}\n".to_string()),
            ("rate_limit", "domain: d\ndescriptors:\n  - key: k\n    value: v*\n".to_string()),
            ("descriptors", base("    descriptors: [{key: s, rate_limit: {unit: second, requests_per_unit: 1}}]\n", rl)),
            ("shadow_mode", base("    shadow_mode: true\n", rl)),
            ("detailed_metric", base("    detailed_metric: true\n", rl)),
            ("value_to_metric", base("    value_to_metric: true\n", rl)),
            ("share_threshold", base("    share_threshold: true\n", rl)),
            ("quota_mode", base("    quota_mode: true\n", rl)),
            ("metadata", base("    metadata: {service: {name: s1}}\n", rl)),
        ];
        let rate_limit_variants = [
            ("name", "name: n, unit: minute, requests_per_unit: 5"),
            (
                "replaces",
                "replaces: [{name: other}], unit: minute, requests_per_unit: 5",
            ),
            ("unit", "unit: hour, requests_per_unit: 5"),
            ("requests_per_unit", "unit: minute, requests_per_unit: 6"),
            ("unlimited", "unlimited: true"),
            ("burst", "unit: minute, requests_per_unit: 5, burst: 2"),
            ("window", "window: 30s, requests_per_unit: 5"),
            (
                "post_hoc",
                "unit: minute, requests_per_unit: 5, post_hoc: true",
            ),
        ];
        let mut covered: Vec<&str> = Vec::new();
        for (field, text) in &descriptor_variants {
            assert_ne!(
                observed(text),
                plain,
                "descriptor field `{field}` changes nothing"
            );
            covered.push(field);
        }
        let descriptor_fields = accepted("domain: d\ndescriptors:\n  - key: k\n    bogus: 1\n");
        let mut want: Vec<&str> = covered.clone();
        want.sort_unstable();
        let mut got: Vec<&str> = descriptor_fields.iter().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(got, want, "descriptor fields accepted vs shown to be used");

        let mut covered: Vec<&str> = Vec::new();
        for (field, r) in &rate_limit_variants {
            assert_ne!(
                observed(&base("", r)),
                plain,
                "rate_limit field `{field}` changes nothing"
            );
            covered.push(field);
        }
        covered.sort_unstable();
        let mut got = accepted("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {bogus: 1}\n");
        got.sort_unstable();
        assert_eq!(
            got, covered,
            "rate_limit fields accepted vs shown to be used"
        );
    }

    #[test]
    fn rate_limit_problems_read_exactly_as_operators_see_them() {
        let at = || "d.a".to_owned();
        for (problem, text) in [
            (
                BadRateLimit::EmptyReplaces { at: at() },
                "d.a: should not have an empty replaces entry",
            ),
            (
                BadRateLimit::ReplacesItself { at: at() },
                "d.a: replaces should not contain name of same descriptor",
            ),
            (
                BadRateLimit::UnlimitedWithRate { at: at() },
                "d.a: should not specify rate limit unit or requests_per_unit when unlimited",
            ),
            (
                BadRateLimit::UnitAndWindow { at: at() },
                "d.a: give either unit or window (our extension), not both",
            ),
            (
                BadRateLimit::UnknownUnit {
                    at: at(),
                    unit: "fortnight".into(),
                },
                "d.a: invalid rate limit unit 'fortnight': use second, minute, hour, day, week, month or year",
            ),
            (
                BadRateLimit::BadWindow {
                    at: at(),
                    window: "5x".into(),
                },
                "d.a: window '5x' is not a duration like 30s, 5m, 2h or 1d",
            ),
            (
                BadRateLimit::NoUnit { at: at() },
                "d.a: invalid rate limit unit: rate_limit needs a unit (or a window)",
            ),
            (
                BadRateLimit::NoRequestsPerUnit { at: at() },
                "d.a: rate_limit needs requests_per_unit",
            ),
            (
                BadRateLimit::ZeroBurst { at: at() },
                "d.a: burst must be at least 1 (omit it for burst = requests_per_unit)",
            ),
        ] {
            assert_eq!(problem.to_string(), text);
        }
    }
}
