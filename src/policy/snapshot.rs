//! The policy directory, loaded and fully validated into one immutable
//! `Snapshot`. Loading reports every problem at once, each with file and
//! line; it never half-publishes. Swapping snapshots is `reload`'s job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{
    Context, Entities, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request, Schema,
    ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

use crate::routes::{Authentication, RouteTable};
use crate::validate::models::{Registry, MODELS_FILE, MODEL_TYPE, MODEL_VERSION_TYPE};
use crate::validate::schema::{self, Schemas, SCHEMAS_DIR};

/// The entity type of callers without credentials on routes that allow them.
pub const ANONYMOUS_TYPE: &str = "Anonymous";

/// Where a policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    /// File, relative to the policy directory.
    pub file: String,
    /// 1-based line of the policy's `@id` annotation.
    pub line: usize,
}

/// Everything that decides, loaded and validated together.
#[derive(Debug)]
pub struct Snapshot {
    /// Git commit (with a dirty suffix) or content hash.
    pub version: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// The directory it came from.
    pub directory: PathBuf,
    /// The files that make it up, relative to `directory`.
    pub files: Vec<String>,
    /// The Cedar schema.
    pub schema: Schema,
    /// The enforced Cedar policies, each with its `@id` as policy id.
    pub policies: PolicySet,
    /// Where each policy is defined.
    pub sources: BTreeMap<String, PolicySource>,
    /// With shadow policies (`shadow/*.cedar`): the enforced policies plus
    /// the shadow ones, evaluated next to the enforced set and never
    /// enforced. `None` when there are no shadow policies.
    pub shadow: Option<PolicySet>,
    /// Where each shadow policy is defined.
    pub shadow_sources: BTreeMap<String, PolicySource>,
    /// Static entities from `entities.json`.
    pub entities: Entities,
    /// The route table.
    pub routes: RouteTable,
    /// SHA-256 (hex) of each file, to tell which files a reload changed.
    pub file_hashes: BTreeMap<String, String>,
    /// Quota limits and in-Check quota rules (`quotas.yaml`, `quotas/*.yaml`).
    pub quotas: crate::quota::QuotaConfig,
    /// The policy sets indexed for evaluation, and per-identity entity
    /// stores (built once per snapshot; see `authz`).
    pub prepared: crate::authz::Prepared,
    /// Actions whose schema context declares `risk` (the anomaly score):
    /// only their requests carry `context.risk`, so schemas written before
    /// it existed keep loading and deciding unchanged.
    pub risk_actions: std::collections::HashSet<String>,
    /// The model registry (`models.yaml`); empty without one.
    pub models: Registry,
    /// Body schemas (`schemas/*.json`), compiled, by file name.
    pub schemas: Schemas,
    /// Routes whose Cedar context type declares `region` (the gateway's
    /// region goes into their context).
    pub region_routes: HashSet<String>,
    /// Orgs that restrict the regions their data is processed in.
    pub org_regions: crate::residency::OrgRegions,
}

/// One problem in a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file, relative to the directory (or the directory itself).
    pub file: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// All the problems found in a policy directory.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy directory {} is invalid ({} problem(s)):\n  {}", directory.display(), errors.len(), errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
pub struct LoadErrors {
    /// The directory.
    pub directory: PathBuf,
    /// Every problem, in file order.
    pub errors: Vec<LoadError>,
}

const SCHEMA_FILE: &str = "schema.cedarschema";
const ENTITIES_FILE: &str = "entities.json";
const ROUTES_FILE: &str = "routes.yaml";
/// Policies evaluated next to the enforced set and never enforced.
const SHADOW_DIR: &str = "shadow";

