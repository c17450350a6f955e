//! The `tokens:` section of a `check:` rule (our extension): the rule's
//! cost is a reservation of tokens, made at `Check` and settled when the
//! response ends (ext_proc). How the estimate is made, where the response
//! says what was used, what happens when it does not say, and how long a
//! reservation may stay open. Checked here at load; used by
//! `quota::check` (the estimate) and `quota::reserve` (settling).

use serde::Deserialize;

use super::descriptors::parse_window;

/// Pointers whose JSON text estimates the prompt, when none are configured:
/// OpenAI's chat (`messages`) and completion (`prompt`) bodies, and
/// `input` (responses and embeddings).
pub const DEFAULT_PROMPT: &[&str] = &["/messages", "/prompt", "/input"];
/// Bytes of prompt JSON per estimated token, when not configured.
pub const DEFAULT_BYTES_PER_TOKEN: u64 = 4;
/// How long a reservation may stay open, when not configured.
pub const DEFAULT_RESERVATION_TTL_MS: u64 = 10 * 60 * 1000;

/// What a reservation is settled with when the response gives no usage
/// (an upstream error, a client or stream gone mid-response, no `usage`
/// in the body, a reservation that expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingUsage {
    /// The estimate stays charged (the default: never under-counts).
    KeepEstimate,
    /// The whole estimate is given back.
    Release,
    /// Exactly this many tokens are charged (the rest returned, or the
    /// excess charged past the limit).
    Charge(u64),
}

impl OnMissingUsage {
    /// The rule as written in the quota file.
    pub fn as_text(&self) -> String {
        match self {
            OnMissingUsage::KeepEstimate => "keep_estimate".into(),
            OnMissingUsage::Release => "release".into(),
            OnMissingUsage::Charge(n) => format!("charge {n}"),
        }
    }
}

/// A `check:` rule's token settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRule {
    /// RFC 6901 pointers into the request body whose values' JSON text
    /// makes the prompt estimate.
    pub prompt: Vec<String>,
    /// Bytes of that text per token (0: no prompt estimate).
    pub bytes_per_token: u64,
    /// RFC 6901 pointers into the response (the JSON body, or any event of
    /// a stream) whose values are summed into the tokens used; empty:
    /// OpenAI's `usage` (`total_tokens`, else `prompt_tokens` +
    /// `completion_tokens`).
    pub usage: Vec<String>,
    /// What a response without usage settles with.
    pub on_missing_usage: OnMissingUsage,
    /// How long the reservation stays open before it settles by
    /// `on_missing_usage` on its own, milliseconds.
    pub reservation_ttl_ms: u64,
}

/// `tokens:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokensYaml {
    #[serde(default)]
    prompt: Option<Vec<String>>,
    #[serde(default)]
    bytes_per_token: Option<u64>,
    #[serde(default)]
    usage: Option<Vec<String>>,
    #[serde(default)]
    on_missing_usage: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    reservation_ttl: Option<String>,
}

/// Why a `tokens:` section cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadTokens {
    #[error("check rule '{name}': tokens.{field}: '{pointer}' is not a JSON pointer (RFC 6901: empty, or '/' then segments, '~' only as '~0' or '~1'){hint}")]
    Pointer {
        name: String,
        field: &'static str,
        pointer: String,
        hint: String,
    },
    #[error("check rule '{name}': tokens.usage: '' (the whole body) cannot be a token count; name the field, e.g. /usage/total_tokens")]
    WholeBody { name: String },
    #[error("check rule '{name}': tokens.on_missing_usage: expected keep_estimate, release or {{charge: N}}, found {found}")]
    OnMissing { name: String, found: String },
    #[error("check rule '{name}': tokens.reservation_ttl: '{value}' is not a duration (a positive number then ms, s, m, h or d, e.g. 10m), at most 1d")]
    Ttl { name: String, value: String },
    #[error("check rule '{name}': tokens needs routes: a reservation is settled from the response of a route whose body (max_tokens, the prompt) Portcullis reads; list them")]
    NoRoutes { name: String },
}

/// Checks an RFC 6901 pointer: empty, or `/` then segments in which `~`
/// is only `~0` or `~1`.
pub fn valid_pointer(p: &str) -> bool {
    if p.is_empty() {
        return true;
    }
    if !p.starts_with('/') {
        return false;
    }
    let b = p.as_bytes();
    b.iter()
        .enumerate()
        .all(|(i, &c)| c != b'~' || matches!(b.get(i + 1), Some(b'0' | b'1')))
}

