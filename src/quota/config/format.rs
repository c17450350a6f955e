//! The shapes of a quota file as it is written: envoyproxy/ratelimit's
//! format plus our `burst`, `window` and `check:` extensions. What their
//! values mean is checked by `descriptors` and `check_rules`.

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
    #[serde(default)]
    pub(super) detailed_metric: bool,
    #[serde(default)]
    pub(super) value_to_metric: bool,
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