impl Snapshot {
    /// What authorization reads of this snapshot.
    pub fn authz(&self) -> crate::authz::Policies<'_> {
        crate::authz::Policies {
            schema: &self.schema,
            entities: &self.entities,
            prepared: &self.prepared,
            shadow: self.shadow.is_some(),
        }
    }
    /// Loads and validates a policy directory.
    pub fn load(dir: &Path) -> Result<Snapshot, LoadErrors> {
        Self::load_versioned(dir, None)
    }

    /// Loads a directory whose version is known from elsewhere (a git
    /// revision materialised into a temporary directory).
    pub fn load_versioned(dir: &Path, version: Option<String>) -> Result<Snapshot, LoadErrors> {
        let mut errors = Vec::new();
        let fail = |errors: Vec<LoadError>| LoadErrors {
            directory: dir.to_path_buf(),
            errors,
        };
        let files = read_files(dir).map_err(|e| fail(vec![e]))?;

        let schema = match files.get(SCHEMA_FILE) {
            None => {
                errors.push(LoadError {
                    file: SCHEMA_FILE.into(),
                    line: None,
                    message: "missing: the policy directory needs a Cedar schema".into(),
                });
                None
            }
            Some(text) => match Schema::from_cedarschema_str(text) {
                Ok((schema, warnings)) => {
                    for w in warnings {
                        tracing::warn!(file = SCHEMA_FILE, warning = %w, "schema warning");
                    }
                    Some(schema)
                }
                Err(e) => {
                    errors.extend(diagnostic_errors(SCHEMA_FILE, text, &e));
                    None
                }
            },
        };

        let (policies, sources) = parse_policies(&files, false, &mut errors);
        let (shadow, shadow_sources) = parse_policies(&files, true, &mut errors);
        // The candidate set is what enforcement would be with the shadow
        // policies switched on.
        let mut candidate = policies.clone();
        for policy in shadow.policies() {
            let id = policy.id().to_string();
            let source = &shadow_sources[&id];
            if let Some(enforced) = sources.get(&id) {
                errors.push(LoadError {
                    file: source.file.clone(),
                    line: Some(source.line),
                    message: format!(
                        "shadow policy id '{id}' is also an enforced policy ({}:{}); give the shadow version its own id",
                        enforced.file, enforced.line
                    ),
                });
            } else if let Err(e) = candidate.add(policy.clone()) {
                errors.push(LoadError {
                    file: source.file.clone(),
                    line: Some(source.line),
                    message: e.to_string(),
                });
            }
        }

        let routes = match files.get(ROUTES_FILE) {
            None => {
                errors.push(LoadError {
                    file: ROUTES_FILE.into(),
                    line: None,
                    message: "missing: the policy directory needs a route table".into(),
                });
                None
            }
            Some(text) => match RouteTable::parse(text, Path::new(ROUTES_FILE)) {
                Ok(t) => Some(t),
                Err(errs) => {
                    errors.extend(errs.into_iter().map(|e| LoadError {
                        file: ROUTES_FILE.into(),
                        line: Some(e.line),
                        message: e.message,
                    }));
                    None
                }
            },
        };

        let Some(schema) = schema else {
            return Err(fail(errors));
        };

        // Everything below checks against the schema.
        let validator = Validator::new(schema.clone());
        // Validating the candidate set covers enforced and shadow policies.
        let result = validator.validate(&candidate, ValidationMode::Strict);
        for e in result.validation_errors() {
            let id = e.policy_id().to_string();
            let (file, line) = sources
                .get(&id)
                .or_else(|| shadow_sources.get(&id))
                .map(|s| (s.file.clone(), Some(s.line)))
                .unwrap_or_else(|| ("?".into(), None));
            errors.push(LoadError {
                file,
                line,
                message: format!("policy '{id}' does not match the schema: {e}"),
            });
        }
        for w in result.validation_warnings() {
            tracing::warn!(policy = %w.policy_id(), warning = %w, "policy validation warning");
        }

        let entities = match files.get(ENTITIES_FILE) {
            None => Entities::empty(),
            Some(text) => match Entities::from_json_str(text, Some(&schema)) {
                Ok(e) => e,
                Err(e) => {
                    let message = error_chain(&e);
                    errors.push(LoadError {
                        file: ENTITIES_FILE.into(),
                        line: json_error_line(text).or_else(|| entity_line(text, &message)),
                        message: format!("{message}{}", miette_help(&e)),
                    });
                    Entities::empty()
                }
            },
        };

        let mut risk_actions = HashSet::new();
        let models = match files.get(MODELS_FILE) {
            None => Registry::default(),
            Some(text) => match Registry::parse(text) {
                Ok(r) => r,
                Err(errs) => {
                    errors.extend(errs.into_iter().map(|e| LoadError {
                        file: MODELS_FILE.into(),
                        line: e.line,
                        message: e.message,
                    }));
                    Registry::default()
                }
            },
        };
        let entities = with_registry(entities, &models, &schema, &files, &mut errors);
        let schemas = compile_schemas(&files, &mut errors);

        let mut region_routes = HashSet::new();
        if let Some(routes) = &routes {
            region_routes = check_routes_against_schema(
                routes,
                &schema,
                &files[ROUTES_FILE],
                &mut errors,
                &mut risk_actions,
            );
            check_route_references(routes, &schemas, &models, &files[ROUTES_FILE], &mut errors);
        }

        let quota_files = files
            .iter()
            .filter(|(f, _)| crate::quota::config::is_quota_file(f));
        let quotas = match crate::quota::QuotaConfig::parse(
            quota_files.map(|(f, t)| (f.as_str(), t.as_str())),
        ) {
            Ok(q) => q,
            Err(errs) => {
                errors.extend(errs.into_iter().map(|e| LoadError {
                    file: e.file,
                    line: e.line,
                    message: e.message,
                }));
                crate::quota::QuotaConfig::default()
            }
        };

        if !errors.is_empty() {
            return Err(fail(errors));
        }
        let routes = routes.expect("routes parsed when there are no errors");
        let shadow = (!shadow_sources.is_empty()).then_some(candidate);
        let prepared = crate::authz::Prepared::new(&policies, shadow.as_ref(), &entities);
        Ok(Snapshot {
            version: version.unwrap_or_else(|| version_of(dir, &files)),
            loaded_at: SystemTime::now(),
            directory: dir.to_path_buf(),
            files: files.keys().cloned().collect(),
            schema,
            policies,
            sources,
            shadow,
            shadow_sources,
            routes,
            file_hashes: files
                .iter()
                .map(|(name, text)| (name.clone(), hex::encode(Sha256::digest(text.as_bytes()))))
                .collect(),
            quotas,
            prepared,
            risk_actions,
            models,
            schemas,
            region_routes,
            org_regions: crate::residency::org_regions(&entities),
            entities,
        })
    }

    /// Files added, removed or changed between `older` and this snapshot.
    pub fn files_changed_since(&self, older: &Snapshot) -> Vec<String> {
        let mut names: Vec<String> = self
            .file_hashes
            .keys()
            .chain(older.file_hashes.keys())
            .filter(|n| self.file_hashes.get(*n) != older.file_hashes.get(*n))
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Number of enforced policies.
    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }
}

