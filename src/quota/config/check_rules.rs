//! `check:` rules (our extension): the descriptors, and the cost, that
//! `Check` derives from the identity and the route, with `{var}` value
//! templates.

use super::format::CheckRuleYaml;
use super::{CheckRule, CostSource, Part, BUILTIN_VARS};

/// The rule at `index` of `domain`'s `check:` list.
pub(super) fn check_rule(
    rule: &CheckRuleYaml,
    domain: &str,
    index: usize,
) -> Result<CheckRule, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::config::fixtures::*;

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
