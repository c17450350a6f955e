//! Authorization with Cedar: builds the Cedar request (principal, action,
//! resource, context) for a matched route and evaluates the snapshot's
//! policies. Forbid overrides permit, default deny, and any evaluation error
//! denies. It does not authenticate or match routes.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::{Authorizer, Context, Decision as CedarDecision, Entity, EntityUid, Request};
use serde_json::{json, Map, Value};

use crate::authn::Identity;
use crate::request::AccessRequest;
use crate::routes::Route;
use crate::snapshot::{action_uid, Snapshot};

/// The result of evaluating the policies for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzOutcome {
    /// True only when some policy permits, none forbids, and nothing erred.
    pub allowed: bool,
    /// Ids of the policies that determined the outcome.
    pub determining: Vec<String>,
    /// Evaluation errors (for operators only).
    pub errors: Vec<String>,
}

/// The Cedar context a route produces.
pub struct RequestContext;

impl RequestContext {
    /// The context for a real request.
    pub fn build(req: &AccessRequest, route: &Route, identity: &Identity) -> Value {
        let path = req.path.split(['?', '#']).next().unwrap_or("");
        let mut headers = Map::new();
        for name in &route.context_headers {
            if let Some(v) = req.header(name) {
                headers.insert(name.clone(), Value::String(v.to_string()));
            }
        }
        let epoch = req
            .time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut ctx = json!({
            "method": req.method,
            "path": path,
            "host": req.host,
            "route": route.name,
            "time": time_record(epoch),
            "auth": { "method": identity.method.as_str(), "mfa": identity.token.mfa },
            "token": {
                "scopes": identity.token.scopes.iter().collect::<Vec<_>>(),
                "claims": identity.token.claims,
            },
            "headers": headers,
        });
        if let Some(ip) = req.source_ip {
            // Explicit extension escape: the context parses without the
            // schema (fast); `Request::new` still checks it against it.
            ctx["source_ip"] = json!({ "__extn": { "fn": "ip", "arg": ip.to_string() } });
        }
        ctx
    }

    /// A context with every field a route can produce set, to check the
    /// route against the schema at load time.
    pub fn sample(route: &Route) -> Value {
        let mut req = AccessRequest::for_test("GET", "/");
        req.source_ip = Some(std::net::IpAddr::from([127, 0, 0, 1]));
        req.time = SystemTime::UNIX_EPOCH;
        for name in &route.context_headers {
            req.headers.insert(name.clone(), "sample".into());
        }
        let identity = Identity::new(
            crate::authn::entity_uid("User", "sample").expect("User is a type name"),
            Vec::new(),
            crate::authn::AuthMethod::Jwt,
        );
        Self::build(&req, route, &identity)
    }
}

/// `{epoch, hour, weekday}` in UTC; weekday is ISO (Monday 1 .. Sunday 7).
fn time_record(epoch: u64) -> Value {
    let days = epoch / 86_400;
    let hour = (epoch % 86_400) / 3_600;
    // 1970-01-01 was a Thursday (ISO 4).
    let weekday = (days + 3) % 7 + 1;
    json!({ "epoch": epoch, "hour": hour, "weekday": weekday })
}

/// One authorizer for the process: it holds no request state.
static AUTHORIZER: std::sync::LazyLock<Authorizer> = std::sync::LazyLock::new(Authorizer::new);

/// Evaluates the snapshot's enforced policies for one request and, when the
/// snapshot has shadow policies, the candidate set too (second element).
pub fn authorize(
    snapshot: &Snapshot,
    identity: &Identity,
    action: &str,
    resource: EntityUid,
    context: Value,
) -> (AuthzOutcome, Option<AuthzOutcome>) {
    let denied = |error: String| {
        let outcome = AuthzOutcome {
            allowed: false,
            determining: Vec::new(),
            errors: vec![error],
        };
        let shadow = snapshot.shadow.as_ref().map(|_| outcome.clone());
        (outcome, shadow)
    };
    let action = action_uid(action);
    // Parsed without the schema: schema-directed parsing tries implicit
    // forms and builds (then drops) an error for each, which dominated the
    // decision's cost; the schema still checks the result in `Request::new`.
    let context = match Context::from_json_value(context, None) {
        Ok(c) => c,
        Err(e) => return denied(format!("request context does not match the schema: {e}")),
    };
    let request = match Request::new(
        identity.principal.clone(),
        action,
        resource,
        context,
        Some(&snapshot.schema),
    ) {
        Ok(r) => r,
        Err(e) => return denied(format!("request does not match the schema: {e}")),
    };

    // Credentials may assert parents (the token's org) that entities.json
    // does not know; merge them into the principal for this request only.
    let merged;
    let entities = if identity.parents.is_empty() {
        &snapshot.entities
    } else {
        let upserted = with_parents(snapshot, identity).and_then(|p| {
            snapshot
                .entities
                .clone()
                .upsert_entities([p], None)
                .map_err(|e| e.to_string())
        });
        merged = match upserted {
            Ok(e) => e,
            Err(e) => return denied(format!("cannot build the principal entity: {e}")),
        };
        &merged
    };

    let authorizer = &*AUTHORIZER;
    let enforced = evaluate(authorizer, &request, &snapshot.policies, entities);
    let shadow = snapshot
        .shadow
        .as_ref()
        .map(|candidate| evaluate(authorizer, &request, candidate, entities));
    (enforced, shadow)
}

fn evaluate(
    authorizer: &Authorizer,
    request: &Request,
    policies: &cedar_policy::PolicySet,
    entities: &cedar_policy::Entities,
) -> AuthzOutcome {
    let response = authorizer.is_authorized(request, policies, entities);
    let errors: Vec<String> = response
        .diagnostics()
        .errors()
        .map(ToString::to_string)
        .collect();
    let determining = response
        .diagnostics()
        .reason()
        .map(ToString::to_string)
        .collect();
    // Cedar skips a policy that errors; an erroring forbid would then let a
    // permit through. Any error therefore denies.
    let allowed = response.decision() == CedarDecision::Allow && errors.is_empty();
    AuthzOutcome {
        allowed,
        determining,
        errors,
    }
}

/// The principal entity with the identity's parents added to any it has in
/// `entities.json` (attributes come from `entities.json` only).
fn with_parents(snapshot: &Snapshot, identity: &Identity) -> Result<Entity, String> {
    let mut parents: HashSet<EntityUid> = identity.parents.iter().cloned().collect();
    match snapshot.entities.get(&identity.principal) {
        Some(existing) => {
            let (uid, attrs, static_parents) = existing.clone().into_inner();
            parents.extend(static_parents);
            Entity::new(uid, attrs, parents).map_err(|e| e.to_string())
        }
        None => Ok(Entity::new_no_attrs(identity.principal.clone(), parents)),
    }
}
