//! Shared fixtures for the quota configuration's unit tests.

use super::QuotaConfig;

pub(super) fn load(text: &str) -> QuotaConfig {
    QuotaConfig::parse([("quotas.yaml", text)]).unwrap_or_else(|e| panic!("{e:?}"))
}

pub(super) fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
