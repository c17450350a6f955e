//! `check:` rules (our extension): the descriptors, and the cost, that
//! `Check` derives from the identity and the route, with `{var}` value
//! templates.

use super::format::CheckRuleYaml;
use super::{CheckRule, CostSource, Part, BUILTIN_VARS};

/// Why a `check:` rule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCheckRule {
    #[error("check rule '{name}': descriptor needs at least one entry")]
    NoEntries { name: String },
    #[error("check rule '{name}': an entry has an empty key")]
    EmptyKey { name: String },
    #[error("check rule '{name}': {problem}")]
    BadValue { name: String, problem: BadTemplate },
    #[error(transparent)]
    Tokens(#[from] super::tokens::BadTokens),
}

/// Why a descriptor value template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadTemplate {
    #[error("value '{value}' has an unclosed '{{'")]
    Unclosed { value: String },
    #[error("value '{value}': '{{{var}}}' is not a variable name (built-ins: {builtins}; or a route capture)", builtins = BUILTIN_VARS.join(", "))]
    NotAVariable { value: String, var: String },
    #[error("value '{value}' has an unbalanced '}}'")]
    Unbalanced { value: String },
}

/// The rule at `index` of `domain`'s `check:` list.
pub(super) fn check_rule(
    rule: &CheckRuleYaml,
    domain: &str,
    index: usize,
) -> Result<CheckRule, BadCheckRule> {
    let name = rule
        .name
        .clone()
        .unwrap_or_else(|| format!("check[{index}]"));
    if rule.descriptor.is_empty() {
        return Err(BadCheckRule::NoEntries { name });
    }
    let mut entries = Vec::new();
    for e in &rule.descriptor {
        if e.key.is_empty() {
            return Err(BadCheckRule::EmptyKey { name });
        }
        entries.push((
            std::sync::Arc::from(e.key.as_str()),
            template(&e.value).map_err(|problem| BadCheckRule::BadValue {
                name: name.clone(),
                problem,
            })?,
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
    let tokens = match &rule.tokens {
        None => None,
        Some(t) => Some(std::sync::Arc::new(super::tokens::token_rule(
            t,
            &name,
            rule.routes.as_ref().is_some_and(|r| !r.is_empty()),
        )?)),
    };
    Ok(CheckRule {
        name,
        domain: std::sync::Arc::from(domain),
        routes: rule.routes.clone(),
        entries,
        cost,
        tokens,
        at: (String::new(), None),
    })
}

/// Parses `text {var} text`.
fn template(value: &str) -> Result<Vec<Part>, BadTemplate> {
    let mut parts = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| BadTemplate::Unclosed {
            value: value.to_owned(),
        })?;
        let var = &after[..close];
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(BadTemplate::NotAVariable {
                value: value.to_owned(),
                var: var.to_owned(),
            });
        }
        parts.push(Part::Var(var.to_string()));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(BadTemplate::Unbalanced {
            value: value.to_owned(),
        });
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::config::fixtures::*;

    #[test]
    fn check_rule_problems_read_exactly_as_operators_see_them() {
        let name = || "r".to_owned();
        let value = || "u-{x".to_owned();
        for (problem, text) in [
            (
                BadCheckRule::NoEntries { name: name() },
                "check rule 'r': descriptor needs at least one entry",
            ),
            (
                BadCheckRule::EmptyKey { name: name() },
                "check rule 'r': an entry has an empty key",
            ),
            (
                BadCheckRule::BadValue {
                    name: name(),
                    problem: BadTemplate::Unclosed { value: value() },
                },
                "check rule 'r': value 'u-{x' has an unclosed '{'",
            ),
            (
                BadCheckRule::BadValue {
                    name: name(),
                    problem: BadTemplate::NotAVariable {
                        value: "{a-b}".into(),
                        var: "a-b".into(),
                    },
                },
                "check rule 'r': value '{a-b}': '{a-b}' is not a variable name (built-ins: principal, principal_type, org, route, method, source_ip; or a route capture)",
            ),
            (
                BadCheckRule::BadValue {
                    name: name(),
                    problem: BadTemplate::Unbalanced {
                        value: "x}".into(),
                    },
                },
                "check rule 'r': value 'x}' has an unbalanced '}'",
            ),
        ] {
            assert_eq!(problem.to_string(), text);
        }
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
}