/// Reads the files that make up a snapshot, keyed by relative path.
fn read_files(dir: &Path) -> Result<BTreeMap<String, String>, LoadError> {
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
            || name.ends_with(".cedar");
        if !wanted || !entry.path().is_file() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| LoadError {
            file: name.clone(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        files.insert(name, text);
    }
    let shadow = dir.join(SHADOW_DIR);
    if shadow.is_dir() {
        for entry in std::fs::read_dir(&shadow).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".cedar") || !entry.path().is_file() {
                continue;
            }
            let key = format!("{SHADOW_DIR}/{name}");
            let text = std::fs::read_to_string(entry.path()).map_err(|e| LoadError {
                file: key.clone(),
                line: None,
                message: format!("cannot read: {e}"),
            })?;
            files.insert(key, text);
        }
    }
    let schemas = dir.join(SCHEMAS_DIR);
    if schemas.is_dir() {
        for entry in std::fs::read_dir(&schemas).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") || !entry.path().is_file() {
                continue;
            }
            let key = format!("{SCHEMAS_DIR}/{name}");
            let text = std::fs::read_to_string(entry.path()).map_err(|e| LoadError {
                file: key.clone(),
                line: None,
                message: format!("cannot read: {e}"),
            })?;
            files.insert(key, text);
        }
    }
    crate::quota::config::read_domain_files(dir, &mut files).map_err(|e| LoadError {
        file: e.file,
        line: None,
        message: format!("cannot read: {}", e.source),
    })?;
    Ok(files)
}

