//! Quotas inside ext_authz `Check`: the descriptors a request's identity
//! and route yield under the `check:` rules of the quota files, each with
//! its cost (a header, a JSON body field, or a default; for a rule with
//! `tokens:`, that cost plus the prompt estimate, see [`prompt_estimate`]).

use std::sync::Arc;

use super::apply::Descriptor;
use super::config::{CheckRule, CostSource, Part, QuotaConfig};
use crate::request::AccessRequest;

/// Who asks for what, as the quota rules see it; borrowed from the
/// identity and the route match, since the rules only read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSubject<'a> {
    /// The principal's entity type, e.g. `User`.
    pub principal_type: &'a str,
    /// The principal's id, e.g. `alice`.
    pub principal: &'a str,
    /// The id of the principal's `Org` parent, if any.
    pub org: Option<&'a str>,
    /// The matched route's name.
    pub route: &'a str,
    /// The route's captures, e.g. `("model", "sentiment")`.
    pub captures: &'a [(&'a str, String)],
}

/// A cost that cannot be read: the request is refused with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadCost(pub String);

/// The descriptors (with costs) that apply to a request. `json` is the
/// body already parsed as JSON (by the validate stage), if it was; without
/// it the body is parsed here, once, when a rule's cost needs it.
pub fn descriptors(
    config: &QuotaConfig,
    subject: &QuotaSubject<'_>,
    req: &AccessRequest,
    json: Option<&serde_json::Value>,
) -> Result<Vec<Descriptor>, BadCost> {
    let mut body = Body {
        given: json,
        parsed: None,
    };
    let mut out = Vec::with_capacity(config.check_rules.len());
    // Rules often share a cost source (a request count per principal and
    // per org, tokens per model and per org): read each source once.
    let mut last: Option<(&CostSource, u64)> = None;
    for rule in &config.check_rules {
        if let Some(routes) = &rule.routes {
            if !routes.iter().any(|r| r == subject.route) {
                continue;
            }
        }
        let Some(entries) = entries(rule, subject, req) else {
            continue;
        };
        let mut cost = match last {
            Some((source, cost)) if *source == rule.cost => cost,
            _ => {
                let cost = cost(rule, req, &mut body)?;
                last = Some((&rule.cost, cost));
                cost
            }
        };
        if let Some(tokens) = &rule.tokens {
            let json = body.json(req);
            cost = cost.saturating_add(prompt_estimate(tokens, json));
        }
        out.push(Descriptor {
            domain: Arc::clone(&rule.domain),
            entries,
            cost,
            limit: None,
            tokens: rule.tokens.clone(),
        });
    }
    Ok(out)
}

/// The request body as JSON: as given, or parsed at most once here.
struct Body<'a> {
    given: Option<&'a serde_json::Value>,
    parsed: Option<Option<serde_json::Value>>,
}

impl Body<'_> {
    /// `None` when there is no body or it is not JSON.
    fn json(&mut self, req: &AccessRequest) -> Option<&serde_json::Value> {
        if let Some(given) = self.given {
            return Some(given);
        }
        self.parsed
            .get_or_insert_with(|| {
                req.body
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            })
            .as_ref()
    }
}

/// The prompt's share of a token reservation: the bytes of the JSON text
/// of each value the rule's `prompt` pointers find in the body (by default
/// `/messages`, `/prompt`, `/input`), divided by `bytes_per_token` (4 by
/// default) and rounded up; 0 without a JSON body or with
/// `bytes_per_token: 0`. A rough upper-leaning estimate for English text
/// with common tokenizers (about 4 characters a token, and the JSON
/// quoting and field names count too); the settlement corrects it.
pub fn prompt_estimate(
    rule: &super::config::tokens::TokenRule,
    body: Option<&serde_json::Value>,
) -> u64 {
    let (Some(body), per) = (body, rule.bytes_per_token) else {
        return 0;
    };
    if per == 0 {
        return 0;
    }
    let bytes: u64 = rule
        .prompt
        .iter()
        .filter_map(|p| body.pointer(p))
        .map(|v| serde_json::to_string(v).map_or(0, |t| t.len() as u64))
        .sum();
    bytes.div_ceil(per)
}

