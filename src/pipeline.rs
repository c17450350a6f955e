//! The decision pipeline: the order of the stages, top to bottom. Each stage
//! lives in its own module; a stage that denies stops the path. Adapters
//! call `decide` with a request in our own terms and get a `Decision`.

use std::time::Instant;

use cedar_policy::EntityUid;

use crate::authn::{entity_uid, AuthMethod, Authentication, Authenticator, Identity};
use crate::authz::{self, RequestContext};
use crate::decision::{Decision, DenyReason, Outcome, ShadowOutcome};
use crate::request::AccessRequest;
use crate::routes::{self, RouteMatch, Unmatched};
use crate::snapshot::{Snapshot, ANONYMOUS_TYPE};

/// Decides one request against one snapshot, and logs the decision.
pub fn decide(snapshot: &Snapshot, authenticator: &Authenticator, req: &AccessRequest) -> Decision {
    let started = Instant::now();
    let decision = evaluate(snapshot, req, |r| {
        authenticator.authenticate(r, epoch_seconds(r))
    });
    record(&decision, req, started);
    decision
}

/// Decides a request for an identity given by the caller instead of the
/// request's credentials (offline `check`, policy tests, explain). Not logged
/// as a real decision.
pub fn decide_as(snapshot: &Snapshot, identity: Option<Identity>, req: &AccessRequest) -> Decision {
    evaluate(snapshot, req, |_| match identity {
        Some(identity) => Authentication::Authenticated(identity),
        None => Authentication::NoCredentials,
    })
}

fn evaluate(
    snapshot: &Snapshot,
    req: &AccessRequest,
    authenticate: impl FnOnce(&AccessRequest) -> Authentication,
) -> Decision {
    let d = Decision::new(&snapshot.version);

    // 1. Route: what is being asked for.
    let (route, resource_id) = match snapshot.routes.match_request(&req.method, &req.path) {
        RouteMatch::Matched {
            route, resource_id, ..
        } => (route, resource_id),
        RouteMatch::MethodNotAllowed { allowed } => {
            let allowed = allowed.join(", ");
            let mut d = d.deny(
                DenyReason::MethodNotAllowed,
                format!(
                    "{} is not allowed on this path; allowed: {allowed}",
                    req.method
                ),
            );
            d.allow_methods = Some(allowed);
            return d;
        }
        RouteMatch::NotFound => {
            return match snapshot.routes.unmatched() {
                Unmatched::Allow => d.allow(),
                Unmatched::Deny => d.deny(
                    DenyReason::NoRoute,
                    format!(
                        "no API route matches {} {}",
                        req.method,
                        path_only(&req.path)
                    ),
                ),
            }
        }
        RouteMatch::BadPath { reason } => return d.deny(DenyReason::BadPath, reason),
    };
    let mut d = d;
    d.route = Some(route.name.clone());
    d.action = Some(format!("Action::{:?}", route.action));

    // 2. Authenticate: who is asking.
    let identity = match authenticate(req) {
        Authentication::Authenticated(identity) => identity,
        Authentication::NoCredentials if route.authentication == routes::Authentication::Optional => {
            anonymous()
        }
        Authentication::NoCredentials => {
            return d.deny(
                DenyReason::Unauthenticated,
                "this endpoint requires credentials: send 'Authorization: Bearer <token>' or use a client certificate",
            )
        }
        Authentication::Rejected(failure) => {
            d.errors.push(format!("authentication: {}", failure.reason));
            return d.deny(DenyReason::InvalidCredentials, failure.detail);
        }
    };
    d.principal = Some(identity.principal.to_string());
    d.auth_method = Some(identity.method.as_str());

    // 3. Resource: which entity the route names.
    let Some(resource) = entity_uid(&route.resource_type, &resource_id) else {
        d.errors.push(format!(
            "route '{}': resource type is not a Cedar type",
            route.name
        ));
        return d.deny(
            DenyReason::PolicyError,
            "the request could not be evaluated",
        );
    };
    d.resource = Some(resource.to_string());
    if route.must_exist && snapshot.entities.get(&resource).is_none() {
        return d.deny(
            DenyReason::UnknownResource,
            format!("{} '{}' does not exist", route.resource_type, resource_id),
        );
    }

    // 4. Authorize: may they.
    let context = RequestContext::build(req, route, identity.method.as_str());
    let (outcome, shadow) = authz::authorize(
        snapshot,
        &identity,
        &route.action,
        resource.clone(),
        context,
    );
    if let Some(shadow) = shadow {
        // Shadow policies are never enforced: they only record what the
        // decision would be with them switched on.
        d.shadow = Some(ShadowOutcome {
            decision: if shadow.allowed {
                Outcome::Allow
            } else {
                Outcome::Deny
            },
            disagrees: shadow.allowed != outcome.allowed,
            determining_policies: shadow.determining,
            errors: shadow.errors,
        });
    }
    d.determining_policies = outcome.determining;
    d.errors.extend(outcome.errors);
    if outcome.allowed {
        return d.allow();
    }
    if !d.errors.is_empty() {
        return d.deny(
            DenyReason::PolicyError,
            "the request could not be evaluated against the policies and is denied",
        );
    }
    let detail = format!(
        "{} may not {} {}",
        identity.principal, route.action, resource
    );
    d.deny(DenyReason::Forbidden, detail)
}

