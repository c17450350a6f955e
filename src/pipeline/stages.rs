//! The stages of the decision path, one function each, in the order
//! `pipeline::access` calls them. A stage returns what the next one needs
//! or a [`Refusal`]; operator-only notes go to the decision's `errors`.

use std::time::Instant;

use cedar_policy::EntityUid;

use super::Mode;
use crate::authn::{entity_uid, AuthMethod, Authentication, Identity};
use crate::authz::{ContextInput, RequestContext};
use crate::decision::quota::LimitStatus;
use crate::decision::{Decision, DenyReason, Outcome, Problem, ShadowOutcome};
use crate::metrics;
use crate::policy::snapshot::ANONYMOUS_TYPE;
use crate::policy::Snapshot;
use crate::quota::apply::Applied;
use crate::quota::check::QuotaSubject;
use crate::request::AccessRequest;
use crate::routes;
use crate::validate::{self, models::Lookup};

/// The header that names, to the upstream, the kinds of personal data an
/// allowed body carries (`pii: tag` routes).
pub const PII_HEADER: &str = "x-portcullis-pii";

/// Why a stage refuses the request: what the client is told.
#[derive(Debug)]
pub(super) struct Refusal {
    reason: DenyReason,
    detail: String,
    retry_after_seconds: Option<u64>,
    problems: Vec<Problem>,
}

impl Refusal {
    /// A refusal for `reason`, the client told `detail`.
    pub(super) fn new(reason: DenyReason, detail: impl Into<String>) -> Self {
        Refusal {
            reason,
            detail: detail.into(),
            retry_after_seconds: None,
            problems: Vec::new(),
        }
    }

    /// A 429 that ends after `wait` (`Retry-After` rounded up).
    fn blocked(reason: DenyReason, detail: &str, wait: std::time::Duration) -> Self {
        let seconds = crate::time::retry_after_seconds(wait);
        Refusal {
            retry_after_seconds: Some(seconds),
            ..Refusal::new(reason, format!("{detail}; retry after {seconds} seconds"))
        }
    }

    /// The decision so far, denied for this reason.
    pub(super) fn deny(self, d: Decision) -> Decision {
        let mut d = d.deny(self.reason, self.detail);
        if self.retry_after_seconds.is_some() {
            d.retry_after_seconds = self.retry_after_seconds;
        }
        if !self.problems.is_empty() {
            d.problems = self.problems;
        }
        d
    }
}

mod route;
pub(super) use route::{route, Routing};

/// A request whose route is known, on its way through the stages.
pub(super) struct Routed<'s> {
    pub(super) d: Decision,
    route: &'s routes::Route,
    resource_id: String,
    captures: Vec<(&'s str, String)>,
    /// The request path in normal form (`routes::normalize_path`).
    path: String,
    /// The body as the validate stage parsed it (JSON on a route with a
    /// body rule), for the quota stage's costs.
    body: Option<serde_json::Value>,
}

/// A source the anomaly detector blocks is refused before its credentials
/// are even looked at.
pub(super) fn screen_source(mode: &Mode<'_>, req: &AccessRequest) -> Result<(), Refusal> {
    if let Mode::Enforce(live) = mode {
        if let Some(detector) = live.anomalies {
            if let Some(wait) = detector.assess(None, req.source_ip).blocked_for {
                return Err(anomaly_blocked(wait));
            }
        }
    }
    Ok(())
}

/// Stage 2, authenticate: who is asking. Credentials are verified (or the
/// identity is given, offline), then a signed payload's signature.
pub(super) async fn authenticate(
    req: &AccessRequest,
    mode: &Mode<'_>,
    at: &mut Routed<'_>,
) -> Result<Identity, Refusal> {
    let authenticator = match mode {
        Mode::Enforce(live) => live.authenticator,
        Mode::Explain(authenticator) => authenticator,
        Mode::As { identity, .. } => {
            let optional = at.route.authentication == routes::Authentication::Optional;
            let authentication = match identity.clone() {
                Some(identity) => Authentication::Authenticated(identity),
                None => Authentication::NoCredentials,
            };
            return identify(authentication, optional, &mut at.d);
        }
    };
    let started = Instant::now();
    let now = crate::time::epoch_seconds(req.time);
    let authentication = authenticator.authenticate(req, now).await;
    metrics::global().stage(metrics::Stage::Authn, started.elapsed());
    // Signed payloads: the signature authenticates the message, so it is
    // checked with the credentials, before any policy runs.
    if let Authentication::Authenticated(identity) = &authentication {
        let required = at.route.signature == routes::SignatureMode::Required;
        if let Err(refused) = authenticator
            .verify_signature(req, identity, required, now)
            .await
        {
            note_principal(&mut at.d, identity);
            at.d.errors.push(format!("signature: {}", refused.reason));
            return Err(Refusal::new(DenyReason::InvalidSignature, refused.detail));
        }
    }
    let optional = at.route.authentication == routes::Authentication::Optional;
    identify(authentication, optional, &mut at.d)
}

