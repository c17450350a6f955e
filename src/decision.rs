//! The outcome of the pipeline for one request, and its client-facing
//! rendering as an RFC 9457 problem document. Adapters turn a `Decision`
//! into their wire format; nothing here knows a wire format.

use serde::{Deserialize, Serialize};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The request may pass.
    Allow,
    /// The request is refused.
    Deny,
}

/// Why a request was denied: a stable code, one per kind of denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// No credentials on a route that needs them.
    Unauthenticated,
    /// Credentials were present but invalid.
    InvalidCredentials,
    /// The policies do not permit the request.
    Forbidden,
    /// A policy failed to evaluate; denied because an erroring `forbid`
    /// must never let a `permit` through.
    PolicyError,
    /// No route matches the path.
    NoRoute,
    /// The path matches, the method does not.
    MethodNotAllowed,
    /// The path cannot be decoded.
    BadPath,
    /// The route's resource does not exist.
    UnknownResource,
    /// The decision could not be recorded in the audit trail and the
    /// trail is configured to fail closed.
    AuditUnavailable,
    /// Credentials could not be checked right now (the issuer's keys or the
    /// introspection endpoint unavailable).
    AuthnUnavailable,
    /// The source failed authentication too often and is blocked.
    TooManyFailedAttempts,
    /// A quota limit refused the request.
    QuotaExceeded,
    /// The quota store could not be asked and the configured mode denies.
    QuotaUnavailable,
    /// The request's quota cost (header or body field) is not a number.
    BadQuotaCost,
    /// The anomaly detector blocked the principal or source for a while.
    AnomalyBlocked,
    /// The body is not well-formed (not JSON, bad UTF-8, too deep,
    /// duplicate keys, numbers out of range, missing).
    MalformedBody,
    /// The body is well-formed but breaks the route's schema or the model
    /// version's input constraints.
    InvalidBody,
    /// The body is larger than the route accepts (or arrived partial).
    BodyTooLarge,
    /// The body's Content-Type is not one the route accepts.
    UnsupportedMediaType,
    /// The route names a model the registry does not have.
    UnknownModel,
    /// The model exists, the version (or alias) does not.
    UnknownModelVersion,
    /// The model version is past its sunset date.
    ModelVersionRetired,
    /// The body carries personal data on a route that refuses it.
    PiiDetected,
    /// The caller's org may not have its data processed in the gateway's
    /// region.
    ResidencyViolation,
    /// A payload signature is required and missing, wrong, expired or
    /// replayed.
    InvalidSignature,
}

impl DenyReason {
    /// HTTP status for the client.
    pub fn status(self) -> u16 {
        match self {
            DenyReason::Unauthenticated | DenyReason::InvalidCredentials => 401,
            DenyReason::Forbidden | DenyReason::PolicyError => 403,
            DenyReason::NoRoute | DenyReason::UnknownResource => 404,
            DenyReason::MethodNotAllowed => 405,
            DenyReason::BadPath => 400,
            DenyReason::AuditUnavailable => 503,
            DenyReason::AuthnUnavailable => 503,
            DenyReason::TooManyFailedAttempts => 429,
            DenyReason::QuotaExceeded => 429,
            DenyReason::QuotaUnavailable => 503,
            DenyReason::BadQuotaCost => 400,
            DenyReason::AnomalyBlocked => 429,
            DenyReason::MalformedBody => 400,
            DenyReason::InvalidBody | DenyReason::PiiDetected => 422,
            DenyReason::BodyTooLarge => 413,
            DenyReason::UnsupportedMediaType => 415,
            DenyReason::UnknownModel | DenyReason::UnknownModelVersion => 404,
            DenyReason::ModelVersionRetired => 410,
            DenyReason::ResidencyViolation => 403,
            DenyReason::InvalidSignature => 401,
        }
    }

