//! The one decision path. Every front door (ext_authz `Check`, RLS
//! `ShouldRateLimit`, the admin API, offline `check`, policy tests, diff,
//! `Explain`) calls [`decide`] with what is asked ([`Ask`]) and how
//! ([`Mode`]); it returns the [`Decision`]. The stages run top to bottom in
//! [`access`]; each lives in `stages.rs` and either lets the request go on
//! or decides it. Recording (log, anomaly feed, audit trail, metrics) is
//! the last step, in `record.rs`, for enforced decisions only.
//!
//! Invariants: a request holds one snapshot for its whole evaluation;
//! denials are values (a `Decision`), failures of our own parts are mapped
//! to a denial in exactly one place each; quota is charged last, so a
//! request any other stage refuses never consumes quota.

mod calls;
mod record;
mod reserve;
pub mod response;
mod stages;

use std::time::Instant;

use cedar_policy::EntityUid;

use crate::anomaly::Detector;
use crate::audit::AuditSink;
use crate::authn::{Authenticator, Identity};
use crate::decision::Decision;
use crate::policy::Snapshot;
use crate::quota::apply::Descriptor;
use crate::quota::Quotas;
use crate::request::AccessRequest;

pub use stages::{anonymous, PII_HEADER};

/// What is asked.
#[derive(Debug, Clone, Copy)]
pub enum Ask<'r> {
    /// An HTTP request at the gateway (ext_authz `Check`, forward-auth,
    /// offline `check`): every stage.
    Access(&'r AccessRequest),
    /// A rate-limit call (RLS `ShouldRateLimit`): only the quota stage.
    RateLimit(RateLimit<'r>),
    /// An admin API call: authentication and authorization of the call
    /// itself.
    Admin(&'r AdminCall<'r>),
}

/// A rate-limit call: its domain and descriptors (with their costs), and
/// the request it stands for in logs and the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit<'r> {
    /// `AccessRequest::for_ratelimit(domain)`: RLS carries no HTTP request.
    pub request: &'r AccessRequest,
    /// The quota domain.
    pub domain: &'r str,
    /// The descriptors, in order.
    pub descriptors: &'r [Descriptor],
}

/// An admin API call: who calls (credentials in `request.headers`, the
/// caller's address in `request.source_ip`), which RPC, and the Cedar
/// action and resource it needs.
#[derive(Debug, Clone)]
pub struct AdminCall<'r> {
    /// The call as a request (method `POST`, path `/<rpc>`).
    pub request: &'r AccessRequest,
    /// `package.Service/Method`.
    pub rpc: &'r str,
    /// The Cedar action id, e.g. `audit:read`.
    pub action: &'r str,
    /// The Cedar resource, e.g. `AuditLog::"main"`.
    pub resource: EntityUid,
}

/// How a decision is made.
#[derive(Debug, Clone)]
pub enum Mode<'a> {
    /// A real request: credentials are verified, the anomaly detector
    /// consulted, quotas charged, and the decision logged and recorded.
    Enforce(Live<'a>),
    /// As `Enforce` up to authorization (credentials verified), but
    /// nothing is charged, logged or recorded (admin `Explain`).
    Explain(&'a Authenticator),
    /// The identity (or none: anonymous) and the anomaly risk score are
    /// given instead of credentials; nothing is charged, logged or recorded
    /// (offline `check`, policy tests, diff, `Explain` with an identity).
    As {
        /// The caller, `None` for a request without credentials.
        identity: Option<Identity>,
        /// `context.risk`, 0 to 100.
        risk: u8,
    },
}

/// The front door a call came through: named in its audit record
/// (`adapter`) and its metrics (`service`). The decision itself never
/// depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// Envoy ext_authz `Check` (gRPC).
    ExtAuthz,
    /// The forward-auth HTTP listener (nginx, Caddy, Traefik, Envoy's HTTP
    /// mode, Gateway API).
    ForwardAuth,
    /// Envoy RLS `ShouldRateLimit`.
    RateLimit,
    /// The admin API.
    Admin,
    /// Envoy ext_proc `Process`: the response side (no decision; its
    /// response records name it).
    ExtProc,
}

impl Door {
    /// The name in audit records and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Door::ExtAuthz => "ext_authz",
            Door::ForwardAuth => "forward_auth",
            Door::RateLimit => "ratelimit",
            Door::Admin => "admin",
            Door::ExtProc => "ext_proc",
        }
    }
}

/// The running parts an enforced decision uses.
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    /// Which front door asks.
    pub door: Door,
    /// Credential verification.
    pub authenticator: &'a Authenticator,
    /// Quota enforcement.
    pub quotas: &'a Quotas,
    /// The audit trail; `None`: decisions are not recorded (benchmarks,
    /// tests of the stages).
    pub audit: Option<&'a AuditSink>,
    /// The anomaly detector, when enabled.
    pub anomalies: Option<&'a Detector>,
}

/// Decides what is asked against one snapshot. Authentication may wait (a
/// JWKS refetch on an unknown `kid`) and quotas may ask Redis, so this is
/// async; everything else is plain computation.
pub async fn decide(snapshot: &Snapshot, ask: Ask<'_>, mode: Mode<'_>) -> Decision {
    let started = Instant::now();
    let decision = match ask {
        Ask::Access(req) => access(snapshot, req, &mode).await,
        Ask::RateLimit(call) => calls::ratelimit(snapshot, &call, &mode).await,
        Ask::Admin(call) => calls::admin(snapshot, call, &mode).await,
    };
    match mode {
        Mode::Enforce(live) => record::record(&live, ask, decision, started).await,
        _ => decision,
    }
}

/// [`decide`] for the offline modes, which never wait: no credentials to
/// verify (the identity is given) and no quota to charge.
pub fn decide_offline(
    snapshot: &Snapshot,
    req: &AccessRequest,
    identity: Option<Identity>,
    risk: u8,
) -> Decision {
    let mode = Mode::As { identity, risk };
    let mut future = std::pin::pin!(decide(snapshot, Ask::Access(req), mode));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(future.as_mut(), &mut cx) {
        std::task::Poll::Ready(decision) => decision,
        std::task::Poll::Pending => unreachable!("an offline decision awaited a stage"),
    }
}

/// The stages of an HTTP request, top to bottom. A stage returns what the
/// next one needs, or the refusal (`Err`) that ends the path.
async fn access(snapshot: &Snapshot, req: &AccessRequest, mode: &Mode<'_>) -> Decision {
    // 1. Route: what is asked for (a request no route takes is decided
    // here, before any credential is looked at).
    let mut at = match stages::route(snapshot, req) {
        stages::Routing::Routed(routed) => routed,
        stages::Routing::Decided(decided) => return decided,
    };
    let verdict: Result<(), stages::Refusal> = async {
        stages::screen_source(mode, req)?; // a blocked source: before credentials
        let identity = stages::authenticate(req, mode, &mut at).await?; // 2. who is asking
        let risk = stages::assess(mode, req, &at)?; // anomaly risk, blocked principal
        stages::residency(snapshot, req, &identity)?; // before anything reads the content
        let model = stages::model_version(snapshot, req, &mut at)?; // the registry decides what exists
        let resource = stages::resource(snapshot, &mut at)?; // 3. which entity
        stages::authorize(snapshot, req, &identity, &resource, risk, &mut at)?; // 4. may they
        stages::validate(snapshot, req, model, &mut at)?; // 5. is the body acceptable
        stages::charge(snapshot, mode, req, &identity, &mut at).await // 6. quota, last
    }
    .await;
    match verdict {
        Ok(()) => at.d.allow(),
        Err(refusal) => refusal.deny(at.d),
    }
}
