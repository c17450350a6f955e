//! An HTTP request at the gateway, whichever front door asks about it
//! (ext_authz `Check` over gRPC, forward-auth over HTTP): decided through
//! the pipeline inside one span, and answered from the same pieces. Each
//! adapter only puts these pieces on its own wire, so that one request
//! gets the same decision, status, headers and body through every door.

use tracing::Instrument as _;

use crate::app::State;
use crate::decision::outcome::DECISION_HEADER;
use crate::decision::Decision;
use crate::pipeline::{self, Door};
use crate::request::AccessRequest;

/// Headers Portcullis sets for the upstream; clients may never send them.
pub const HEADER_PREFIX: &str = "x-portcullis-";
/// Who the caller is, on an allowed request to the upstream.
pub const PRINCIPAL_HEADER: &str = "x-portcullis-principal";
/// The policy version that allowed it.
pub const VERSION_HEADER: &str = "x-portcullis-policy-version";

/// Decides `access` as an enforced request through `door`: the gateway's
/// region (data residency) from the configuration or the gateway's header,
/// the serving snapshot, and one span per decision carrying the gateway's
/// request id and trace context, so that every log line inside it
/// (authentication, quota, anomalies) names them and exported traces join
/// the gateway's.
pub async fn decide(state: &State, access: &mut AccessRequest, door: Door) -> Decision {
    access.gateway_region = state.residency.region_of(&access.headers);
    let snapshot = state.policies.current();
    let trace = crate::tracecontext::TraceContext::of(access);
    let (trace_id, parent_span_id) = (
        trace.as_ref().map(|t| t.trace_id.as_str()),
        trace.as_ref().map(|t| t.parent_id.as_str()),
    );
    // Span names are static: one per door.
    let span = match door {
        Door::ForwardAuth => tracing::info_span!(
            "forward_auth",
            request_id = %access.request_id,
            trace_id,
            parent_span_id,
        ),
        _ => tracing::info_span!(
            "check",
            request_id = %access.request_id,
            trace_id,
            parent_span_id,
        ),
    };
    crate::otlp::set_parent(&span, &access.headers);
    let access = &*access;
    pipeline::decide(
        &snapshot,
        pipeline::Ask::Access(access),
        pipeline::Mode::Enforce(state.live(door)),
    )
    .instrument(span)
    .await
}

/// What becomes of an allowed request on its way to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Headers set on the request to the upstream, overwriting any the
    /// client sent: the decision id, the policy version, the principal and
    /// the decision's own (`x-portcullis-pii`).
    pub set: Vec<(String, String)>,
    /// `x-portcullis-*` headers the client sent that Portcullis does not
    /// set: removed, so that no client can speak for Portcullis.
    pub spoofed: Vec<String>,
    /// Headers the route says the upstream must not see (minimisation,
    /// `headers_to_remove`), whether or not this request carries them.
    pub minimised: Vec<String>,
}

/// The upstream's side of an allowed decision on `req`: [`upstream_set`],
/// [`spoofed`] and the route's minimised headers, owned.
pub fn upstream(decision: &Decision, req: &AccessRequest) -> Upstream {
    Upstream {
        set: upstream_set(decision)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        spoofed: spoofed(decision, req)
            .into_iter()
            .map(str::to_string)
            .collect(),
        minimised: decision.strip_headers.clone(),
    }
}

/// The headers an allowed request carries to the upstream ([`Upstream::set`]),
/// borrowed from `decision`: name, value.
pub fn upstream_set(decision: &Decision) -> impl Iterator<Item = (&str, &str)> {
    [
        (DECISION_HEADER, decision.id.as_str()),
        (VERSION_HEADER, decision.policy_version.as_str()),
    ]
    .into_iter()
    .chain(decision.principal.as_deref().map(|p| (PRINCIPAL_HEADER, p)))
    .chain(
        decision
            .upstream_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
}

/// The `x-portcullis-*` headers `req` carries that `decision` does not set
/// ([`Upstream::spoofed`]), sorted.
pub fn spoofed<'a>(decision: &Decision, req: &'a AccessRequest) -> Vec<&'a str> {
    let mut spoofed: Vec<&str> = req
        .headers
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with(HEADER_PREFIX))
        .filter(|k| !upstream_set(decision).any(|(name, _)| name == *k))
        .collect();
    spoofed.sort_unstable();
    spoofed
}

/// A denial as the client gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The HTTP status (outcome table).
    pub status: u16,
    /// The problem's content type, the decision id, `cache-control`, the
    /// challenge (`www-authenticate`), `allow`, `retry-after` and the
    /// rate-limit headers, names lower case.
    pub headers: Vec<(String, String)>,
    /// The RFC 9457 problem document.
    pub body: String,
}

/// The client's answer to a denied decision.
pub fn denial(decision: &Decision) -> Denial {
    Denial {
        status: decision.status,
        headers: decision.client_headers(),
        body: decision.problem_json(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::DenyReason;

    #[test]
    fn an_allow_sets_identity_strips_spoofed_headers_and_names_minimised_ones() {
        let mut req = AccessRequest::for_test("GET", "/x");
        for (k, v) in [
            ("x-portcullis-principal", "User::\"admin\""),
            ("x-portcullis-role", "admin"),
            ("cookie", "a=b"),
        ] {
            req.headers.insert(k.into(), v.into());
        }
        let mut d = Decision::new("v1").allow();
        d.principal = Some("User::\"alice\"".into());
        d.strip_headers = vec!["cookie".into(), "x-client-id".into()];
        let up = upstream(&d, &req);
        assert!(up
            .set
            .contains(&(PRINCIPAL_HEADER.into(), "User::\"alice\"".into())));
        assert!(up.set.contains(&(DECISION_HEADER.into(), d.id.clone())));
        assert_eq!(up.spoofed, ["x-portcullis-role"]);
        assert_eq!(up.minimised, ["cookie", "x-client-id"]);
    }

    #[test]
    fn a_denial_has_the_outcome_tables_status_headers_and_problem() {
        let d = Decision::new("v1").deny(DenyReason::Unauthenticated, "no");
        let denied = denial(&d);
        assert_eq!(denied.status, 401);
        assert!(denied
            .headers
            .iter()
            .any(|(k, v)| k == "www-authenticate" && v.starts_with("Bearer")));
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(body["status"], 401);
    }
}
