//! The decision pipeline: the order of the stages, top to bottom. Each stage
//! lives in its own module; a stage that denies stops the path. Adapters
//! call `decide` with a request in our own terms and get a `Decision`.

use std::time::Instant;

use cedar_policy::EntityUid;

use crate::anomaly::{Detector, Observed, Subject};
use crate::authn::{entity_uid, AuthMethod, Authentication, Authenticator, Identity};
use crate::authz::{self, RequestContext};
use crate::decision::{Decision, DenyReason, Outcome, ShadowOutcome};
use crate::metrics;
use crate::quota::{self, check::QuotaSubject, Quotas};
use crate::request::AccessRequest;
use crate::residency;
use crate::routes::{self, RouteMatch, Unmatched};
use crate::snapshot::{Snapshot, ANONYMOUS_TYPE};
use crate::validate::{self, models::Lookup};

/// The header that names, to the upstream, the kinds of personal data an
/// allowed body carries (`pii: tag` routes).
pub const PII_HEADER: &str = "x-portcullis-pii";

/// Decides one request against one snapshot, charges its quotas, and logs
/// the decision. Authentication may wait (a JWKS refetch on an unknown
/// `kid`) and quotas may ask Redis, so this is async; everything else is
/// plain computation.
pub async fn decide(
    snapshot: &Snapshot,
    authenticator: &Authenticator,
    quotas: &Quotas,
    req: &AccessRequest,
) -> Decision {
    decide_watched(snapshot, authenticator, quotas, Watch::Fixed(0), req).await
}

/// How the anomaly detector takes part in a decision: the risk score the
/// policies see (`context.risk`) and blocks.
#[derive(Debug, Clone, Copy)]
pub enum Watch<'a> {
    /// No detector: the risk is this score (0 for real requests; the
    /// given one for policy tests and offline checks).
    Fixed(u8),
    /// The live detector: risk and blocks of the principal and source.
    Live(&'a Detector),
}

/// [`decide`] with the anomaly detector's view of the request.
pub async fn decide_watched(
    snapshot: &Snapshot,
    authenticator: &Authenticator,
    quotas: &Quotas,
    watch: Watch<'_>,
    req: &AccessRequest,
) -> Decision {
    let started = Instant::now();
    let mut subject = None;
    let decision =
        authenticate_and_evaluate(snapshot, authenticator, req, watch, &mut subject).await;
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

/// Stages 1 to 4: route, then (only for routed requests) authenticate,
/// then resource and authorization.
async fn authenticate_and_evaluate(
    snapshot: &Snapshot,
    authenticator: &Authenticator,
    req: &AccessRequest,
    watch: Watch<'_>,
    subject: &mut Option<QuotaSubject>,
) -> Decision {
    match route(snapshot, req) {
        Stage::Routed(routed) => {
            // A source the anomaly detector blocks is refused before its
            // credentials are even looked at.
            if let Watch::Live(detector) = watch {
                if let Some(wait) = detector.assess(None, req.source_ip).blocked_for {
                    return anomaly_blocked(routed.d, wait);
                }
            }
            let started = Instant::now();
            let now = epoch_seconds(req);
            let authentication = authenticator.authenticate(req, now).await;
            metrics::global().stage(metrics::Stage::Authn, started.elapsed());
            // Signed payloads: the signature authenticates the message, so
            // it is checked with the credentials, before any policy runs.
            if let Authentication::Authenticated(identity) = &authentication {
                let required = routed.route.signature == routes::SignatureMode::Required;
                if let Err(refused) = authenticator.verify_signature(req, identity, required, now) {
                    let mut d = routed.d;
                    d.principal = Some(identity.principal.to_string());
                    d.auth_method = Some(identity.method.as_str());
                    d.errors.push(format!("signature: {}", refused.reason));
                    return d.deny(DenyReason::InvalidSignature, refused.detail);
                }
            }
            evaluate(snapshot, req, routed, authentication, watch, subject)
        }
        Stage::Decided(decided) => decided,
    }
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
    let started = Instant::now();
    let verdict = quota::apply::apply(&snapshot.quotas, quotas, &descriptors).await;
    metrics::global().stage(metrics::Stage::Quota, started.elapsed());
    let mut d = d;
    d.quota = verdict.outcome;
    if verdict.allowed {
        return d;
    }
    match d.quota.as_ref().map(|q| (q.deny_reason(), q.detail())) {
        Some((reason, detail)) => d.deny(reason, detail),
        None => d.deny(DenyReason::QuotaExceeded, String::new()),
    }
}

/// Decides a request for an identity given by the caller instead of the
/// request's credentials (offline `check`, policy tests, explain). Not logged
/// as a real decision, and charges no quota.
pub fn decide_as(snapshot: &Snapshot, identity: Option<Identity>, req: &AccessRequest) -> Decision {
    decide_as_at_risk(snapshot, identity, req, 0)
}

/// [`decide_as`] with a given anomaly risk score (`context.risk`).
pub fn decide_as_at_risk(
    snapshot: &Snapshot,
    identity: Option<Identity>,
    req: &AccessRequest,
    risk: u8,
) -> Decision {
    match route(snapshot, req) {
        Stage::Routed(routed) => {
            let authentication = match identity {
                Some(identity) => Authentication::Authenticated(identity),
                None => Authentication::NoCredentials,
            };
            evaluate(
                snapshot,
                req,
                routed,
                authentication,
                Watch::Fixed(risk),
                &mut None,
            )
        }
        Stage::Decided(decided) => decided,
    }
}

/// Where a request stands after routing.
enum Stage<'s> {
    /// A route takes it; authentication comes next.
    Routed(Routed<'s>),
    /// Decided without looking at credentials (no route, bad path, ...).
    Decided(Decision),
}

/// A request whose route is known, waiting to be authenticated.
struct Routed<'s> {
    d: Decision,
    route: &'s routes::Route,
    resource_id: String,
    captures: Vec<(&'s str, String)>,
}

/// Stage 1, route: what is being asked for. A request no route takes is
/// decided here, before any credential is looked at.
fn route<'s>(snapshot: &'s Snapshot, req: &AccessRequest) -> Stage<'s> {
    let started = Instant::now();
    let routing = match_route(snapshot, req);
    metrics::global().stage(metrics::Stage::Route, started.elapsed());
    routing
}