/// The identity an authentication outcome gives, or the refusal. Without
/// credentials the caller is anonymous where `optional`, else refused.
/// Operators find the failure's code in `errors` ("authentication: ...").
pub(super) fn identify(
    authentication: Authentication,
    optional: bool,
    d: &mut Decision,
) -> Result<Identity, Refusal> {
    let identity = match authentication {
        Authentication::Authenticated(identity) => identity,
        Authentication::NoCredentials if optional => anonymous(),
        Authentication::NoCredentials => {
            return Err(Refusal::new(
                DenyReason::Unauthenticated,
                "this endpoint requires credentials: send 'Authorization: Bearer <token>' or use a client certificate",
            ))
        }
        Authentication::Blocked { retry_after } => {
            d.errors.push("authentication: source_blocked".into());
            return Err(Refusal::blocked(
                DenyReason::TooManyFailedAttempts,
                "too many failed authentication attempts from this address",
                retry_after,
            ));
        }
        Authentication::Rejected(failure) => {
            d.errors.push(format!("authentication: {}", failure.reason));
            let reason = if failure.unavailable {
                DenyReason::AuthnUnavailable
            } else {
                DenyReason::InvalidCredentials
            };
            return Err(Refusal::new(reason, failure.detail));
        }
    };
    note_principal(d, &identity);
    Ok(identity)
}

fn note_principal(d: &mut Decision, identity: &Identity) {
    d.principal = Some(identity.principal_text().to_string());
    d.auth_method = Some(identity.method.as_str());
}

/// The anomaly risk score the policies see (`context.risk`); a principal
/// the detector blocks is refused here.
pub(super) fn assess(mode: &Mode<'_>, req: &AccessRequest, at: &Routed<'_>) -> Result<u8, Refusal> {
    match mode {
        Mode::As { risk, .. } => Ok(*risk),
        Mode::Explain(_) => Ok(0),
        Mode::Enforce(live) => match live.anomalies {
            None => Ok(0),
            Some(detector) => {
                let a = detector.assess(watched_principal(&at.d), req.source_ip);
                match a.blocked_for {
                    Some(wait) => Err(anomaly_blocked(wait)),
                    None => Ok(a.risk),
                }
            }
        },
    }
}

/// Data residency: an org that restricts its regions is refused through a
/// gateway serving another region.
pub(super) fn residency(
    snapshot: &Snapshot,
    req: &AccessRequest,
    identity: &Identity,
) -> Result<(), Refusal> {
    crate::residency::check(
        &snapshot.org_regions,
        &snapshot.entities,
        identity,
        req.gateway_region.as_deref(),
    )
    .map_err(|detail| Refusal::new(DenyReason::ResidencyViolation, detail))
}