    /// The stable code (problem `type` suffix, logs, metrics).
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::Unauthenticated => "unauthenticated",
            DenyReason::InvalidCredentials => "invalid_credentials",
            DenyReason::Forbidden => "forbidden",
            DenyReason::PolicyError => "policy_error",
            DenyReason::NoRoute => "no_route",
            DenyReason::MethodNotAllowed => "method_not_allowed",
            DenyReason::BadPath => "bad_path",
            DenyReason::UnknownResource => "unknown_resource",
            DenyReason::AuditUnavailable => "audit_unavailable",
            DenyReason::AuthnUnavailable => "authentication_unavailable",
            DenyReason::TooManyFailedAttempts => "too_many_failed_attempts",
            DenyReason::QuotaExceeded => "quota_exceeded",
            DenyReason::QuotaUnavailable => "quota_unavailable",
            DenyReason::BadQuotaCost => "bad_quota_cost",
            DenyReason::AnomalyBlocked => "anomaly_blocked",
            DenyReason::MalformedBody => "malformed_body",
            DenyReason::InvalidBody => "invalid_body",
            DenyReason::BodyTooLarge => "body_too_large",
            DenyReason::UnsupportedMediaType => "unsupported_media_type",
            DenyReason::UnknownModel => "unknown_model",
            DenyReason::UnknownModelVersion => "unknown_model_version",
            DenyReason::ModelVersionRetired => "model_version_retired",
            DenyReason::PiiDetected => "pii_detected",
            DenyReason::ResidencyViolation => "residency_violation",
            DenyReason::InvalidSignature => "invalid_signature",
        }
    }

    fn title(self) -> &'static str {
        match self {
            DenyReason::Unauthenticated => "Authentication required",
            DenyReason::InvalidCredentials => "Invalid credentials",
            DenyReason::Forbidden => "Forbidden",
            DenyReason::PolicyError => "Forbidden",
            DenyReason::NoRoute => "Not found",
            DenyReason::MethodNotAllowed => "Method not allowed",
            DenyReason::BadPath => "Bad request path",
            DenyReason::UnknownResource => "Not found",
            DenyReason::AuditUnavailable => "Service unavailable",
            DenyReason::AuthnUnavailable => "Authentication unavailable",
            DenyReason::TooManyFailedAttempts => "Too many failed attempts",
            DenyReason::QuotaExceeded => "Too many requests",
            DenyReason::QuotaUnavailable => "Service unavailable",
            DenyReason::BadQuotaCost => "Bad request",
            DenyReason::AnomalyBlocked => "Temporarily blocked",
            DenyReason::MalformedBody => "Malformed request body",
            DenyReason::InvalidBody => "Invalid request body",
            DenyReason::BodyTooLarge => "Request body too large",
            DenyReason::UnsupportedMediaType => "Unsupported media type",
            DenyReason::UnknownModel => "Not found",
            DenyReason::UnknownModelVersion => "Unknown model version",
            DenyReason::ModelVersionRetired => "Model version retired",
            DenyReason::PiiDetected => "Personal data not accepted",
            DenyReason::ResidencyViolation => "Outside the allowed region",
            DenyReason::InvalidSignature => "Invalid payload signature",
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
    pub quota: Option<crate::quota::apply::QuotaOutcome>,
    /// For a blocked source (429): seconds until it may try again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// What the decision would be with the shadow policies switched on
    /// (only when the snapshot has shadow policies and authorization ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowOutcome>,
    /// For 400/422: each problem with the body, `{pointer, message}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<crate::validate::Problem>,
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
            id: uuid::Uuid::now_v7().to_string(),
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

    /// The RFC 9457 problem document for a denial.
    pub fn problem_json(&self) -> String {
        let reason = self.reason.unwrap_or(DenyReason::Forbidden);
        let mut problem = serde_json::json!({
            "type": format!("urn:portcullis:problem:{}", reason.code()),
            "title": reason.title(),
            "status": self.status,
            "detail": self.detail,
            "decision_id": self.id,
        });
        if let (Some(q), DenyReason::QuotaExceeded) = (&self.quota, reason) {
            problem["quota"] = serde_json::json!({
                "limit": q.limit,
                "window_seconds": q.window_seconds,
                "remaining": q.remaining,
                "retry_after_seconds": q.retry_after_seconds,
            });
        }
        if !self.problems.is_empty() {
            problem["errors"] = serde_json::json!(self.problems);
        }
        problem.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_document_carries_status_and_id_but_no_errors() {
        let mut d = Decision::new("v1").deny(DenyReason::Forbidden, "not permitted");
        d.errors.push("policy p1: secret internal detail".into());
        let v: serde_json::Value = serde_json::from_str(&d.problem_json()).unwrap();
        assert_eq!(v["status"], 403);
        assert_eq!(v["title"], "Forbidden");
        assert_eq!(v["decision_id"], d.id.as_str());
        assert_eq!(v["type"], "urn:portcullis:problem:forbidden");
        assert!(!d.problem_json().contains("secret internal"));
    }

    #[test]
    fn statuses_follow_reasons() {
        assert_eq!(DenyReason::Unauthenticated.status(), 401);
        assert_eq!(DenyReason::InvalidCredentials.status(), 401);
        assert_eq!(DenyReason::PolicyError.status(), 403);
        assert_eq!(DenyReason::NoRoute.status(), 404);
        assert_eq!(DenyReason::MethodNotAllowed.status(), 405);
        assert_eq!(DenyReason::BadPath.status(), 400);
    }

    #[test]
    fn decision_ids_are_unique() {
        assert_ne!(Decision::new("v").id, Decision::new("v").id);
    }
}