fn match_route<'s>(snapshot: &'s Snapshot, req: &AccessRequest) -> Stage<'s> {
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
            return Stage::Decided(d);
        }
        RouteMatch::NotFound => {
            return Stage::Decided(match snapshot.routes.unmatched() {
                Unmatched::Allow => d.allow(),
                Unmatched::Deny => d.deny(
                    DenyReason::NoRoute,
                    format!(
                        "no API route matches {} {}",
                        req.method,
                        path_only(&req.path)
                    ),
                ),
            })
        }
        RouteMatch::BadPath { reason } => {
            return Stage::Decided(d.deny(DenyReason::BadPath, reason))
        }
    };
    let mut d = d;
    d.route = Some(route.name.clone());
    d.action = Some(format!("Action::{:?}", route.action));
    Stage::Routed(Routed {
        d,
        route,
        resource_id,
        captures,
    })
}

/// Stages 2 to 4 for a routed request and the outcome of authentication.
fn evaluate(
    snapshot: &Snapshot,
    req: &AccessRequest,
    routed: Routed<'_>,
    authentication: Authentication,
    watch: Watch<'_>,
    subject: &mut Option<QuotaSubject>,
) -> Decision {
    let Routed {
        mut d,
        route,
        mut resource_id,
        mut captures,
    } = routed;

    // 2. Authenticate: who is asking.
    let identity = match authentication {
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
        Authentication::Blocked { retry_after } => {
            // Round up: a client that waits Retry-After seconds must find
            // the block over.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            d.errors.push("authentication: source_blocked".into());
            let mut d = d.deny(
                DenyReason::TooManyFailedAttempts,
                format!("too many failed authentication attempts from this address; retry after {seconds} seconds"),
            );
            d.retry_after_seconds = Some(seconds);
            return d;
        }
        Authentication::Rejected(failure) => {
            d.errors.push(format!("authentication: {}", failure.reason));
            let reason = if failure.unavailable {
                DenyReason::AuthnUnavailable
            } else {
                DenyReason::InvalidCredentials
            };
            return d.deny(reason, failure.detail);
        }
    };
    d.principal = Some(identity.principal.to_string());
    d.auth_method = Some(identity.method.as_str());
    let risk = match watch {
        Watch::Fixed(risk) => risk,
        Watch::Live(detector) => {
            let a = detector.assess(watched_principal(&d), req.source_ip);
            if let Some(wait) = a.blocked_for {
                return anomaly_blocked(d, wait);
            }
            a.risk
        }
    };

    // Data residency: before anything reads the request's content.
    if let Err(detail) = residency::check(
        &snapshot.org_regions,
        &snapshot.entities,
        &identity,
        req.gateway_region.as_deref(),
    ) {
        return d.deny(DenyReason::ResidencyViolation, detail);
    }

    // The model version the route names, aliases resolved: the registry
    // decides what exists, what is retired and what is deprecated.
    let mut model_version = None;
    if let Some((name_capture, version_capture)) =
        route.model.as_ref().and_then(|m| m.capture_names())
    {
        let value = |name: &str| {
            captures
                .iter()
                .find(|(c, _)| *c == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (model, asked) = (value(name_capture), value(version_capture));
        match snapshot
            .models
            .lookup(&model, &asked, epoch_seconds(req) as i64)
        {
            Lookup::Found { version, entry } => {
                if version != asked {
                    for (c, v) in captures.iter_mut() {
                        if *c == version_capture {
                            *v = version.to_string();
                        }
                    }
                    resource_id = route.resource_id(&captures);
                }
                d.response_headers.extend(entry.deprecation_headers());
                model_version = Some((format!("{model}/{version}"), entry));
            }
            Lookup::UnknownModel => {
                return d.deny(
                    DenyReason::UnknownModel,
                    format!("there is no model '{model}'"),
                )
            }
            Lookup::UnknownVersion { available } => {
                return d.deny(
                    DenyReason::UnknownModelVersion,
                    format!("model '{model}' has no version '{asked}'; available: {available}"),
                )
            }
            Lookup::Retired {
                version,
                sunset,
                successor,
            } => {
                let instead = successor
                    .map(|s| format!("; use {s} (alias latest)"))
                    .unwrap_or_default();
                return d.deny(
                    DenyReason::ModelVersionRetired,
                    format!("model '{model}' version '{version}' was retired on {sunset}{instead}"),
                );
            }
        }
    }

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
    let started = Instant::now();
    let mut context = RequestContext::build(req, route, &identity);
    if snapshot.risk_actions.contains(&route.action) {
        context["risk"] = serde_json::json!(risk);
    }
    if let Some(region) = &req.gateway_region {
        if snapshot.region_routes.contains(&route.name) {
            context["region"] = serde_json::Value::String(region.clone());
        }
    }
    let (outcome, shadow) = authz::authorize(
        snapshot,
        &identity,
        &route.action,
        resource.clone(),
        context,
    );
    metrics::global().stage(metrics::Stage::Authz, started.elapsed());
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
        // 4. Validate: only routes with a body rule look at the body.
        if let Some(spec) = &route.body {
            let schema = spec
                .schema
                .as_ref()
                .and_then(|name| snapshot.schemas.get(name))
                .map(|s| &**s);
            let model = model_version
                .as_ref()
                .filter(|_| spec.model_input)
                .map(|(label, version)| validate::ModelInput { label, version });
            match validate::check_body(req, spec, schema, model) {
                Ok(accepted) => {
                    if !accepted.pii.is_empty() {
                        let kinds: Vec<&str> = accepted.pii.iter().map(|k| k.as_str()).collect();
                        d.upstream_headers
                            .push((PII_HEADER.to_string(), kinds.join(",")));
                    }
                }
                Err(rejection) => {
                    d.problems = rejection.problems;
                    return d.deny(rejection.reason, rejection.detail);
                }
            }
        }
        d.strip_headers.clone_from(&route.headers_to_remove);
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

/// The 429 of a principal or source the anomaly detector blocks.
fn anomaly_blocked(d: Decision, wait: std::time::Duration) -> Decision {
    // Round up: a client that waits Retry-After seconds must find the
    // block over.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut d = d.deny(
        DenyReason::AnomalyBlocked,
        format!("unusual activity from this client; retry after {seconds} seconds"),
    );
    d.retry_after_seconds = Some(seconds);
    d
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
    Identity::new(anonymous_uid(), Vec::new(), AuthMethod::Anonymous)
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

/// Logs a decision. Credentials and bodies never reach the log. Debug
/// level: the audit trail records every decision without blocking the
/// request path, while a log line per request is a blocking write; shadow
/// disagreements stay warnings.
fn record(d: &Decision, req: &AccessRequest, started: Instant) {
    tracing::debug!(
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
pub async fn decide_recorded(
    snapshot: &Snapshot,
    authenticator: &Authenticator,
    quotas: &Quotas,
    audit: &crate::audit::AuditSink,
    anomalies: Option<&Detector>,
    req: &AccessRequest,
) -> Decision {
    let started = Instant::now();
    let watch = anomalies.map_or(Watch::Fixed(0), Watch::Live);
    let decision = decide_watched(snapshot, authenticator, quotas, watch, req).await;
    if let Some(detector) = anomalies {
        watch_decision(detector, audit, &decision, req);
    }
    let decision = audit.record_decision(decision, req, started.elapsed());
    metrics::global().decision(metrics::Service::ExtAuthz, &decision, started.elapsed());
    decision
}

/// The principal the anomaly detector tracks for a decision: not the
/// shared anonymous one (every caller without credentials is that one
/// principal; their sources are tracked instead).
fn watched_principal(d: &Decision) -> Option<&str> {
    match d.auth_method {
        Some("anonymous") => None,
        _ => d.principal.as_deref(),
    }
}

/// Feeds a decision to the anomaly detector; every event it sets off
/// becomes a metric, a log line and an audit record.
fn watch_decision(
    detector: &Detector,
    audit: &crate::audit::AuditSink,
    d: &Decision,
    req: &AccessRequest,
) {
    let observed = match d.reason {
        None => Observed::Allowed,
        Some(DenyReason::InvalidCredentials) => Observed::AuthnFailure,
        Some(DenyReason::Forbidden) => Observed::Forbidden,
        // Refusals of an already blocked client are not new evidence.
        Some(DenyReason::AnomalyBlocked | DenyReason::TooManyFailedAttempts) => return,
        Some(_) => Observed::Denied,
    };
    let events = detector.observe(watched_principal(d), req.source_ip, observed);
    let config = detector.config();
    for event in events {
        let detail = event.detail(config.interval_seconds, config.failure_window_seconds);
        metrics::global().anomaly(event.kind.code(), event.subject.kind());
        if event.blocked_for.is_some() {
            metrics::global().anomaly_block();
        }
        let (principal, source_ip) = match &event.subject {
            Subject::Principal(p) => (p.clone(), String::new()),
            Subject::Source(ip) => (String::new(), ip.to_string()),
        };
        tracing::warn!(
            target: "portcullis::anomaly",
            kind = event.kind.code(),
            subject = event.subject.kind(),
            principal = %principal,
            source_ip = %source_ip,
            risk = event.risk,
            blocked_seconds = event.blocked_for.map(|b| b.as_secs()),
            request_id = %req.request_id,
            decision_id = %d.id,
            "anomaly: {detail}"
        );
        audit.record(crate::audit::AuditRecord {
            principal,
            source_ip,
            reason: event.kind.code().to_string(),
            decision: if event.blocked_for.is_some() {
                "block".into()
            } else {
                String::new()
            },
            detail,
            request_id: req.request_id.clone(),
            policy_version: d.policy_version.clone(),
            ..crate::audit::AuditRecord::new(crate::audit::Kind::Anomaly)
        });
    }
}

/// Decides a hypothetical request as `decide` would, authenticating its
/// credentials, but neither charges quota, logs nor records it (admin
/// `Explain`).
pub async fn explain(
    snapshot: &Snapshot,
    authenticator: &Authenticator,
    req: &AccessRequest,
) -> Decision {
    authenticate_and_evaluate(snapshot, authenticator, req, Watch::Fixed(0), &mut None).await
}