/// The rule's `tokens:` section, checked.
pub(super) fn token_rule(
    yaml: &TokensYaml,
    name: &str,
    has_routes: bool,
) -> Result<TokenRule, BadTokens> {
    let name = name.to_string();
    if !has_routes {
        return Err(BadTokens::NoRoutes { name });
    }
    let check = |field: &'static str, pointers: &[String]| -> Result<(), BadTokens> {
        for p in pointers {
            if !valid_pointer(p) {
                let dotted = !p.starts_with('/') && !p.is_empty();
                return Err(BadTokens::Pointer {
                    name: name.clone(),
                    field,
                    pointer: p.clone(),
                    hint: if dotted {
                        format!("; did you mean '/{}'?", p.replace('.', "/"))
                    } else {
                        String::new()
                    },
                });
            }
        }
        Ok(())
    };
    let prompt = match &yaml.prompt {
        Some(p) => p.clone(),
        None => DEFAULT_PROMPT.iter().map(|s| s.to_string()).collect(),
    };
    check("prompt", &prompt)?;
    let usage = yaml.usage.clone().unwrap_or_default();
    check("usage", &usage)?;
    if usage.iter().any(String::is_empty) {
        return Err(BadTokens::WholeBody { name });
    }
    let on_missing_usage = match &yaml.on_missing_usage {
        None => OnMissingUsage::KeepEstimate,
        Some(v) => on_missing(v).ok_or_else(|| BadTokens::OnMissing {
            name: name.clone(),
            found: serde_yaml_ng::to_string(v)
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        })?,
    };
    let reservation_ttl_ms = match &yaml.reservation_ttl {
        None => DEFAULT_RESERVATION_TTL_MS,
        Some(t) => parse_window(t)
            .map(|us| us / 1000)
            .filter(|ms| (1..=86_400_000).contains(ms))
            .ok_or_else(|| BadTokens::Ttl {
                name: name.clone(),
                value: t.clone(),
            })?,
    };
    Ok(TokenRule {
        prompt,
        bytes_per_token: yaml.bytes_per_token.unwrap_or(DEFAULT_BYTES_PER_TOKEN),
        usage,
        on_missing_usage,
        reservation_ttl_ms,
    })
}

fn on_missing(v: &serde_yaml_ng::Value) -> Option<OnMissingUsage> {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) if s == "keep_estimate" => Some(OnMissingUsage::KeepEstimate),
        Value::String(s) if s == "release" => Some(OnMissingUsage::Release),
        Value::Mapping(m) if m.len() == 1 => m
            .get("charge")
            .and_then(Value::as_u64)
            .map(OnMissingUsage::Charge),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::config::QuotaConfig;

    fn errors(tokens: &str) -> Vec<String> {
        let text = format!(
            "domain: d\ncheck:\n  - name: t\n    routes: [chat]\n    descriptor: [{{key: k, value: \"{{principal}}\"}}]\n    tokens: {tokens}\n"
        );
        match QuotaConfig::parse([("quotas.yaml", text.as_str())]) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .into_iter()
                .map(|e| format!("{}:{}", e.line.unwrap_or(0), e.message))
                .collect(),
        }
    }

    #[test]
    fn pointers_must_be_rfc_6901() {
        assert!(valid_pointer(""));
        assert!(valid_pointer("/usage/total_tokens"));
        assert!(valid_pointer("/a~1b/c~0d"));
        assert!(!valid_pointer("usage/total_tokens"));
        assert!(!valid_pointer("/a~2"));
        assert!(!valid_pointer("/a~"));
        assert_eq!(
            errors("{usage: [usage.total_tokens]}"),
            ["5:check rule 't': tokens.usage: 'usage.total_tokens' is not a JSON pointer (RFC 6901: empty, or '/' then segments, '~' only as '~0' or '~1'); did you mean '/usage/total_tokens'?"]
        );
        assert_eq!(
            errors("{prompt: ['/a~2']}"),
            ["5:check rule 't': tokens.prompt: '/a~2' is not a JSON pointer (RFC 6901: empty, or '/' then segments, '~' only as '~0' or '~1')"]
        );
        assert_eq!(
            errors("{usage: ['']}"),
            ["5:check rule 't': tokens.usage: '' (the whole body) cannot be a token count; name the field, e.g. /usage/total_tokens"]
        );
    }

    #[test]
    fn missing_usage_rules_and_ttls_read_as_written_or_fail_precisely() {
        let rule = |tokens: &str| {
            let text = format!(
                "domain: d\ncheck:\n  - routes: [chat]\n    descriptor: [{{key: k, value: x}}]\n    tokens: {tokens}\n"
            );
            QuotaConfig::parse([("quotas.yaml", text.as_str())])
                .unwrap()
                .check_rules[0]
                .tokens
                .as_deref()
                .cloned()
                .unwrap()
        };
        let r = rule("{}");
        assert_eq!(r.on_missing_usage, OnMissingUsage::KeepEstimate);
        assert_eq!(r.reservation_ttl_ms, DEFAULT_RESERVATION_TTL_MS);
        assert_eq!(r.prompt, DEFAULT_PROMPT);
        assert_eq!(r.bytes_per_token, 4);
        assert_eq!(
            rule("{on_missing_usage: release}").on_missing_usage,
            OnMissingUsage::Release
        );
        assert_eq!(
            rule("{on_missing_usage: {charge: 500}, reservation_ttl: 90s}"),
            TokenRule {
                on_missing_usage: OnMissingUsage::Charge(500),
                reservation_ttl_ms: 90_000,
                ..r
            }
        );
        assert_eq!(
            errors("{on_missing_usage: keep}"),
            ["5:check rule 't': tokens.on_missing_usage: expected keep_estimate, release or {charge: N}, found keep"]
        );
        assert_eq!(
            errors("{reservation_ttl: 2w}"),
            ["5:check rule 't': tokens.reservation_ttl: '2w' is not a duration (a positive number then ms, s, m, h or d, e.g. 10m), at most 1d"]
        );
        let text = "domain: d\ncheck:\n  - name: t\n    descriptor: [{key: k, value: x}]\n    tokens: {}\n";
        let e = QuotaConfig::parse([("quotas.yaml", text)]).unwrap_err();
        assert_eq!(e[0].message, "check rule 't': tokens needs routes: a reservation is settled from the response of a route whose body (max_tokens, the prompt) Portcullis reads; list them");
    }
}
