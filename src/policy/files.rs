//! Reading a policy directory and parsing its Cedar files, with every
//! problem located by file and line (Cedar's and serde's diagnostics turned
//! into `LoadError`s). Cross-file checks are `checks.rs`'s job.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet};

use super::snapshot::{
    LoadError, PolicySource, ENTITIES_FILE, ROUTES_FILE, SCHEMA_FILE, SHADOW_DIR,
};
use crate::validate::models::MODELS_FILE;
use crate::validate::schema::SCHEMAS_DIR;

/// Reads the files that make up a snapshot, keyed by relative path.
pub(super) fn read_files(dir: &Path) -> Result<BTreeMap<String, String>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError {
        file: dir.display().to_string(),
        line: None,
        message: format!("cannot read the policy directory: {e}"),
    })?;
    let mut files = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = name == SCHEMA_FILE
            || name == ENTITIES_FILE
            || name == ROUTES_FILE
            || name == MODELS_FILE
            || name == crate::quota::config::QUOTAS_FILE
            || name == crate::response_checks::RESPONSES_FILE
            || name.ends_with(".cedar");
        let kind = if name.ends_with(".cedar") {
            NameIs::Pattern
        } else {
            NameIs::Exact
        };
        if !wanted || !is_policy_file(&entry.path(), &name, kind)? {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| LoadError {
            file: name.clone(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        files.insert(name, text);
    }
    read_subdirectory(dir, SHADOW_DIR, ".cedar", &mut files)?;
    read_subdirectory(dir, SCHEMAS_DIR, ".json", &mut files)?;
    read_subdirectory(dir, crate::quota::config::QUOTAS_DIR, ".yaml", &mut files)?;
    Ok(files)
}

/// How an entry's name made it one the snapshot reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameIs {
    /// A fixed name (`routes.yaml`, `quotas.yaml`, ...).
    Exact,
    /// A name that ends as the files of its kind do (`*.cedar`, ...).
    Pattern,
}

/// True when `path`, an entry named as a policy file (`key`, relative to
/// the policy directory), is a regular file (or a link to one) to read.
/// Never silently skipped, lest a snapshot load without the rules the file
/// was meant to hold (a `quotas.yaml` that is a directory would drop every
/// quota): a directory under such a name is an error, and so is anything
/// else under a fixed name (a dangling link, a socket). A dangling link
/// named like a policy file is skipped: editors leave such links as locks
/// (Emacs's `.#platform.cedar`).
///
/// # Errors
/// `key: cannot read: it is a directory, not a file` (or the reason the
/// fixed name cannot be read).
fn is_policy_file(path: &Path, key: &str, name: NameIs) -> Result<bool, LoadError> {
    let refused = |why: String| LoadError {
        file: key.to_string(),
        line: None,
        message: format!("cannot read: {why}"),
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(true),
        Ok(meta) if meta.is_dir() => Err(refused("it is a directory, not a file".into())),
        Ok(_) if name == NameIs::Exact => Err(refused("it is not a regular file".into())),
        Err(e) if name == NameIs::Exact => Err(refused(e.to_string())),
        _ => Ok(false),
    }
}

/// True when `path` (the policy directory's `sub`) is a directory to read;
/// false when nothing is there. Anything else under the name is an error,
/// not an empty set of files.
fn is_policy_subdirectory(path: &Path, sub: &str) -> Result<bool, LoadError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(true),
        Ok(_) => Err(LoadError {
            file: sub.to_string(),
            line: None,
            message: "cannot read: it is a file, not a directory".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LoadError {
            file: sub.to_string(),
            line: None,
            message: format!("cannot read: {e}"),
        }),
    }
}

