//! The outcome of the pipeline for one request (`Decision`) and every
//! outcome type it carries: why it was refused (`outcome`: the reason and
//! the one table from an outcome to what a client sees), what quota
//! decided (`quota`), what is wrong with a body ([`Problem`]). Nothing here
//! knows a wire format; adapters render through `outcome`.

pub mod outcome;
pub mod quota;

use serde::{Deserialize, Serialize};

pub use outcome::{DenyReason, GrpcCode, Kind};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The request may pass.
    Allow,
    /// The request is refused.
    Deny,
}

/// One thing wrong with a request body: where (a JSON pointer into the
/// request, "" for the whole body) and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// RFC 6901 JSON pointer into the request body.
    pub pointer: String,
    /// What is wrong and how to fix it; never the offending value.
    pub message: String,
}

impl Problem {
    /// A problem at `pointer`.
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// The decision on one request.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Unique, time-ordered decision id (UUIDv7).
    pub id: String,
    /// Allow or deny.
    pub decision: Outcome,
    /// HTTP status the client gets (200 on allow).
    pub status: u16,
    /// Why it was denied; `None` on allow.
    pub reason: Option<DenyReason>,
    /// What the client is told (safe to show: no policy text, no internals).
    pub detail: String,
    /// The Cedar principal, e.g. `User::"alice"`.
    pub principal: Option<String>,
    /// The authentication method (`jwt`, `mtls`, `anonymous`).
    pub auth_method: Option<&'static str>,
    /// The Cedar action, e.g. `Action::"invoke"`.
    pub action: Option<String>,
    /// The Cedar resource, e.g. `ModelVersion::"sentiment/v2"`.
    pub resource: Option<String>,
    /// The matched route's name.
    pub route: Option<String>,
    /// Ids of the policies that determined the outcome.
    pub determining_policies: Vec<String>,
    /// Evaluation errors and authentication failure reasons, for operators
    /// (logs, audit), never sent to the client.
    pub errors: Vec<String>,
    /// The policy snapshot version that decided.
    pub policy_version: String,
    /// For 405: the methods the path accepts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<String>,
    /// The quota outcome (limit that decided, remaining, degraded mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<Box<quota::QuotaOutcome>>,
    /// For a blocked source (429): seconds until it may try again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// What the decision would be with the shadow policies switched on
    /// (only when the snapshot has shadow policies and authorization ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Box<ShadowOutcome>>,
    /// For 400/422: each problem with the body, `{pointer, message}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// Per descriptor of a rate-limit call, in order: the state of the
    /// limit that applied (`None` where none did).
    #[serde(skip)]
    pub limits: Vec<Option<quota::LimitStatus>>,
    /// The token reservation this decision made (settled from the
    /// response through ext_proc).
    #[serde(skip)]
    pub reserved: Option<Box<quota::Reserved>>,
    /// Headers set on the request to the upstream on allow (e.g.
    /// `x-portcullis-pii`).
    #[serde(skip)]
    pub upstream_headers: Vec<(String, String)>,
    /// Headers added to the client's response (e.g. `Deprecation`,
    /// `Sunset`).
    #[serde(skip)]
    pub response_headers: Vec<(String, String)>,
    /// Request headers removed before the upstream sees them
    /// (minimisation, the route's `headers_to_remove`).
    #[serde(skip)]
    pub strip_headers: Vec<String>,
}

/// The outcome of the candidate policy set (enforced plus shadow) for a
/// request; recorded, never enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowOutcome {
    /// Allow or deny under the candidate set.
    pub decision: Outcome,
    /// True when it differs from the enforced outcome.
    pub disagrees: bool,
    /// Determining policies under the candidate set.
    pub determining_policies: Vec<String>,
    /// Evaluation errors under the candidate set.
    pub errors: Vec<String>,
}

impl Decision {
    /// A fresh decision for a snapshot version, denied by default.
    pub fn new(policy_version: &str) -> Self {
        Decision {
            // The hyphenated lower-case form `Display` writes, without `fmt`.
            id: uuid::Uuid::now_v7()
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .to_owned(),
            decision: Outcome::Deny,
            status: 403,
            reason: Some(DenyReason::Forbidden),
            detail: String::new(),
            principal: None,
            auth_method: None,
            action: None,
            resource: None,
            route: None,
            determining_policies: Vec::new(),
            errors: Vec::new(),
            policy_version: policy_version.to_string(),
            allow_methods: None,
            shadow: None,
            retry_after_seconds: None,
            quota: None,
            limits: Vec::new(),
            reserved: None,
            problems: Vec::new(),
            upstream_headers: Vec::new(),
            response_headers: Vec::new(),
            strip_headers: Vec::new(),
        }
    }

    /// Marks the decision as allowed.
    pub fn allow(mut self) -> Self {
        self.decision = Outcome::Allow;
        self.status = 200;
        self.reason = None;
        self.detail = String::new();
        self
    }

    /// Marks the decision as denied with a reason and a client-safe detail.
    pub fn deny(mut self, reason: DenyReason, detail: impl Into<String>) -> Self {
        self.decision = Outcome::Deny;
        self.status = reason.status();
        self.reason = Some(reason);
        self.detail = detail.into();
        self
    }

    /// True when the request may pass.
    pub fn is_allowed(&self) -> bool {
        self.decision == Outcome::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_are_unique() {
        assert_ne!(Decision::new("v").id, Decision::new("v").id);
    }
}
