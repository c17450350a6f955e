//! Quota files as text: which files of a policy directory are quota files
//! (`policy::files` reads them), finding a field's line, and scaling every rate
//! for benchmarks. It does not parse them (that is `QuotaConfig::parse`).

use super::{QUOTAS_DIR, QUOTAS_FILE};

/// A quota file's text with every `requests_per_unit` and `burst` value
/// multiplied by `factor`: for benchmarks that must exercise the quota
/// stage on every request without ever running out.
pub fn scaled(text: &str, factor: u64) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let trimmed = line.trim_start();
        let value = ["requests_per_unit:", "burst:"]
            .iter()
            .find_map(|key| trimmed.strip_prefix(key))
            .and_then(|rest| rest.trim().parse::<u64>().ok());
        match value {
            Some(n) => {
                let indent = &line[..line.len() - trimmed.len()];
                let key = trimmed.split(':').next().unwrap_or_default();
                out.push_str(&format!("{indent}{key}: {}", n.saturating_mul(factor)));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// True for `quotas.yaml` and `quotas/*.yaml` (relative paths).
pub fn is_quota_file(relative: &str) -> bool {
    relative == QUOTAS_FILE
        || relative
            .strip_prefix(QUOTAS_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|r| r.ends_with(".yaml") && !r.contains('/'))
}

/// Lines (1-based) of block-style `key:` fields, in document order: the
/// descriptors in pre-order.
pub(super) fn key_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            let t = t.strip_prefix("- ").map(str::trim_start).unwrap_or(t);
            t.starts_with("key:")
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// The line of the `n`-th occurrence of `needle`.
pub(super) fn line_of(text: &str, needle: &str, n: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().trim_start_matches("- ").starts_with(needle))
        .nth(n)
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn scaled_multiplies_rates_and_bursts_only() {
        let text = "descriptors:\n  - key: a\n    rate_limit:\n      unit: minute\n      requests_per_unit: 600\n      burst: 100\n";
        let out = super::scaled(text, 1000);
        assert!(out.contains("      requests_per_unit: 600000\n"), "{out}");
        assert!(out.contains("      burst: 100000\n"), "{out}");
        assert!(out.contains("      unit: minute\n"), "{out}");
    }
}