/// The model version the route names, aliases resolved: the registry
/// decides what exists, what is retired and what is deprecated. `None` for
/// routes that name no model.
pub(super) fn model_version<'s>(
    snapshot: &'s Snapshot,
    req: &AccessRequest,
    at: &mut Routed<'_>,
) -> Result<Option<(String, &'s validate::models::Version)>, Refusal> {
    let Some((name_capture, version_capture)) =
        at.route.model.as_ref().and_then(|m| m.capture_names())
    else {
        return Ok(None);
    };
    let value = |name: &str| {
        at.captures
            .iter()
            .find(|(c, _)| *c == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (model, asked) = (value(name_capture), value(version_capture));
    let now = crate::time::epoch_seconds(req.time) as i64;
    match snapshot.models.lookup(&model, &asked, now) {
        Lookup::Found { version, entry } => {
            if version != asked {
                for (c, v) in at.captures.iter_mut() {
                    if *c == version_capture {
                        *v = version.to_string();
                    }
                }
                at.resource_id = at.route.resource_id(&at.captures);
            }
            at.d.response_headers.extend(entry.deprecation_headers());
            // `model/version`, without `format!` on every call.
            let mut label = String::with_capacity(model.len() + 1 + version.len());
            label.push_str(&model);
            label.push('/');
            label.push_str(version);
            Ok(Some((label, entry)))
        }
        Lookup::UnknownModel => Err(Refusal::new(
            DenyReason::UnknownModel,
            format!("there is no model '{model}'"),
        )),
        Lookup::UnknownVersion { available } => Err(Refusal::new(
            DenyReason::UnknownModelVersion,
            format!("model '{model}' has no version '{asked}'; available: {available}"),
        )),
        Lookup::Retired {
            version,
            sunset,
            successor,
        } => {
            let instead = successor
                .map(|s| format!("; use {s} (alias latest)"))
                .unwrap_or_default();
            Err(Refusal::new(
                DenyReason::ModelVersionRetired,
                format!("model '{model}' version '{version}' was retired on {sunset}{instead}"),
            ))
        }
    }
}

/// Stage 3, resource: which Cedar entity the route names; routes with
/// `must_exist` refuse one `entities.json` does not have.
pub(super) fn resource(snapshot: &Snapshot, at: &mut Routed<'_>) -> Result<EntityUid, Refusal> {
    // The type was parsed when the route table loaded.
    let resource = EntityUid::from_type_name_and_id(
        at.route.resource_entity_type().clone(),
        cedar_policy::EntityId::new(&at.resource_id),
    );
    at.d.resource = Some(at.route.resource_uid_text(&at.resource_id));
    if at.route.must_exist && snapshot.entities.get(&resource).is_none() {
        return Err(Refusal::new(
            DenyReason::UnknownResource,
            format!(
                "{} '{}' does not exist",
                at.route.resource_type, at.resource_id
            ),
        ));
    }
    Ok(resource)
}

/// Stage 4, authorize: Cedar decides, over the request's context; shadow
/// policies are evaluated alongside and recorded, never enforced.
pub(super) fn authorize(
    snapshot: &Snapshot,
    req: &AccessRequest,
    identity: &Identity,
    resource: &EntityUid,
    risk: u8,
    at: &mut Routed<'_>,
) -> Result<(), Refusal> {
    let started = Instant::now();
    let route = at.route;
    let mut context = RequestContext::new(req, &at.path, route, identity);
    if snapshot.risk_actions.contains(&route.action) {
        context = context.with_risk(risk);
    }
    if let Some(region) = &req.gateway_region {
        if snapshot.region_routes.contains(&route.name) {
            context = context.with_region(region);
        }
    }
    let (outcome, shadow) = crate::authz::authorize(
        snapshot.authz(),
        identity,
        &route.action,
        resource.clone(),
        ContextInput::Request(context),
    );
    metrics::global().stage(metrics::Stage::Authz, started.elapsed());
    let d = &mut at.d;
    if let Some(shadow) = shadow {
        d.shadow = Some(Box::new(ShadowOutcome {
            decision: if shadow.allowed {
                Outcome::Allow
            } else {
                Outcome::Deny
            },
            disagrees: shadow.allowed != outcome.allowed,
            determining_policies: shadow.determining,
            errors: shadow.errors,
        }));
    }
    d.determining_policies = outcome.determining;
    d.errors.extend(outcome.errors);
    if outcome.allowed {
        return Ok(());
    }
    if !d.errors.is_empty() {
        return Err(Refusal::new(
            DenyReason::PolicyError,
            "the request could not be evaluated against the policies and is denied",
        ));
    }
    Err(Refusal::new(
        DenyReason::Forbidden,
        format!(
            "{} may not {} {}",
            identity.principal, route.action, resource
        ),
    ))
}

/// Stage 5, validate: only routes with a body rule look at the body. An
/// accepted body may tag the request for the upstream (personal data).
pub(super) fn validate(
    snapshot: &Snapshot,
    req: &AccessRequest,
    model: Option<(String, &validate::models::Version)>,
    at: &mut Routed<'_>,
) -> Result<(), Refusal> {
    let route = at.route;
    if let Some(spec) = &route.body {
        // Never allowed unvalidated: a body this front door did not get
        // cannot be checked (and might have been there).
        if req.body.is_none() && req.body_not_forwarded {
            return Err(Refusal::new(
                DenyReason::BodyNotForwarded,
                "this endpoint checks request bodies, and the gateway did not forward the \
                 body to Portcullis: the gateway must send it (Envoy with_request_body, \
                 Traefik forwardBody), or this route be served through one that does",
            ));
        }
        let schema = spec
            .schema
            .as_ref()
            .and_then(|name| snapshot.schemas.get(name))
            .map(|s| &**s);
        let model = model
            .as_ref()
            .filter(|_| spec.model_input)
            .map(|(label, version)| validate::ModelInput { label, version });
        match validate::check_body(req, spec, schema, model) {
            Ok(accepted) => {
                at.body = accepted.json;
                if !accepted.pii.is_empty() {
                    let kinds: Vec<&str> = accepted.pii.iter().map(|k| k.as_str()).collect();
                    at.d.upstream_headers
                        .push((PII_HEADER.to_string(), kinds.join(",")));
                }
            }
            Err(rejection) => {
                return Err(Refusal {
                    problems: rejection.problems,
                    ..Refusal::new(rejection.reason, rejection.detail)
                })
            }
        }
    }
    at.d.strip_headers.clone_from(&route.headers_to_remove);
    Ok(())
}

/// Stage 6, quota: every limit the `check:` rules give this request,
/// charged at once, all or nothing; a refusal is a 429 with the limit that
/// refused. Only enforced decisions charge.
pub(super) async fn charge(
    snapshot: &Snapshot,
    mode: &Mode<'_>,
    req: &AccessRequest,
    identity: &Identity,
    at: &mut Routed<'_>,
) -> Result<(), Refusal> {
    let Mode::Enforce(live) = mode else {
        return Ok(());
    };
    let subject = quota_subject(identity, &at.route.name, &at.captures);
    let descriptors =
        crate::quota::check::descriptors(&snapshot.quotas, &subject, req, at.body.as_ref())
            .map_err(|bad| Refusal::new(DenyReason::BadQuotaCost, bad.0))?;
    if descriptors.is_empty() {
        return Ok(());
    }
    // The stage histogram times `Check`'s stages; a rate-limit call is
    // timed as a whole (`portcullis_decision_duration_seconds`).
    let started = Instant::now();
    let (mut charged, per_descriptor) =
        charge_descriptors(snapshot, live.quotas, &descriptors, &mut at.d).await;
    if charged.is_ok() && descriptors.iter().any(|d| d.tokens.is_some()) {
        // Token limits hold a reservation until the response settles it.
        charged = super::reserve::record(
            live.quotas,
            req,
            &at.route.name,
            &descriptors,
            &per_descriptor,
            &mut at.d,
        )
        .await;
    }
    metrics::global().stage(metrics::Stage::Quota, started.elapsed());
    charged
}

/// Charges `descriptors`, notes on `d` the limit that decided, and hands
/// back each descriptor's limit and state (for RLS's per-descriptor
/// statuses; `Check` drops them).
pub(super) async fn charge_descriptors(
    snapshot: &Snapshot,
    quotas: &crate::quota::Quotas,
    descriptors: &[crate::quota::apply::Descriptor],
    d: &mut Decision,
) -> (Result<(), Refusal>, Vec<Option<Applied>>) {
    let verdict = crate::quota::apply::apply(&snapshot.quotas, quotas, descriptors).await;
    d.quota = verdict.outcome.map(Box::new);
    let charged = if verdict.allowed {
        Ok(())
    } else {
        Err(match d.quota.as_ref() {
            Some(q) => Refusal::new(q.deny_reason(), q.detail()),
            None => Refusal::new(DenyReason::QuotaExceeded, String::new()),
        })
    };
    (charged, verdict.applied)
}

/// A descriptor's limit and its state after the charge, as a decision
/// carries it.
pub(super) fn limit_status(applied: Applied) -> LimitStatus {
    applied.into()
}

/// The 429 of a principal or source the anomaly detector blocks.
fn anomaly_blocked(wait: std::time::Duration) -> Refusal {
    Refusal::blocked(
        DenyReason::AnomalyBlocked,
        "unusual activity from this client",
        wait,
    )
}

/// The principal the anomaly detector tracks for a decision: not the
/// shared anonymous one (every caller without credentials is that one
/// principal; their sources are tracked instead).
pub(super) fn watched_principal(d: &Decision) -> Option<&str> {
    match d.auth_method {
        Some("anonymous") => None,
        _ => d.principal.as_deref(),
    }
}

/// What the quota rules may use: principal, org, route and captures.
fn quota_subject<'a>(
    identity: &'a Identity,
    route: &'a str,
    captures: &'a [(&'a str, String)],
) -> QuotaSubject<'a> {
    let org = identity
        .parents
        .iter()
        .find(|p| p.type_name().basename() == "Org")
        .map(|p| p.id().unescaped());
    QuotaSubject {
        principal_type: identity.principal_type_text(),
        principal: identity.principal.id().unescaped(),
        org,
        route,
        captures,
    }
}

/// The identity of a caller without credentials.
pub fn anonymous() -> Identity {
    let uid =
        entity_uid(ANONYMOUS_TYPE, "anonymous").expect("Anonymous is a valid entity type name");
    Identity::new(uid, Vec::new(), AuthMethod::Anonymous)
}
