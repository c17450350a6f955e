//! The shapes of a quota file as it is written: envoyproxy/ratelimit's
//! format plus our `burst`, `window`, `post_hoc` and `check:` extensions.
//! What their values mean is checked by `descriptors` and `check_rules`.
//!
//! Every field accepted here is read by the matcher or the store (a unit
//! test in `descriptors.rs` enumerates the accepted fields from serde's own
//! unknown-field error and shows each one changes an answer).

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileYaml {
    pub(super) domain: Option<String>,
    #[serde(default)]
    pub(super) descriptors: Vec<DescriptorYaml>,
    /// Our extension: descriptors built inside `Check`.
    #[serde(default)]
    pub(super) check: Vec<CheckRuleYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DescriptorYaml {
    pub(super) key: String,
    #[serde(default)]
    pub(super) value: Option<String>,
    #[serde(default)]
    pub(super) rate_limit: Option<RateLimitYaml>,
    #[serde(default)]
    pub(super) descriptors: Vec<DescriptorYaml>,
    #[serde(default)]
    pub(super) shadow_mode: bool,
    /// envoyproxy/ratelimit: the limit's statistics key (`stats_key`) is
    /// the request's values instead of the configured path.
    #[serde(default)]
    pub(super) detailed_metric: bool,
    /// envoyproxy/ratelimit: the statistics key carries the request's value
    /// at this level.
    #[serde(default)]
    pub(super) value_to_metric: bool,
    /// envoyproxy/ratelimit: every value matching this wildcard shares one
    /// counter (keyed by the pattern).
    #[serde(default)]
    pub(super) share_threshold: bool,
    /// envoyproxy/ratelimit: a quota limit refuses only when every quota
    /// limit of the request is over.
    #[serde(default)]
    pub(super) quota_mode: bool,
    /// envoyproxy/ratelimit: returned in the RLS response's dynamic
    /// metadata (`metadata`) when this descriptor's limit passes.
    #[serde(default)]
    pub(super) metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitYaml {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) replaces: Vec<ReplacesYaml>,
    #[serde(default)]
    pub(super) unit: Option<String>,
    #[serde(default)]
    pub(super) requests_per_unit: Option<u64>,
    #[serde(default)]
    pub(super) unlimited: bool,
    /// Extension: at most this many units at once (default requests_per_unit).
    #[serde(default)]
    pub(super) burst: Option<u64>,
    /// Extension: a window of any length (`30s`, `5m`, `2h`, `1d`) instead
    /// of `unit`.
    #[serde(default)]
    pub(super) window: Option<String>,
    /// Extension: charges record work already done and are always
    /// recorded, even past the limit; only check-only calls (cost 0) and
    /// later charges are refused until the budget recovers.
    #[serde(default)]
    pub(super) post_hoc: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplacesYaml {
    #[serde(default)]
    pub(super) name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckRuleYaml {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) routes: Option<Vec<String>>,
    pub(super) descriptor: Vec<EntryTemplateYaml>,
    #[serde(default)]
    pub(super) cost: Option<CostYaml>,
    /// Our extension: the cost is a token reservation, settled from the
    /// response (`tokens.rs`).
    #[serde(default)]
    pub(super) tokens: Option<super::tokens::TokensYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntryTemplateYaml {
    pub(super) key: String,
    pub(super) value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CostYaml {
    #[serde(default)]
    pub(super) header: Option<String>,
    #[serde(default)]
    pub(super) body_field: Option<String>,
    #[serde(default = "one")]
    pub(super) default: u64,
}

fn one() -> u64 {
    1
}
