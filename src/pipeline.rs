//! The decision pipeline: the order of the stages, top to bottom. Each stage
//! lives in its own module; a stage that denies stops the path. Adapters
//! call `decide` with a request in our own terms and get a `Decision`.

use std::time::Instant;

use cedar_policy::EntityUid;

use crate::authn::{entity_uid, AuthMethod, Authentication, Authenticator, Identity};
use crate::authz::{self, RequestContext};
use crate::decision::{Decision, DenyReason};
use crate::quota::{self, check::QuotaSubject, Quotas};
use crate::request::AccessRequest;
use crate::routes::{self, RouteMatch, Unmatched};
use crate::snapshot::{Snapshot, ANONYMOUS_TYPE};

/// Decides one request against one snapshot, charges its quotas, and logs
/// the decision.
pub async fn decide(
    snapshot: &Snapshot,
    authenticator: &Authenticator,
    quotas: &Quotas,
    req: &AccessRequest,
) -> Decision {
    let started = Instant::now();
    let mut subject = None;
    let decision = evaluate(snapshot, req, &mut subject, |r| {
        authenticator.authenticate(r, epoch_seconds(r))
    });
    // 5. Quota: last, so that a request any other stage refuses never
    // consumes quota.
    let decision = match subject {
        Some(subject) if decision.is_allowed() => {
            charge(snapshot, quotas, &subject, req, decision).await
        }
        _ => decision,
    };
    record(&decision, req, started);
    decision
}

/// Decides a request for an identity given by the caller instead of the
/// request's credentials (offline `check`, policy tests, explain). Not logged
/// as a real decision, and charges no quota.
pub fn decide_as(snapshot: &Snapshot, identity: Option<Identity>, req: &AccessRequest) -> Decision {
    evaluate(snapshot, req, &mut None, |_| match identity {
        Some(identity) => Authentication::Authenticated(identity),
        None => Authentication::NoCredentials,
    })
}

/// The quota stage: every limit the `check:` rules give this request,
/// charged at once; a refusal is a 429 with the limit that refused.
async fn charge(
    snapshot: &Snapshot,
    quotas: &Quotas,
    subject: &QuotaSubject,
    req: &AccessRequest,
    d: Decision,
) -> Decision {
    let descriptors = match quota::check::descriptors(&snapshot.quotas, subject, req) {
        Ok(descriptors) => descriptors,
        Err(bad) => return d.deny(DenyReason::BadQuotaCost, bad.0),
    };
    if descriptors.is_empty() {
        return d;
    }
    let verdict = quota::apply::apply(&snapshot.quotas, quotas, &descriptors).await;
    let mut d = d;
    d.quota = verdict.outcome;
    if verdict.allowed {
        return d;
    }
    let unavailable = d
        .quota
        .as_ref()
        .is_some_and(|q| q.degraded == Some(quota::OnStoreError::Deny));
    let detail = d.quota.as_ref().map(|q| q.detail()).unwrap_or_default();
    if unavailable {
        d.deny(DenyReason::QuotaUnavailable, detail)
    } else {
        d.deny(DenyReason::QuotaExceeded, detail)
    }
}

fn evaluate(
    snapshot: &Snapshot,
    req: &AccessRequest,
    subject: &mut Option<QuotaSubject>,
    authenticate: impl FnOnce(&AccessRequest) -> Authentication,
) -> Decision {
    let d = Decision::new(&snapshot.version);

    // 1. Route: what is being asked for.
    let (route, resource_id, captures) = match snapshot.routes.match_request(&req.method, &req.path)
    {
        RouteMatch::Matched {
            route,
            resource_id,
            captures,
        } => (route, resource_id, captures),
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
    let outcome = authz::authorize(
        snapshot,
        &identity,
        &route.action,
        resource.clone(),
        context,
    );
    d.determining_policies = outcome.determining;
    d.errors.extend(outcome.errors);
    if outcome.allowed {
        *subject = Some(quota_subject(&identity, &route.name, captures));
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

/// What the quota rules may use: principal, org, route and captures.
fn quota_subject(identity: &Identity, route: &str, captures: Vec<(&str, String)>) -> QuotaSubject {
    let org = identity
        .parents
        .iter()
        .find(|p| p.type_name().basename() == "Org")
        .map(|p| p.id().unescaped().to_string());
    QuotaSubject {
        principal_type: identity.principal.type_name().to_string(),
        principal: identity.principal.id().unescaped().to_string(),
        org,
        route: route.to_string(),
        captures: captures
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
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
        quota = d.quota.as_ref().map(|q| q.descriptor.as_str()),
        quota_remaining = d.quota.as_ref().map(|q| q.remaining),
        quota_degraded = d.quota.as_ref().and_then(|q| q.degraded).map(|m| m.as_str()),
        latency_us = started.elapsed().as_micros() as u64,
        "decision"
    );
}
