//! Stage 1, route: what is being asked for, decided here when no route
//! takes the request (no route, a method or path refused) before any
//! credential is looked at.

use std::time::Instant;

use super::Routed;
use crate::decision::{Decision, DenyReason};
use crate::metrics;
use crate::policy::Snapshot;
use crate::request::AccessRequest;
use crate::routes::{RouteMatch, Unmatched};

/// Where a request stands after routing.
pub(in crate::pipeline) enum Routing<'s> {
    /// A route takes it; authentication comes next.
    Routed(Routed<'s>),
    /// Decided without looking at credentials (no route, bad path, ...).
    Decided(Decision),
}

/// Stage 1, route: what is being asked for. A request no route takes is
/// decided here, before any credential is looked at.
pub(in crate::pipeline) fn route<'s>(snapshot: &'s Snapshot, req: &AccessRequest) -> Routing<'s> {
    let started = Instant::now();
    let routing = match_route(snapshot, req);
    metrics::global().stage(metrics::Stage::Route, started.elapsed());
    routing
}

fn match_route<'s>(snapshot: &'s Snapshot, req: &AccessRequest) -> Routing<'s> {
    let d = Decision::new(&snapshot.version);
    match snapshot.routes.match_request(&req.method, &req.path) {
        RouteMatch::Matched {
            route,
            resource_id,
            captures,
            path,
        } => {
            let mut d = d;
            d.route = Some(route.name.clone());
            d.action = Some(route.action_uid_text().to_owned());
            Routing::Routed(Routed {
                d,
                route,
                resource_id,
                captures,
                path,
                body: None,
            })
        }
        RouteMatch::MethodNotAllowed { allowed } => {
            let allowed = allowed.join(", ");
            let mut d = d.deny(
                DenyReason::MethodNotAllowed,
                format!(
                    "{} is not allowed on this path; allowed: {allowed}",
                    echoed(&req.method)
                ),
            );
            d.allow_methods = Some(allowed);
            Routing::Decided(d)
        }
        RouteMatch::NotFound => Routing::Decided(match snapshot.routes.unmatched() {
            Unmatched::Allow => d.allow(),
            Unmatched::Deny => d.deny(
                DenyReason::NoRoute,
                format!(
                    "no API route matches {} {}",
                    echoed(&req.method),
                    echoed(req.path.split(['?', '#']).next().unwrap_or(""))
                ),
            ),
        }),
        RouteMatch::BadPath { reason } => Routing::Decided(d.deny(DenyReason::BadPath, reason)),
        RouteMatch::BadMethod { problem } => Routing::Decided(d.deny(
            DenyReason::BadMethod,
            format!("the method '{}' {problem}", echoed(&req.method)),
        )),
    }
}

/// The most characters of the client's own input (its method, its path) a
/// refusal's detail repeats back.
pub const MAX_ECHOED_CHARS: usize = 256;

/// `text` as a detail repeats it: whole up to [`MAX_ECHOED_CHARS`]
/// characters, else cut there and marked with `…`, so that a megabyte of
/// path is not answered with a megabyte of problem document.
fn echoed(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHOED_CHARS) {
        None => text.into(),
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
    }
}
