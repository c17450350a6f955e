//! The asks other than an HTTP request: a rate-limit call (the quota stage
//! alone) and an admin API call (authentication and authorization of the
//! call itself), through the same stages as `access`.

use super::stages::{charge_descriptors, identify, limit_status};
use super::{AdminCall, Mode, RateLimit};
use crate::authn::{AuthMethod, Authentication};
use crate::decision::{Decision, DenyReason};
use crate::policy::Snapshot;

/// A rate-limit call: the quota stage alone, over the caller's
/// descriptors. The domain is the resource; RLS carries no principal.
pub(super) async fn ratelimit(
    snapshot: &Snapshot,
    call: &RateLimit<'_>,
    mode: &Mode<'_>,
) -> Decision {
    let mut d = Decision::new(&snapshot.version);
    d.action = Some("ratelimit".into());
    d.resource = Some(snapshot.quotas.resource_of(call.domain));
    let Mode::Enforce(live) = mode else {
        return d.allow();
    };
    let (charged, per_descriptor) =
        charge_descriptors(snapshot, live.quotas, call.descriptors, &mut d).await;
    d.limits = per_descriptor
        .into_iter()
        .map(|applied| applied.map(limit_status))
        .collect();
    match charged {
        Ok(()) => d.allow(),
        Err(refusal) => refusal.deny(d),
    }
}

/// An admin call: the caller is authenticated as any request is (without
/// credentials: anonymous), then the enforced policies decide whether it
/// may perform the call's action on its resource.
pub(super) async fn admin(snapshot: &Snapshot, call: &AdminCall<'_>, mode: &Mode<'_>) -> Decision {
    let mut d = Decision::new(&snapshot.version);
    d.action = Some(format!("Action::{:?}", call.action));
    d.resource = Some(call.resource.to_string());
    let authentication = match mode {
        Mode::Enforce(live) => {
            live.authenticator
                .authenticate(call.request, crate::time::epoch_seconds(call.request.time))
                .await
        }
        Mode::Explain(authenticator) => {
            authenticator
                .authenticate(call.request, crate::time::epoch_seconds(call.request.time))
                .await
        }
        Mode::As { identity, .. } => match identity.clone() {
            Some(identity) => Authentication::Authenticated(identity),
            None => Authentication::NoCredentials,
        },
    };
    let identity = match identify(authentication, true, &mut d) {
        Ok(identity) => identity,
        Err(refusal) => return refusal.deny(d),
    };
    let context =
        serde_json::json!({ "rpc": call.rpc, "auth": { "method": identity.method.as_str() } });
    // Admin calls are decided by the enforced policies only.
    let (outcome, _shadow) = crate::authz::authorize(
        snapshot.authz(),
        &identity,
        call.action,
        call.resource.clone(),
        crate::authz::ContextInput::Json(context),
    );
    d.determining_policies = outcome.determining;
    d.errors = outcome.errors;
    if outcome.allowed {
        return d.allow();
    }
    if identity.method == AuthMethod::Anonymous {
        return d.deny(
            DenyReason::Unauthenticated,
            format!(
                "{} needs credentials: send metadata 'authorization: Bearer <JWT>' with a token from a configured issuer",
                call.rpc
            ),
        );
    }
    let detail = format!(
        "{} may not {} {}",
        identity.principal, call.action, call.resource
    );
    d.deny(DenyReason::Forbidden, detail)
}