/// The files of `dir/sub` whose names end in `ext`, keyed `sub/name`
/// (a missing subdirectory has none).
fn read_subdirectory(
    dir: &Path,
    sub: &str,
    ext: &str,
    files: &mut BTreeMap<String, String>,
) -> Result<(), LoadError> {
    let path = dir.join(sub);
    if !is_policy_subdirectory(&path, sub)? {
        return Ok(());
    }
    let entries = std::fs::read_dir(&path).map_err(|e| LoadError {
        file: sub.to_string(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = format!("{sub}/{name}");
        if !name.ends_with(ext) || !is_policy_file(&entry.path(), &key, NameIs::Pattern)? {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| LoadError {
            file: key.clone(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        files.insert(key, text);
    }
    Ok(())
}

/// Parses the `*.cedar` files at the top (enforced) or under `shadow/`;
/// each policy takes its `@id` as its id.
pub(super) fn parse_policies(
    files: &BTreeMap<String, String>,
    shadow: bool,
    errors: &mut Vec<LoadError>,
) -> (PolicySet, BTreeMap<String, PolicySource>) {
    let mut set = PolicySet::new();
    let mut sources: BTreeMap<String, PolicySource> = BTreeMap::new();
    let wanted = |f: &str| f.ends_with(".cedar") && f.starts_with("shadow/") == shadow;
    for (file, text) in files.iter().filter(|(f, _)| wanted(f)) {
        let parsed = match PolicySet::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                errors.extend(diagnostic_errors(file, text, &e));
                continue;
            }
        };
        if parsed.templates().next().is_some() {
            errors.push(LoadError {
                file: file.clone(),
                line: None,
                message: "policy templates (?principal/?resource) are not supported; write static policies".into(),
            });
        }
        let id_lines = annotation_lines(text);
        let mut seen_in_file: HashMap<String, usize> = HashMap::new();
        let mut unnamed = 0;
        for policy in parsed.policies() {
            let Some(id) = policy.annotation("id").map(str::to_string) else {
                unnamed += 1;
                errors.push(LoadError {
                    file: file.clone(),
                    line: nth_policy_line(text, unnamed),
                    message:
                        "policy has no @id(\"...\") annotation; every policy needs a unique id"
                            .into(),
                });
                continue;
            };
            // The k-th policy with this id in this file sits at the k-th
            // `@id("...")` with it.
            let k = seen_in_file.entry(id.clone()).or_default();
            let line = id_lines
                .get(&id)
                .and_then(|lines| lines.get(*k))
                .copied()
                .unwrap_or(1);
            *k += 1;
            if let Some(first) = sources.get(&id) {
                errors.push(LoadError {
                    file: file.clone(),
                    line: Some(line),
                    message: format!(
                        "duplicate policy id '{id}' (first defined at {}:{})",
                        first.file, first.line
                    ),
                });
                continue;
            }
            if let Err(e) = set.add(policy.new_id(PolicyId::new(&id))) {
                errors.push(LoadError {
                    file: file.clone(),
                    line: Some(line),
                    message: e.to_string(),
                });
                continue;
            }
            sources.insert(
                id,
                PolicySource {
                    file: file.clone(),
                    line,
                },
            );
        }
    }
    (set, sources)
}

/// Lines of `@id("...")` annotations, by id, in file order.
pub(super) fn annotation_lines(text: &str) -> HashMap<String, Vec<usize>> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(pos) = rest.find("@id(") {
            rest = &rest[pos + 4..];
            let trimmed = rest.trim_start();
            if let Some(body) = trimmed.strip_prefix('"') {
                if let Some(end) = body.find('"') {
                    out.entry(body[..end].to_string())
                        .or_insert_with(Vec::new)
                        .push(i + 1);
                }
            }
        }
    }
    out
}

/// Best-effort line of the n-th policy (1-based) without an id: the n-th
/// line starting with `permit` or `forbid`.
pub(super) fn nth_policy_line(text: &str, n: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            l.starts_with("permit") || l.starts_with("forbid")
        })
        .nth(n - 1)
        .map(|(i, _)| i + 1)
}

/// Turns a miette diagnostic (Cedar's parse and schema errors) into errors
/// with line numbers taken from its labels.
pub(super) fn diagnostic_errors(
    file: &str,
    text: &str,
    diag: &dyn miette::Diagnostic,
) -> Vec<LoadError> {
    let mut out = Vec::new();
    // A diagnostic may bundle several (ParseErrors does).
    if let Some(related) = diag.related() {
        for d in related {
            out.extend(diagnostic_errors(file, text, d));
        }
        if !out.is_empty() {
            return out;
        }
    }
    let line = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| line_of_offset(text, label.offset()));
    out.push(LoadError {
        file: file.to_string(),
        line,
        message: format!("{diag}{}", miette_help(diag)),
    });
    out
}

/// An error with its causes, `outer: inner: innermost`.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The line of the first entity uid (`Type::"id"`) an error message names.
pub(super) fn entity_line(text: &str, message: &str) -> Option<usize> {
    let start = message.find("::\"")?;
    let rest = &message[start + 3..];
    let id = &rest[..rest.find('"')?];
    let needle = format!("\"id\": \"{id}\"");
    let compact = format!("\"id\":\"{id}\"");
    text.find(&needle)
        .or_else(|| text.find(&compact))
        .map(|offset| line_of_offset(text, offset))
}

pub(super) fn miette_help(diag: &dyn miette::Diagnostic) -> String {
    diag.help()
        .map(|h| format!(" (hint: {h})"))
        .unwrap_or_default()
}

pub(super) fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of a JSON syntax error, if the text is not valid JSON.
pub(super) fn json_error_line(text: &str) -> Option<usize> {
    serde_json::from_str::<serde_json::Value>(text)
        .err()
        .map(|e| e.line())
}
