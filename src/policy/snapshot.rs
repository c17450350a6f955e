//! The policy directory, loaded and fully validated into one immutable
//! `Snapshot`. Loading reports every problem at once, each with file and
//! line; it never half-publishes. Swapping snapshots is `reload`'s job.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cedar_policy::{Entities, PolicySet, Schema, ValidationMode, Validator};
use sha2::{Digest, Sha256};

pub use super::checks::ContextClaim;
use super::checks::{
    check_route_references, check_routes_against_schema, check_token_rules, compile_schemas,
    response_checks, with_registry,
};
use super::files::{
    diagnostic_errors, entity_line, error_chain, json_error_line, miette_help, parse_policies,
    read_files,
};
use super::gitrev::version_of;
use crate::routes::RouteTable;
use crate::validate::models::{Registry, MODELS_FILE};
use crate::validate::schema::Schemas;

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
    /// Response checks per route (`responses.yaml`); none without one.
    pub responses: crate::response_checks::ResponsePolicy,
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

pub(super) const SCHEMA_FILE: &str = "schema.cedarschema";
pub(super) const ENTITIES_FILE: &str = "entities.json";
pub(super) const ROUTES_FILE: &str = "routes.yaml";
/// Policies evaluated next to the enforced set and never enforced.
pub(super) const SHADOW_DIR: &str = "shadow";

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

        if let Some(routes) = &routes {
            check_token_rules(&quotas, routes, &mut errors);
        }
        let responses = response_checks(&files, routes.as_ref(), &mut errors);

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
            responses,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::schema::SCHEMAS_DIR;
    use cedar_policy::EntityUid;

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
    fn a_policy_file_name_held_by_a_directory_is_an_error_not_an_absent_file() {
        // A quotas.yaml that is a directory loaded as no quotas at all.
        for (name, shown) in [
            (
                "quotas.yaml",
                "quotas.yaml: cannot read: it is a directory, not a file",
            ),
            (
                "platform.cedar",
                "platform.cedar: cannot read: it is a directory, not a file",
            ),
            (
                "quotas/extra.yaml",
                "quotas/extra.yaml: cannot read: it is a directory, not a file",
            ),
            (
                "schemas/extra.json",
                "schemas/extra.json: cannot read: it is a directory, not a file",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            copy_bundled(dir.path());
            let path = dir.path().join(name);
            if path.is_file() {
                std::fs::remove_file(&path).unwrap();
            }
            std::fs::create_dir_all(&path).unwrap();
            let errors = errors_of(dir.path());
            assert!(
                errors.iter().any(|e| e.contains(shown)),
                "{name}: {errors:?}"
            );
        }
    }

    #[test]
    fn a_policy_subdirectory_name_held_by_a_file_is_an_error() {
        for (name, shown) in [
            (
                "quotas",
                "quotas: cannot read: it is a file, not a directory",
            ),
            (
                "shadow",
                "shadow: cannot read: it is a file, not a directory",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            copy_bundled(dir.path());
            std::fs::write(dir.path().join(name), "").unwrap();
            let errors = errors_of(dir.path());
            assert!(
                errors.iter().any(|e| e.contains(shown)),
                "{name}: {errors:?}"
            );
        }
    }

    #[test]
    fn an_editors_dangling_lock_link_named_like_a_policy_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        copy_bundled(dir.path());
        std::os::unix::fs::symlink("user@host.1234:1", dir.path().join(".#platform.cedar"))
            .unwrap();
        Snapshot::load(dir.path()).unwrap();
        // Under a fixed name, a dangling link is an error.
        std::fs::remove_file(dir.path().join("quotas.yaml")).unwrap();
        std::os::unix::fs::symlink("gone.yaml", dir.path().join("quotas.yaml")).unwrap();
        let errors = errors_of(dir.path());
        assert!(
            errors
                .iter()
                .any(|e| e.contains("quotas.yaml: cannot read")),
            "{errors:?}"
        );
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
        // Its checks name routes that are gone now.
        std::fs::remove_file(dir.path().join(crate::response_checks::RESPONSES_FILE)).unwrap();
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