/// The identity of a caller without credentials.
pub fn anonymous() -> Identity {
    Identity {
        principal: anonymous_uid(),
        parents: Vec::new(),
        method: AuthMethod::Anonymous,
    }
}

fn anonymous_uid() -> EntityUid {
    entity_uid(ANONYMOUS_TYPE, "anonymous").expect("Anonymous is a valid entity type name")
}

fn epoch_seconds(req: &AccessRequest) -> u64 {
    req.time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or("")
}

/// Logs a decision. Credentials and bodies never reach the log.
fn record(d: &Decision, req: &AccessRequest, started: Instant) {
    tracing::info!(
        target: "portcullis::decision",
        decision_id = %d.id,
        request_id = %req.request_id,
        decision = ?d.decision,
        status = d.status,
        reason = d.reason.map(|r| r.code()),
        principal = d.principal.as_deref(),
        action = d.action.as_deref(),
        resource = d.resource.as_deref(),
        route = d.route.as_deref(),
        determining_policies = ?d.determining_policies,
        errors = ?d.errors,
        policy_version = %d.policy_version,
        latency_us = started.elapsed().as_micros() as u64,
        "decision"
    );
    if let Some(shadow) = d.shadow.as_ref().filter(|s| s.disagrees) {
        tracing::warn!(
            target: "portcullis::shadow",
            decision_id = %d.id,
            principal = d.principal.as_deref(),
            action = d.action.as_deref(),
            resource = d.resource.as_deref(),
            enforced = ?d.decision,
            shadow = ?shadow.decision,
            enforced_policies = ?d.determining_policies,
            shadow_policies = ?shadow.determining_policies,
            "shadow policies disagree with the enforced decision"
        );
    }
}

/// Decides one request and records the decision in the audit trail (stage
/// 6). The single place where real decisions reach the audit trail; in
/// `fail_closed` mode a decision that cannot be recorded comes back as a
/// 503 denial.
pub fn decide_recorded(
    snapshot: &Snapshot,
    authenticator: &Authenticator,
    audit: &crate::audit::AuditSink,
    req: &AccessRequest,
) -> Decision {
    let started = Instant::now();
    let decision = decide(snapshot, authenticator, req);
    audit.record_decision(decision, req, started.elapsed())
}

/// Decides a hypothetical request as `decide` would, authenticating its
/// credentials, but neither logs nor records it (admin `Explain`).
pub fn explain(
    snapshot: &Snapshot,
    authenticator: &Authenticator,
    req: &AccessRequest,
) -> Decision {
    evaluate(snapshot, req, |r| {
        authenticator.authenticate(r, epoch_seconds(r))
    })
}