/// The rule's entries, or `None` when a variable has no value here (the
/// rule does not apply, e.g. `{org}` for a user without an org).
fn entries(
    rule: &CheckRule,
    subject: &QuotaSubject<'_>,
    req: &AccessRequest,
) -> Option<super::apply::Entries> {
    use std::borrow::Cow;
    // Borrowed where the value already exists: a rule's values are built
    // for every request, so only the final strings are allocated.
    let var = |name: &str| -> Option<Cow<'_, str>> {
        match name {
            "principal" => Some(Cow::Borrowed(subject.principal)),
            "principal_type" => Some(Cow::Borrowed(subject.principal_type)),
            "org" => subject.org.map(Cow::Borrowed),
            "route" => Some(Cow::Borrowed(subject.route)),
            "method" => Some(Cow::Borrowed(&req.method)),
            "source_ip" => req.source_ip.map(|ip| Cow::Owned(ip.to_string())),
            other => subject
                .captures
                .iter()
                .find(|(k, _)| *k == other)
                .map(|(_, v)| Cow::Borrowed(v.as_str())),
        }
    };
    rule.entries
        .iter()
        .map(|(key, parts)| {
            let mut value = String::with_capacity(32);
            for p in parts {
                match p {
                    Part::Text(t) => value.push_str(t),
                    Part::Var(v) => value.push_str(&var(v)?),
                }
            }
            Some((Arc::clone(key), value))
        })
        .collect()
}

