//! Quota files as text: which files of a policy directory are quota files,
//! reading `quotas/*.yaml`, finding a field's line, and scaling every rate
//! for benchmarks. It does not parse them (that is `QuotaConfig::parse`).

use std::collections::BTreeMap;

use super::{QUOTAS_DIR, QUOTAS_FILE};

/// A quota file, or the `quotas` directory, that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {file}: {source}")]
pub struct UnreadableQuotaFile {
    /// Relative to the policy directory, e.g. `quotas/ml_api.yaml`.
    pub file: String,
    pub source: std::io::Error,
}

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

/// Adds `quotas/*.yaml` under `dir` to `files`, keyed `quotas/NAME.yaml`.
pub fn read_domain_files(
    dir: &std::path::Path,
    files: &mut BTreeMap<String, String>,
) -> Result<(), UnreadableQuotaFile> {
    let refused = |file: String, why: &str| UnreadableQuotaFile {
        file,
        source: std::io::Error::other(why.to_string()),
    };
    let sub = dir.join(QUOTAS_DIR);
    match std::fs::metadata(&sub) {
        Ok(meta) if meta.is_dir() => {}
        // Never an empty set of limits in its place.
        Ok(_) => return Err(refused(QUOTAS_DIR.into(), "it is a file, not a directory")),
        Err(_) => return Ok(()),
    }
    let entries = std::fs::read_dir(&sub).map_err(|source| UnreadableQuotaFile {
        file: QUOTAS_DIR.to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = format!("{QUOTAS_DIR}/{name}");
        if !name.ends_with(".yaml") {
            continue;
        }
        // As `policy::files::is_policy_file`: a directory under a domain
        // file's name is an error; a dangling link (an editor's lock) is
        // skipped.
        match std::fs::metadata(entry.path()) {
            Ok(meta) if meta.is_dir() => return Err(refused(key, "it is a directory, not a file")),
            Ok(meta) if meta.is_file() => {}
            _ => continue,
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|source| UnreadableQuotaFile {
            file: key.clone(),
            source,
        })?;
        files.insert(key, text);
    }
    Ok(())
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
