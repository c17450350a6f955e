//! The documentation stays true to the code: every configuration field the
//! loader accepts is described in docs/configuration.md. The fields are not
//! listed by hand here: they are discovered from the loader itself, which
//! refuses an unknown field by naming every field it expects at that place.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use portcullis::config::Config;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// YAML that sets `probe: 1` at `path` (dotted; `[]` is a list element).
fn yaml_at(path: &[String], leaf: &str) -> String {
    let mut text = format!("{leaf}: 1\n");
    for segment in path.iter().rev() {
        let indented: String = text.lines().map(|l| format!("  {l}\n")).collect();
        text = match segment.strip_suffix("[]") {
            Some(name) => {
                // A list of one mapping: "- " then the mapping's lines.
                let mut lines = indented.lines();
                let first = lines.next().unwrap_or_default().trim_start().to_string();
                // Continuation lines line up with the first key after "- ".
                let rest: String = lines.map(|l| format!("  {l}\n")).collect();
                format!("{name}:\n  - {first}\n{rest}")
            }
            None => format!("{segment}:\n{indented}"),
        };
    }
    text
}

/// The fields the loader expects at `path`, or None when `path` is not a
/// section (a scalar or list of scalars).
fn fields_at(path: &[String]) -> Option<Vec<String>> {
    let text = yaml_at(path, "zz_probe_field");
    let err = match Config::parse(&text, Path::new("probe.yaml")) {
        Ok(_) => return None,
        Err(e) => e.to_string(),
    };
    let start = err
        .find("expected one of ")
        .or_else(|| err.find("expected "))?;
    if !err.contains("unknown field") {
        return None;
    }
    let list = &err[start..];
    let fields: Vec<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    (!fields.is_empty()).then_some(fields)
}

/// Every leaf field path the loader accepts, e.g. `quotas.timeout_ms` and
/// `authentication.jwt[].issuer`.
fn all_fields() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        let fields = fields_at(&path).unwrap_or_else(|| panic!("no fields at {path:?}"));
        for field in fields {
            let mut child = path.clone();
            child.push(field.clone());
            if fields_at(&child).is_some() {
                todo.push(child);
                continue;
            }
            let mut element = path.clone();
            element.push(format!("{field}[]"));
            if fields_at(&element).is_some() {
                todo.push(element);
                continue;
            }
            out.insert(child.join("."));
        }
        assert!(out.len() < 1000, "runaway field discovery");
    }
    out
}

#[test]
fn field_discovery_sees_sections_lists_and_leaves() {
    let fields = all_fields();
    for expected in [
        "listen",
        "quotas.timeout_ms",
        "authentication.jwt[].issuer",
        "authentication.failures.threshold",
    ] {
        assert!(fields.contains(expected), "{expected} not in {fields:?}");
    }
    assert!(
        !fields.contains("authentication"),
        "a section is not a leaf"
    );
}

#[test]
fn every_configuration_field_is_documented() {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    let missing: Vec<String> = all_fields()
        .into_iter()
        .filter(|f| !doc.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not describe these fields (write each as `path`): {missing:?}"
    );
}

/// The ```yaml block of docs/configuration.md that holds `needle`.
fn yaml_example(needle: &str) -> String {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    doc.split("```yaml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains(needle))
        .unwrap_or_else(|| panic!("docs/configuration.md has no ```yaml block with {needle:?}"))
        .to_string()
}

#[test]
fn the_sentinel_example_in_the_configuration_doc_loads() {
    let text = yaml_example("store: redis_sentinel");
    let config = Config::parse(&text, Path::new("docs/configuration.md")).expect("parses");
    assert_eq!(
        config.quotas.store,
        portcullis::quota::QuotaStoreKind::RedisSentinel
    );
    assert_eq!(config.quotas.problems(), Vec::<String>::new());
}
