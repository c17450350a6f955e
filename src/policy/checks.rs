//! Checks across the files of a policy directory, after each parsed: every
//! route's request fits the Cedar schema, routes name schemas and models
//! that exist, the model registry's entities join `entities.json`, and the
//! claims the configuration copies into the context fit the schema, and
//! `responses.yaml` names routes that exist.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use cedar_policy::{Context, Entities, EntityId, EntityTypeName, EntityUid, Request, Schema};

use super::files::{entity_line, error_chain};
use super::snapshot::{
    LoadError, Snapshot, ANONYMOUS_TYPE, ENTITIES_FILE, ROUTES_FILE, SCHEMA_FILE,
};
use crate::response_checks::{ResponsePolicy, RESPONSES_FILE};
use crate::routes::{Authentication, RouteTable};
use crate::validate::models::{Registry, MODELS_FILE, MODEL_TYPE, MODEL_VERSION_TYPE};
use crate::validate::schema::{self, Schemas, SCHEMAS_DIR};

/// Checks every route against the schema by building the Cedar request the
/// route will produce: the action exists, applies to the route's resource
/// type, the declared headers fit the context type, and routes that allow
/// anonymous callers name an action that `Anonymous` may take.
pub(super) fn check_routes_against_schema(
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
pub(super) fn with_registry(
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
pub(super) fn compile_schemas(
    files: &BTreeMap<String, String>,
    errors: &mut Vec<LoadError>,
) -> Schemas {
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
pub(super) fn check_route_references(
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

/// Every route a `check:` rule with `tokens:` names exists and reads its
/// body (a `body:` section): the reservation's estimate comes from the
/// request body (`max_tokens`, the prompt), and a route whose body is not
/// looked at would reserve only the default, whatever it asks for.
pub(super) fn check_token_rules(
    quotas: &crate::quota::QuotaConfig,
    routes: &RouteTable,
    errors: &mut Vec<LoadError>,
) {
    for rule in quotas.check_rules.iter().filter(|r| r.tokens.is_some()) {
        for name in rule.routes.iter().flatten() {
            let problem = match routes.routes().iter().find(|r| &r.name == name) {
                None => format!(
                    "check rule '{}': tokens on route '{name}', which {ROUTES_FILE} does not have (routes: {})",
                    rule.name,
                    routes
                        .routes()
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(route) if route.body.is_none() => format!(
                    "check rule '{}': tokens on route '{name}', which has no body: section in {ROUTES_FILE}, so its max_tokens and prompt cannot be read; give it one (e.g. body: {{content_types: [application/json]}}) or leave it out of the rule's routes",
                    rule.name
                ),
                Some(_) => continue,
            };
            errors.push(LoadError {
                file: rule.at.0.clone(),
                line: rule.at.1,
                message: problem,
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

pub(super) fn join(types: &[EntityTypeName]) -> String {
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

/// `responses.yaml`, checked against the route table (not checked while
/// the route table itself does not load); none without the file.
pub(super) fn response_checks(
    files: &BTreeMap<String, String>,
    routes: Option<&RouteTable>,
    errors: &mut Vec<LoadError>,
) -> ResponsePolicy {
    let (Some(text), Some(routes)) = (files.get(RESPONSES_FILE), routes) else {
        return ResponsePolicy::default();
    };
    ResponsePolicy::parse(text, routes).unwrap_or_else(|errs| {
        errors.extend(errs.into_iter().map(|e| LoadError {
            file: RESPONSES_FILE.into(),
            line: e.line,
            message: e.message,
        }));
        ResponsePolicy::default()
    })
}
