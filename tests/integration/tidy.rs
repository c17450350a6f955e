//! Keeps the architecture from drifting back (docs/architecture.md): every
//! top-level module of `src/` sits in one layer and imports only its own
//! layer or those below it, with no import circle; every source file opens
//! with a `//!` line saying its job and stays under 600 lines outside its
//! tests. A new top-level module must be placed in [`LAYERS`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first: a module may import its own layer and those
/// below, never one above.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "request",
            "decision",
            "time",
            "json",
            "yaml",
            "metrics",
            "tracecontext",
            "otlp",
            "shared_redis",
            "proto",
        ],
    ),
    (
        "stages",
        &[
            "routes",
            "authn",
            "authz",
            "validate",
            "quota",
            "residency",
            "response_checks",
            "anomaly",
            "audit",
        ],
    ),
    ("policy", &["policy"]),
    ("pipeline", &["pipeline"]),
    ("app", &["app", "config"]),
    ("adapters", &["adapters"]),
    ("server", &["server"]),
    ("cli", &["cli"]),
];

/// Longest a source file may be outside its `#[cfg(test)] mod tests`.
const MAX_LINES: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for the crate roots and
/// binaries, which sit above every module).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main" | "bin")).then_some(name)
}

/// The file without its unit tests (which may reach anywhere).
fn body(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i])
}

/// Top-level modules named by `crate::x` paths, `crate::{x, y}` groups
/// included. Comments are skipped.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

struct Crate {
    /// File (relative to src/) -> its module, non-test line count, text.
    files: Vec<(PathBuf, Option<String>, usize, String)>,
}

fn read_crate() -> Crate {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    paths.sort();
    let files = paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let rel = p.strip_prefix(src()).unwrap().to_path_buf();
            let lines = body(&text).lines().count();
            (rel.clone(), module_of(&rel), lines, text)
        })
        .collect();
    Crate { files }
}

#[test]
fn every_top_level_module_has_a_layer() {
    let unplaced: BTreeSet<_> = read_crate()
        .files
        .iter()
        .filter_map(|(_, m, _, _)| m.clone())
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "place these modules in a layer in tests/integration/tidy.rs and docs/architecture.md: {unplaced:?}"
    );
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let mut upward = Vec::new();
    for (rel, module, _, text) in &read_crate().files {
        let Some(module) = module else { continue };
        let Some(mine) = layer_of(module) else {
            continue;
        };
        for used in imports(body(text)) {
            if let Some(theirs) = layer_of(&used) {
                if theirs > mine {
                    upward.push(format!(
                        "{}: {module} ({}) imports {used} ({})",
                        rel.display(),
                        LAYERS[mine].0,
                        LAYERS[theirs].0
                    ));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up a layer:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, module, _, text) in &read_crate().files {
        let Some(module) = module else { continue };
        let entry = edges.entry(module.clone()).or_default();
        for used in imports(body(text)) {
            if &used != module && layer_of(&used).is_some() {
                entry.insert(used);
            }
        }
    }
    // A module is on a circle when it reaches itself.
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = edges.get(from).into_iter().flatten().cloned().collect();
        while let Some(m) = stack.pop() {
            if seen.insert(m.clone()) {
                stack.extend(edges.get(&m).into_iter().flatten().cloned());
            }
        }
        seen
    };
    let circular: Vec<_> = edges
        .keys()
        .filter(|m| reaches(m).contains(*m))
        .cloned()
        .collect();
    assert!(
        circular.is_empty(),
        "modules on an import circle: {circular:?}"
    );
}

#[test]
fn source_files_stay_small_and_say_their_job() {
    let mut problems = Vec::new();
    for (rel, _, lines, text) in &read_crate().files {
        if *lines > MAX_LINES {
            problems.push(format!(
                "{}: {lines} lines outside its tests (at most {MAX_LINES}): split it by job",
                rel.display()
            ));
        }
        if !text.trim_start().starts_with("//!") {
            problems.push(format!(
                "{}: open with a `//!` line saying the file's one job",
                rel.display()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_import_reader_sees_paths_and_groups_but_not_comments() {
    let found = imports("use crate::{a, b::c};\nlet x = crate::d::e(); // crate::f\n");
    assert_eq!(
        found,
        ["a", "b", "d"].map(String::from).into_iter().collect()
    );
}