/// Parses the `*.cedar` files at the top (enforced) or under `shadow/`;
/// each policy takes its `@id` as its id.
fn parse_policies(
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
fn annotation_lines(text: &str) -> HashMap<String, Vec<usize>> {
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
fn nth_policy_line(text: &str, n: usize) -> Option<usize> {
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
fn diagnostic_errors(file: &str, text: &str, diag: &dyn miette::Diagnostic) -> Vec<LoadError> {
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
fn error_chain(e: &dyn std::error::Error) -> String {
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
fn entity_line(text: &str, message: &str) -> Option<usize> {
    let start = message.find("::\"")?;
    let rest = &message[start + 3..];
    let id = &rest[..rest.find('"')?];
    let needle = format!("\"id\": \"{id}\"");
    let compact = format!("\"id\":\"{id}\"");
    text.find(&needle)
        .or_else(|| text.find(&compact))
        .map(|offset| line_of_offset(text, offset))
}

fn miette_help(diag: &dyn miette::Diagnostic) -> String {
    diag.help()
        .map(|h| format!(" (hint: {h})"))
        .unwrap_or_default()
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of a JSON syntax error, if the text is not valid JSON.
fn json_error_line(text: &str) -> Option<usize> {
    serde_json::from_str::<serde_json::Value>(text)
        .err()
        .map(|e| e.line())
}

/// Checks every route against the schema by building the Cedar request the
/// route will produce: the action exists, applies to the route's resource
/// type, the declared headers fit the context type, and routes that allow
/// anonymous callers name an action that `Anonymous` may take.
fn check_routes_against_schema(
    routes: &RouteTable,
    schema: &Schema,
    text: &str,
    errors: &mut Vec<LoadError>,
    risk_actions: &mut HashSet<String>,
) -> HashSet<String> {
    let mut region_routes = HashSet::new();
    for (index, route) in routes.routes().iter().enumerate() {
        let mut err = |message: String| {
            errors.push(LoadError {
                file: ROUTES_FILE.into(),
                line: Some(crate::routes::route_line(text, index, None)),
                message: format!("route '{}': {message}", route.name),
            })
        };
        let action = action_uid(&route.action);
        let Some(principals) = schema.principals_for_action(&action) else {
            err(format!(
                "action '{}' is not declared in {SCHEMA_FILE}",
                route.action
            ));
            continue;
        };
        let principals: Vec<EntityTypeName> = principals.cloned().collect();
        let resource_type = match EntityTypeName::from_str(&route.resource_type) {
            Ok(t) => t,
            Err(e) => {
                err(format!("resource type '{}': {e}", route.resource_type));
                continue;
            }
        };
        let resources: Vec<_> = schema
            .resources_for_action(&action)
            .map(|r| r.cloned().collect())
            .unwrap_or_default();
        if !resources.contains(&resource_type) {
            err(format!(
                "action '{}' does not apply to resource type '{}' (it applies to: {})",
                route.action,
                route.resource_type,
                join(&resources)
            ));
            continue;
        }
        if route.authentication == Authentication::Optional
            && !principals.iter().any(|p| p.to_string() == ANONYMOUS_TYPE)
        {
            err(format!(
                "authentication is optional but action '{}' does not apply to principal type '{ANONYMOUS_TYPE}'; add it to the action's principal types in {SCHEMA_FILE} or make authentication required",
                route.action
            ));
            continue;
        }
        let Some(principal_type) = principals.first() else {
            err(format!(
                "action '{}' applies to no principal type",
                route.action
            ));
            continue;
        };
        let sample = crate::authz::RequestContext::sample(route);
        let principal =
            EntityUid::from_type_name_and_id(principal_type.clone(), EntityId::new("sample"));
        let resource = EntityUid::from_type_name_and_id(resource_type, EntityId::new("sample"));
        // With `risk` when the schema's context declares it, else without.
        let mut with_risk = sample.clone();
        with_risk["risk"] = serde_json::json!(0);
        let (sample, with_risk_error) =
            match Context::from_json_value(with_risk.clone(), Some((schema, &action))) {
                Ok(_) => {
                    risk_actions.insert(route.action.clone());
                    (with_risk, None)
                }
                Err(e) => (sample, Some(e.to_string())),
            };
        // The gateway's region goes into the context of routes whose
        // context type declares it (`region?: String`).
        let mut with_region = sample.clone();
        with_region["region"] = serde_json::json!("sample");
        let accepts_region = Context::from_json_value(with_region, Some((schema, &action)))
            .ok()
            .is_some_and(|c| {
                Request::new(
                    principal.clone(),
                    action.clone(),
                    resource.clone(),
                    c,
                    Some(schema),
                )
                .is_ok()
            });
        if accepts_region {
            region_routes.insert(route.name.clone());
        }
        let context = match Context::from_json_value(sample, Some((schema, &action))) {
            Ok(c) => c,
            Err(e) => {
                // Report the attempt that got furthest: the one with `risk`,
                // unless `risk` itself is what the schema lacks.
                let e = match with_risk_error {
                    Some(w) if !w.contains("`risk`") => w,
                    _ => e.to_string(),
                };
                err(format!(
                    "the request context this route produces does not match the schema's context for action '{}': {e}",
                    route.action
                ));
                continue;
            }
        };
        if let Err(e) = Request::new(principal, action, resource, context, Some(schema)) {
            err(format!(
                "the Cedar request this route produces is invalid: {e}"
            ));
        }
    }
    region_routes
}

/// Adds the registry's `Model` and `ModelVersion` entities to those of
/// entities.json. With a registry, entities.json may not define models:
/// the registry is the one source of their attributes.
fn with_registry(
    entities: Entities,
    models: &Registry,
    schema: &Schema,
    files: &BTreeMap<String, String>,
    errors: &mut Vec<LoadError>,
) -> Entities {
    if models.is_empty() {
        return entities;
    }
    for e in entities.iter() {
        let t = e.uid().type_name().basename().to_string();
        if t == MODEL_TYPE || t == MODEL_VERSION_TYPE {
            let text = files.get(ENTITIES_FILE).map(String::as_str).unwrap_or("");
            errors.push(LoadError {
                file: ENTITIES_FILE.into(),
                line: entity_line(text, &e.uid().to_string()),
                message: format!(
                    "{} is defined here and models.yaml defines models: the registry is the one source of models and versions; remove it from {ENTITIES_FILE}",
                    e.uid()
                ),
            });
        }
    }
    let registry = serde_json::Value::Array(models.entities());
    let parsed = entities
        .clone()
        .add_entities_from_json_value(registry, Some(schema));
    match parsed {
        Ok(merged) => merged,
        Err(e) => {
            errors.push(LoadError {
                file: MODELS_FILE.into(),
                line: None,
                message: format!(
                    "the models do not fit the Cedar schema's Model/ModelVersion types ({}): {}",
                    SCHEMA_FILE,
                    error_chain(&e)
                ),
            });
            entities
        }
    }
}

/// Compiles every `schemas/*.json`; a broken one fails the snapshot.
fn compile_schemas(files: &BTreeMap<String, String>, errors: &mut Vec<LoadError>) -> Schemas {
    let mut out = Schemas::new();
    let prefix = format!("{SCHEMAS_DIR}/");
    for (file, text) in files.iter().filter(|(f, _)| f.starts_with(&prefix)) {
        match schema::compile(text) {
            Ok(compiled) => {
                out.insert(file[prefix.len()..].to_string(), compiled);
            }
            Err((line, message)) => errors.push(LoadError {
                file: file.clone(),
                line,
                message,
            }),
        }
    }
    out
}

/// Every schema a route names exists, and routes naming models have a
/// registry.
fn check_route_references(
    routes: &RouteTable,
    schemas: &Schemas,
    models: &Registry,
    text: &str,
    errors: &mut Vec<LoadError>,
) {
    for (index, route) in routes.routes().iter().enumerate() {
        let at = |field| Some(crate::routes::route_line(text, index, Some(field)));
        if let Some(name) = route.body.as_ref().and_then(|b| b.schema.as_ref()) {
            if !schemas.contains_key(name) {
                let known: Vec<&str> = schemas.keys().map(String::as_str).collect();
                errors.push(LoadError {
                    file: ROUTES_FILE.into(),
                    line: at("body.schema"),
                    message: format!(
                        "route '{}': schema '{name}' is not in {SCHEMAS_DIR}/ ({})",
                        route.name,
                        if known.is_empty() {
                            "it has no schemas".to_string()
                        } else {
                            format!("schemas: {}", known.join(", "))
                        }
                    ),
                });
            }
        }
        if route.model.is_some() && models.is_empty() {
            errors.push(LoadError {
                file: ROUTES_FILE.into(),
                line: at("model"),
                message: format!(
                    "route '{}' names a model but the policy directory has no {MODELS_FILE} (or it lists no models)",
                    route.name
                ),
            });
        }
    }
}

/// A claim the configuration copies into `context.token.claims`, which the
/// schema must declare (as a String) for every route's action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextClaim {
    /// The config field that names it, e.g. `authentication.jwt[0].context_claims`.
    pub field: String,
    /// The claim.
    pub claim: String,
}

impl ContextClaim {
    /// Every claim the authentication config copies into the context.
    pub fn configured(config: &crate::authn::config::AuthnConfig) -> Vec<ContextClaim> {
        config
            .jwt
            .iter()
            .enumerate()
            .flat_map(|(i, issuer)| {
                issuer.context_claims.iter().map(move |claim| ContextClaim {
                    field: format!("authentication.jwt[{i}].context_claims"),
                    claim: claim.clone(),
                })
            })
            .collect()
    }
}

impl Snapshot {
    /// Checks that the schema lets every route's Cedar context carry each
    /// configured claim: without that, every request with such a token
    /// would be denied as not matching the schema. One problem per claim
    /// (naming the first route that cannot carry it).
    pub fn check_context_claims(&self, claims: &[ContextClaim]) -> Vec<LoadError> {
        let mut problems = Vec::new();
        'claims: for c in claims {
            for route in self.routes.routes() {
                let action = action_uid(&route.action);
                let mut sample =
                    crate::authz::RequestContext::sample_with_claims(route, &[&c.claim]);
                // As requests do: `risk` for actions whose schema declares it.
                if self.risk_actions.contains(&route.action) {
                    sample["risk"] = serde_json::json!(0);
                }
                let fits = Context::from_json_value(sample, Some((&self.schema, &action)))
                    .map_err(|e| e.to_string())
                    .and_then(|context| {
                        let principal = self
                            .schema
                            .principals_for_action(&action)
                            .and_then(|mut p| p.next().cloned())
                            .ok_or_else(|| "no principal type".to_string())?;
                        let resource = EntityTypeName::from_str(&route.resource_type)
                            .map_err(|e| e.to_string())?;
                        Request::new(
                            EntityUid::from_type_name_and_id(principal, EntityId::new("sample")),
                            action.clone(),
                            EntityUid::from_type_name_and_id(resource, EntityId::new("sample")),
                            context,
                            Some(&self.schema),
                        )
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                    });
                if let Err(cedar) = fits {
                    problems.push(LoadError {
                        file: SCHEMA_FILE.into(),
                        line: None,
                        message: format!(
                            "{}: claim '{}' is copied into context.token.claims, but the context of action '{}' (route '{}') cannot carry it; declare `\"{}\"?: String` in the schema's token.claims record, or remove the claim from {} ({cedar})",
                            c.field, c.claim, route.action, route.name, c.claim, c.field
                        ),
                    });
                    continue 'claims;
                }
            }
        }
        problems
    }
}

fn join(types: &[EntityTypeName]) -> String {
    if types.is_empty() {
        return "nothing".into();
    }
    types
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub use crate::authz::action_uid;

/// The snapshot's version: the git commit of the directory when it is in a
/// git checkout (with `-dirty.<hash>` when the files differ from the
/// commit), otherwise `sha256:<hash>` of the files.
fn version_of(dir: &Path, files: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (name, text) in files {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    let hash = hex::encode(hasher.finalize());
    let short = &hash[..12];
    match git_commit(dir) {
        Some((commit, false)) => commit,
        Some((commit, true)) => format!("{commit}-dirty.{short}"),
        None => format!("sha256:{short}"),
    }
}

/// `(short commit, dirty)` for a directory inside a git checkout.
fn git_commit(dir: &Path) -> Option<(String, bool)> {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "--short=12", "HEAD"])?;
    if commit.is_empty() {
        return None;
    }
    // Policy tests (tests/) are not part of the snapshot.
    let status = run(&["status", "--porcelain", "--", ".", ":(exclude)tests"])?;
    Some((commit, !status.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")
    }

    fn copy_bundled(to: &Path) {
        for entry in std::fs::read_dir(bundled()).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
        let schemas = to.join(SCHEMAS_DIR);
        std::fs::create_dir_all(&schemas).unwrap();
        for entry in std::fs::read_dir(bundled().join(SCHEMAS_DIR)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, schemas.join(path.file_name().unwrap())).unwrap();
        }
    }

    fn errors_of(dir: &Path) -> Vec<String> {
        Snapshot::load(dir)
            .unwrap_err()
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn policies_take_their_id_annotation_and_source_line() {
        let s = Snapshot::load(&bundled()).unwrap();
        let src = &s.sources["no-retired-versions"];
        assert_eq!(src.file, "models.cedar");
        let text = std::fs::read_to_string(bundled().join("models.cedar")).unwrap();
        assert!(text
            .lines()
            .nth(src.line - 1)
            .unwrap()
            .contains("@id(\"no-retired-versions\")"));
    }

    #[test]
    fn missing_required_files_are_each_reported() {
        let dir = tempfile::tempdir().unwrap();
        let errs = errors_of(dir.path());
        assert!(
            errs.iter()
                .any(|e| e.starts_with("schema.cedarschema: missing")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("routes.yaml: missing")),
            "{errs:?}"
        );
    }

    #[test]
    fn duplicate_ids_across_files_point_at_both() {
        let dir = tempfile::tempdir().unwrap();
        copy_bundled(dir.path());
        std::fs::write(
            dir.path().join("zz.cedar"),
            "\n@id(\"public-status\")\npermit (principal, action, resource);\n",
        )
        .unwrap();
        let errs = errors_of(dir.path());
        assert!(
            errs.iter().any(|e| e.starts_with(
                "zz.cedar:2: duplicate policy id 'public-status' (first defined at platform.cedar:"
            )),
            "{errs:?}"
        );
    }

    #[test]
    fn templates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        copy_bundled(dir.path());
        std::fs::write(
            dir.path().join("t.cedar"),
            "@id(\"t\")\npermit (principal == ?principal, action, resource);\n",
        )
        .unwrap();
        let errs = errors_of(dir.path());
        assert!(errs.iter().any(|e| e.contains("templates")), "{errs:?}");
    }

    #[test]
    fn entity_not_matching_the_schema_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        copy_bundled(dir.path());
        let text = std::fs::read_to_string(dir.path().join(ENTITIES_FILE)).unwrap();
        std::fs::write(
            dir.path().join(ENTITIES_FILE),
            text.replace(
                "\"allowed_regions\": [\"eu-west-1\", \"eu-central-1\"]",
                "\"allowed_regions\": \"eu-west-1\"",
            ),
        )
        .unwrap();
        let errs = errors_of(dir.path());
        assert!(
            errs.iter()
                .any(|e| e.starts_with("entities.json") && e.contains("allowed_regions")),
            "{errs:?}"
        );
    }

    #[test]
    fn a_broken_body_schema_fails_the_snapshot_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        copy_bundled(dir.path());
        std::fs::write(
            dir.path().join("schemas/feedback.json"),
            "{\n  \"type\": \"object\",\n  \"properties\": { \"rating\": { \"type\": \"integr\" } }\n}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("schemas/broken.json"), "{\n  \"type\": \n").unwrap();
        let errs = errors_of(dir.path());
        assert!(
            errs.iter()
                .any(|e| e.starts_with("schemas/feedback.json: does not compile")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("schemas/broken.json:3: not valid JSON")),
            "{errs:?}"
        );
    }

    #[test]
    fn a_route_naming_a_missing_schema_fails_the_snapshot_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        copy_bundled(dir.path());
        std::fs::remove_file(dir.path().join("schemas/feedback.json")).unwrap();
        let routes = std::fs::read_to_string(dir.path().join(ROUTES_FILE)).unwrap();
        let line = routes
            .lines()
            .position(|l| l.contains("schema: feedback.json"))
            .unwrap()
            + 1;
        let errs = errors_of(dir.path());
        assert_eq!(
            errs,
            [format!("routes.yaml:{line}: route 'feedback': schema 'feedback.json' is not in schemas/ (schemas: predict.json)")]
        );
    }

    #[test]
    fn models_come_from_the_registry_only() {
        let dir = tempfile::tempdir().unwrap();
        copy_bundled(dir.path());
        let text = std::fs::read_to_string(dir.path().join(ENTITIES_FILE)).unwrap();
        std::fs::write(
            dir.path().join(ENTITIES_FILE),
            text.replacen(
                "[\n",
                "[\n  { \"uid\": { \"type\": \"Model\", \"id\": \"sentiment\" }, \"attrs\": { \"owner\": { \"type\": \"Org\", \"id\": \"acme\" }, \"sensitivity\": \"public\" }, \"parents\": [] },\n",
                1,
            ),
        )
        .unwrap();
        let errs = errors_of(dir.path());
        assert!(
            errs.iter().any(|e| e.starts_with("entities.json:2: Model::\"sentiment\" is defined here and models.yaml defines models")),
            "{errs:?}"
        );
    }

    #[test]
    fn the_registry_feeds_the_model_entities() {
        let s = Snapshot::load(&bundled()).unwrap();
        let uid: EntityUid = r#"ModelVersion::"sentiment/v1""#.parse().unwrap();
        let v1 = s.entities.get(&uid).expect("sentiment/v1 from models.yaml");
        assert_eq!(
            v1.attr("deprecated").unwrap().unwrap(),
            cedar_policy::EvalResult::Bool(true)
        );
        assert!(v1.attr("sunset").is_some());
        let uid: EntityUid = r#"Model::"fraud-detector""#.parse().unwrap();
        assert_eq!(
            s.entities
                .get(&uid)
                .unwrap()
                .attr("sensitivity")
                .unwrap()
                .unwrap(),
            cedar_policy::EvalResult::String("restricted".into())
        );
    }

    #[test]
    fn a_broken_registry_fails_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        copy_bundled(dir.path());
        let text = std::fs::read_to_string(dir.path().join(MODELS_FILE)).unwrap();
        std::fs::write(
            dir.path().join(MODELS_FILE),
            text.replace("aliases: { latest: v3 }", "aliases: { latest: v4 }"),
        )
        .unwrap();
        let line = text.lines().position(|l| l.contains("latest: v3")).unwrap() + 1;
        let errs = errors_of(dir.path());
        assert!(
            errs.iter().any(|e| e.starts_with(&format!(
                "models.yaml:{line}: model 'fraud-detector': alias 'latest' points to version 'v4'"
            ))),
            "{errs:?}"
        );
    }

    #[test]
    fn optional_auth_route_needs_an_action_anonymous_may_take() {
        let dir = tempfile::tempdir().unwrap();
        copy_bundled(dir.path());
        let text = std::fs::read_to_string(dir.path().join(ROUTES_FILE)).unwrap();
        std::fs::write(
            dir.path().join(ROUTES_FILE),
            text.replace(
                "    resource: { type: AuditLog, id: main }\n",
                "    resource: { type: AuditLog, id: main }\n    authentication: optional\n",
            ),
        )
        .unwrap();
        let errs = errors_of(dir.path());
        assert!(
            errs.iter().any(|e| e.starts_with("routes.yaml:")
                && e.contains("'read-audit'")
                && e.contains("Anonymous")),
            "{errs:?}"
        );
    }

    #[test]
    fn undeclared_context_header_is_a_route_error() {
        let dir = tempfile::tempdir().unwrap();
        copy_bundled(dir.path());
        let text = std::fs::read_to_string(dir.path().join(ROUTES_FILE)).unwrap();
        std::fs::write(
            dir.path().join(ROUTES_FILE),
            text.replace("[x-client-region]", "[x-client-region, x-tenant]"),
        )
        .unwrap();
        let errs = errors_of(dir.path());
        assert!(
            errs.iter()
                .any(|e| e.contains("'predict'") && e.contains("context")),
            "{errs:?}"
        );
    }

    #[test]
    fn version_is_a_content_hash_outside_git_and_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        copy_bundled(dir.path());
        let v1 = Snapshot::load(dir.path()).unwrap().version;
        assert!(v1.starts_with("sha256:") && v1.len() == 19, "{v1}");
        assert_eq!(Snapshot::load(dir.path()).unwrap().version, v1, "stable");
        std::fs::write(dir.path().join("platform.cedar"), "// emptied\n").unwrap();
        std::fs::write(dir.path().join(ROUTES_FILE), "routes: []\n").unwrap();
        assert_ne!(Snapshot::load(dir.path()).unwrap().version, v1);
    }

    #[test]
    fn version_is_the_git_commit_in_a_checkout_with_a_dirty_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "-c",
                    "commit.gpgsign=false",
                ])
                .args(args)
                .output()
                .expect("git is installed")
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        copy_bundled(dir.path());
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "policies"]);
        let head = std::process::Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .unwrap();
        let head = String::from_utf8(head.stdout).unwrap().trim().to_string();
        assert_eq!(Snapshot::load(dir.path()).unwrap().version, head);

        let path = dir.path().join("platform.cedar");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}\n// edited\n")).unwrap();
        let dirty = Snapshot::load(dir.path()).unwrap().version;
        assert!(dirty.starts_with(&format!("{head}-dirty.")), "{dirty}");
    }
}