fn cost(rule: &CheckRule, req: &AccessRequest, body: &mut Body<'_>) -> Result<u64, BadCost> {
    let c = &rule.cost;
    let mut found: Option<u64> = None;
    if let Some(h) = &c.header {
        if let Some(v) = req.header(h) {
            found = Some(v.trim().parse::<u64>().map_err(|_| {
                BadCost(format!(
                    "header '{h}' must be a non-negative integer (it sets the quota cost)"
                ))
            })?);
        }
    }
    if let Some(field) = &c.body_field {
        let mut node = body.json(req);
        for part in field.split('.') {
            node = node.and_then(|n| n.get(part));
        }
        if let Some(v) = node.filter(|v| !v.is_null()) {
            let v = v.as_u64().ok_or_else(|| {
                BadCost(format!(
                    "body field '{field}' must be a non-negative integer (it sets the quota cost)"
                ))
            })?;
            // Both given: the larger counts, so a client cannot lower the
            // cost of what its body asks for by sending a smaller header.
            found = Some(found.map_or(v, |h| h.max(v)));
        }
    }
    Ok(found.unwrap_or(c.default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QuotaConfig {
        QuotaConfig::parse([(
            "quotas.yaml",
            "domain: d\ncheck:\n  - descriptor: [{key: ip, value: \"{source_ip}\"}]\n  - descriptor: [{key: org, value: \"{org}\"}]\n  - routes: [predict]\n    descriptor: [{key: m, value: \"{principal}@{model}\"}]\n    cost: {body_field: params.max_tokens, header: x-max-tokens, default: 7}\n",
        )])
        .unwrap()
    }

    fn captures() -> Vec<(&'static str, String)> {
        vec![("model", "gpt".into())]
    }

    fn subject<'a>(
        route: &'a str,
        org: Option<&'a str>,
        captures: &'a [(&'a str, String)],
    ) -> QuotaSubject<'a> {
        QuotaSubject {
            principal_type: "User",
            principal: "alice",
            org,
            route,
            captures,
        }
    }

    #[test]
    fn rules_apply_only_where_their_variables_and_routes_do() {
        let captures = captures();
        let mut req = AccessRequest::for_test("POST", "/x");
        let d = descriptors(&config(), &subject("other", None, &captures), &req, None).unwrap();
        assert!(d.is_empty(), "{d:?}");
        req.source_ip = Some("192.0.2.1".parse().unwrap());
        let d = descriptors(
            &config(),
            &subject("predict", Some("acme"), &captures),
            &req,
            None,
        )
        .unwrap();
        let entries: Vec<(&str, &str)> = d
            .iter()
            .map(|d| (&*d.entries[0].0, d.entries[0].1.as_str()))
            .collect();
        assert_eq!(
            entries,
            [("ip", "192.0.2.1"), ("org", "acme"), ("m", "alice@gpt")]
        );
        assert_eq!(d[2].cost, 7);
    }

    #[test]
    fn cost_is_the_larger_of_header_and_body_else_the_default() {
        let captures = captures();
        let s = subject("predict", None, &captures);
        let mut req = AccessRequest::for_test("POST", "/x");
        req.body = Some(br#"{"params": {"max_tokens": 42}}"#.to_vec());
        assert_eq!(descriptors(&config(), &s, &req, None).unwrap()[0].cost, 42);
        // A smaller header does not lower what the body asks for...
        req.headers.insert("x-max-tokens".into(), "9".into());
        assert_eq!(descriptors(&config(), &s, &req, None).unwrap()[0].cost, 42);
        // ...a larger one raises it.
        req.headers.insert("x-max-tokens".into(), "100".into());
        assert_eq!(descriptors(&config(), &s, &req, None).unwrap()[0].cost, 100);
        req.body = None;
        req.headers.insert("x-max-tokens".into(), "9".into());
        assert_eq!(descriptors(&config(), &s, &req, None).unwrap()[0].cost, 9);
        req.headers.insert("x-max-tokens".into(), "nine".into());
        assert!(descriptors(&config(), &s, &req, None).is_err());
        req.headers.clear();
        req.body = Some(br#"{"params": {"max_tokens": -1}}"#.to_vec());
        assert!(descriptors(&config(), &s, &req, None).is_err());
        req.body = Some(b"not json".to_vec());
        assert_eq!(descriptors(&config(), &s, &req, None).unwrap()[0].cost, 7);
    }

    #[test]
    fn rules_sharing_a_cost_source_read_it_once_and_agree() {
        let config = QuotaConfig::parse([(
            "quotas.yaml",
            "domain: d\ncheck:\n  - descriptor: [{key: a, value: \"{principal}\"}]\n    cost: {header: x-cost, default: 3}\n  - descriptor: [{key: b, value: \"{principal}\"}]\n    cost: {header: x-cost, default: 3}\n  - descriptor: [{key: c, value: \"{principal}\"}]\n    cost: {header: x-cost, default: 4}\n  - descriptor: [{key: d, value: \"{principal}\"}]\n    cost: {header: x-cost, default: 3}\n",
        )])
        .unwrap();
        let captures = captures();
        let s = subject("any", None, &captures);
        let mut req = AccessRequest::for_test("POST", "/x");
        let costs = |req: &AccessRequest| -> Vec<u64> {
            let d = descriptors(&config, &s, req, None).unwrap();
            d.iter().map(|d| d.cost).collect()
        };
        assert_eq!(costs(&req), [3, 3, 4, 3]);
        req.headers.insert("x-cost".into(), "9".into());
        assert_eq!(costs(&req), [9, 9, 9, 9]);
        req.headers.insert("x-cost".into(), "nine".into());
        assert!(descriptors(&config, &s, &req, None).is_err());
    }

    #[test]
    fn a_body_parsed_by_validation_is_read_not_parsed_again() {
        let captures = captures();
        let s = subject("predict", None, &captures);
        let mut req = AccessRequest::for_test("POST", "/x");
        // The raw body is not JSON; the given parse is what counts.
        req.body = Some(b"not json".to_vec());
        let json = serde_json::json!({"params": {"max_tokens": 42}});
        assert_eq!(
            descriptors(&config(), &s, &req, Some(&json)).unwrap()[0].cost,
            42
        );
    }

    #[test]
    fn a_token_rule_reserves_max_tokens_plus_the_prompt_estimate() {
        let captures = captures();
        let config = QuotaConfig::parse([(
            "quotas.yaml",
            "domain: d\ncheck:\n  - routes: [chat]\n    descriptor: [{key: t, value: \"{principal}\"}]\n    cost: {body_field: max_tokens, default: 256}\n    tokens: {}\n",
        )])
        .unwrap();
        let s = subject("chat", None, &captures);
        // 40 bytes of JSON text: [{"role":"user","content":"0123456789"}]
        let messages = serde_json::json!([{"role": "user", "content": "0123456789"}]);
        assert_eq!(messages.to_string().len(), 40);
        let req = AccessRequest::for_test("POST", "/x").with_json(
            &serde_json::json!({"model": "m", "max_tokens": 1000, "messages": messages}),
        );
        let d = descriptors(&config, &s, &req, None).unwrap();
        assert_eq!(d[0].cost, 1000 + 10);
        assert!(d[0].tokens.is_some());
        // No body: the default cost, no prompt.
        let d = descriptors(&config, &s, &AccessRequest::for_test("POST", "/x"), None).unwrap();
        assert_eq!(d[0].cost, 256);
        // 39 bytes (the quoted string) round up to 10 tokens.
        let req = AccessRequest::for_test("POST", "/x")
            .with_json(&serde_json::json!({"max_tokens": 5, "prompt": "0123456789012345678901234567890123456"}));
        assert_eq!(
            descriptors(&config, &s, &req, None).unwrap()[0].cost,
            5 + 10
        );
    }
}
