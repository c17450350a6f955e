//! The outcome table: from a decision to everything a client sees of it
//! (HTTP status, gRPC code, RFC 9457 problem type and title,
//! `WWW-Authenticate`, `Retry-After`, `Allow`, rate-limit headers). Every
//! adapter (ext_authz, RLS, admin, forward-auth) renders from here and
//! nowhere else.

use serde::Serialize;

use super::Decision;

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
    /// The method is empty, not a token, or not upper case (RFC 9110
    /// sections 5.6.2 and 9.1).
    BadMethod,
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
    /// The route validates request bodies and the gateway did not forward
    /// the body (forward-auth: nginx's `auth_request` never does; Caddy,
    /// Traefik and Envoy's HTTP mode only when configured to). Not the
    /// client's fault and not a passing condition: the deployment cannot
    /// check this route, so it refuses it rather than allow it unvalidated.
    BodyNotForwarded,
    /// A token reservation is open under the request's `x-request-id`: a
    /// second request under the id of one still open (the responses
    /// could not be told apart when they settle).
    RequestIdInUse,
}

/// gRPC status codes (grpc/grpc `doc/statuscodes.md`), by their numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[repr(i32)]
pub enum GrpcCode {
    /// 0: not an error.
    Ok = 0,
    /// 3: the client must change its request.
    InvalidArgument = 3,
    /// 5: what was asked for does not exist.
    NotFound = 5,
    /// 6: what the request would create exists already.
    AlreadyExists = 6,
    /// 7: the caller may not do this.
    PermissionDenied = 7,
    /// 8: a quota or rate limit is spent.
    ResourceExhausted = 8,
    /// 13: the deployment cannot do what the request needs.
    Internal = 13,
    /// 12: the operation is not supported here.
    Unimplemented = 12,
    /// 14: try again later.
    Unavailable = 14,
    /// 16: no valid credentials.
    Unauthenticated = 16,
}

/// Whether a refusal is a policy answer or a failure to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The policies (or the request's own form) refuse it: the client is
    /// told why; adapters answer it as a denial.
    Denial,
    /// Portcullis could not decide or record the decision (audit trail,
    /// key sets, introspection unavailable): where the protocol lets the
    /// gateway's own failure mode decide (RLS), adapters answer with a gRPC
    /// error instead of a denial.
    Failure,
}

/// Everything a client sees of one kind of refusal: one row of the
/// outcome table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// HTTP status (RFC 9110 section 15).
    pub status: u16,
    /// The gRPC code: `CheckResponse.status.code` (Envoy ext_authz), the
    /// admin API's status, RLS errors. Follows the gRPC HTTP-to-gRPC
    /// mapping where one exists (401, 403, 404, 429, 503).
    pub grpc: GrpcCode,
    /// The stable code: problem `type` suffix, logs, metrics, audit.
    pub code: &'static str,
    /// The RFC 9457 problem `title`.
    pub title: &'static str,
    /// Denial or failure.
    pub kind: Kind,
}

const fn row(status: u16, grpc: GrpcCode, code: &'static str, title: &'static str) -> Row {
    Row {
        status,
        grpc,
        code,
        title,
        kind: Kind::Denial,
    }
}

const fn failure(code: &'static str, title: &'static str) -> Row {
    Row {
        status: 503,
        grpc: GrpcCode::Unavailable,
        code,
        title,
        kind: Kind::Failure,
    }
}

impl DenyReason {
    /// The outcome table: the one place a refusal becomes an HTTP status,
    /// a gRPC code, a problem type and title. Every adapter renders from
    /// it.
    pub const fn row(self) -> Row {
        use GrpcCode::*;
        match self {
            DenyReason::Unauthenticated => row(
                401,
                Unauthenticated,
                "unauthenticated",
                "Authentication required",
            ),
            DenyReason::InvalidCredentials => row(
                401,
                Unauthenticated,
                "invalid_credentials",
                "Invalid credentials",
            ),
            DenyReason::InvalidSignature => row(
                401,
                Unauthenticated,
                "invalid_signature",
                "Invalid payload signature",
            ),
            DenyReason::Forbidden => row(403, PermissionDenied, "forbidden", "Forbidden"),
            DenyReason::PolicyError => row(403, PermissionDenied, "policy_error", "Forbidden"),
            DenyReason::ResidencyViolation => row(
                403,
                PermissionDenied,
                "residency_violation",
                "Outside the allowed region",
            ),
            DenyReason::NoRoute => row(404, NotFound, "no_route", "Not found"),
            DenyReason::UnknownResource => row(404, NotFound, "unknown_resource", "Not found"),
            DenyReason::UnknownModel => row(404, NotFound, "unknown_model", "Not found"),
            DenyReason::UnknownModelVersion => row(
                404,
                NotFound,
                "unknown_model_version",
                "Unknown model version",
            ),
            DenyReason::ModelVersionRetired => row(
                410,
                NotFound,
                "model_version_retired",
                "Model version retired",
            ),
            DenyReason::MethodNotAllowed => row(
                405,
                Unimplemented,
                "method_not_allowed",
                "Method not allowed",
            ),
            DenyReason::BadPath => row(400, InvalidArgument, "bad_path", "Bad request path"),
            DenyReason::BadMethod => row(400, InvalidArgument, "bad_method", "Bad request method"),
            DenyReason::BadQuotaCost => row(400, InvalidArgument, "bad_quota_cost", "Bad request"),
            DenyReason::MalformedBody => row(
                400,
                InvalidArgument,
                "malformed_body",
                "Malformed request body",
            ),
            DenyReason::BodyTooLarge => row(
                413,
                InvalidArgument,
                "body_too_large",
                "Request body too large",
            ),
            DenyReason::UnsupportedMediaType => row(
                415,
                InvalidArgument,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            DenyReason::InvalidBody => {
                row(422, InvalidArgument, "invalid_body", "Invalid request body")
            }
            DenyReason::PiiDetected => row(
                422,
                InvalidArgument,
                "pii_detected",
                "Personal data not accepted",
            ),
            DenyReason::TooManyFailedAttempts => row(
                429,
                ResourceExhausted,
                "too_many_failed_attempts",
                "Too many failed attempts",
            ),
            DenyReason::QuotaExceeded => row(
                429,
                ResourceExhausted,
                "quota_exceeded",
                "Too many requests",
            ),
            DenyReason::RequestIdInUse => {
                row(409, AlreadyExists, "request_id_in_use", "Request id in use")
            }
            DenyReason::AnomalyBlocked => row(
                429,
                ResourceExhausted,
                "anomaly_blocked",
                "Temporarily blocked",
            ),
            // The operator chose `on_store_error: deny`: a deliberate answer.
            DenyReason::QuotaUnavailable => {
                row(503, Unavailable, "quota_unavailable", "Service unavailable")
            }
            // A deployment that cannot check the route: a server error, the
            // same however often the client retries.
            DenyReason::BodyNotForwarded => row(
                500,
                Internal,
                "body_not_forwarded",
                "Request body not forwarded for checking",
            ),
            DenyReason::AuditUnavailable => failure("audit_unavailable", "Service unavailable"),
            DenyReason::AuthnUnavailable => {
                failure("authentication_unavailable", "Authentication unavailable")
            }
        }
    }

    /// HTTP status for the client.
    pub const fn status(self) -> u16 {
        self.row().status
    }

    /// The stable code (problem `type` suffix, logs, metrics).
    pub const fn code(self) -> &'static str {
        self.row().code
    }

    /// The gRPC code.
    pub const fn grpc(self) -> GrpcCode {
        self.row().grpc
    }

    /// Denial or failure.
    pub const fn kind(self) -> Kind {
        self.row().kind
    }
}

/// Text allowed in an RFC 6750 `error_description` (section 3): printable
/// ASCII without `"` and `\`.
fn quoted_string(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

/// The RFC 9457 (section 3.1) members of [`Decision::problem_json`], in
/// the order they are written.
#[derive(Serialize)]
struct ProblemDocument<'a> {
    #[serde(rename = "type")]
    problem_type: ProblemType,
    title: &'static str,
    status: u16,
    detail: &'a str,
    decision_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<QuotaProblem>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [super::Problem],
}

/// A problem type URI, `urn:portcullis:problem:<code>`.
struct ProblemType(&'static str);

impl Serialize for ProblemType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("urn:portcullis:problem:{}", self.0))
    }
}

/// The `quota` member of a `quota_exceeded` problem document.
#[derive(Serialize)]
struct QuotaProblem {
    limit: u64,
    window_seconds: u64,
    remaining: u64,
    retry_after_seconds: Option<u64>,
}

impl Decision {
    /// The RFC 9457 problem document for a denial: `type`
    /// (`urn:portcullis:problem:<reason code>`), `title`, `status`,
    /// `detail`, `decision_id`, then `quota` (limit, window, remaining,
    /// retry after, in seconds) on a `quota_exceeded` denial and `errors`
    /// (the body's problems, JSON pointer and message) when there are any.
    /// Written in one pass from the decision (no `serde_json::Value`).
    pub fn problem_json(&self) -> String {
        let reason = self.reason.unwrap_or(DenyReason::Forbidden);
        let row = reason.row();
        let document = ProblemDocument {
            problem_type: ProblemType(row.code),
            title: row.title,
            status: self.status,
            detail: &self.detail,
            decision_id: &self.id,
            quota: match (&self.quota, reason) {
                (Some(q), DenyReason::QuotaExceeded) => Some(QuotaProblem {
                    limit: q.limit,
                    window_seconds: q.window_seconds,
                    remaining: q.remaining,
                    retry_after_seconds: q.retry_after_seconds,
                }),
                _ => None,
            },
            errors: &self.problems,
        };
        serde_json::to_string(&document).expect("a problem document serialises")
    }

    /// The gRPC code of this decision (`Ok` when allowed).
    pub fn grpc(&self) -> GrpcCode {
        match self.reason {
            None if self.is_allowed() => GrpcCode::Ok,
            reason => reason.unwrap_or(DenyReason::Forbidden).grpc(),
        }
    }

    /// True when the decision is a failure to decide or record (see
    /// [`Kind::Failure`]).
    pub fn is_failure(&self) -> bool {
        self.reason.is_some_and(|r| r.kind() == Kind::Failure)
    }

    /// The headers of the client's response, names lower case: on a denial
    /// the problem document's `content-type`, the decision id,
    /// `cache-control: no-store`, the challenge (`www-authenticate`, RFC
    /// 6750 section 3), `allow` (405), `retry-after`; on both, the quota's
    /// `ratelimit-*` headers and the route's own (`deprecation`, `sunset`).
    pub fn client_headers(&self) -> Vec<(String, String)> {
        let mut h = Vec::new();
        self.for_each_client_header(|k, v| h.push((k.to_string(), v.to_string())));
        h
    }

    /// [`Decision::client_headers`], each handed to `f` as name and value,
    /// in that order, without collecting them (the `Check` answer writes
    /// them straight into its message).
    pub fn for_each_client_header(&self, mut f: impl FnMut(&str, &str)) {
        if !self.is_allowed() {
            f("content-type", PROBLEM_JSON);
            f(DECISION_HEADER, &self.id);
            f("cache-control", "no-store");
            match self.reason {
                Some(DenyReason::Unauthenticated) => {
                    f("www-authenticate", "Bearer realm=\"portcullis\"")
                }
                Some(DenyReason::InvalidCredentials) => f(
                    "www-authenticate",
                    &format!(
                        "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{}\"",
                        quoted_string(&self.detail)
                    ),
                ),
                Some(DenyReason::MethodNotAllowed) => {
                    if let Some(allow) = &self.allow_methods {
                        f("allow", allow);
                    }
                }
                _ => {}
            }
            if let Some(seconds) = self.retry_after_seconds {
                f("retry-after", itoa::Buffer::new().format(seconds));
            }
        }
        if let Some(q) = &self.quota {
            q.for_each_header(&mut f);
        }
        for (k, v) in &self.response_headers {
            f(k, v);
        }
    }
}

/// The media type of problem documents (RFC 9457 section 3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The response header that names the decision, for support requests.
pub const DECISION_HEADER: &str = "x-portcullis-decision-id";

#[cfg(test)]
mod tests {
    use super::*;

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
    fn not_found_is_not_found_on_grpc_too() {
        // Before the table, 404, 413 and 415 all became PERMISSION_DENIED.
        assert_eq!(DenyReason::NoRoute.grpc(), GrpcCode::NotFound);
        assert_eq!(DenyReason::UnknownModelVersion.grpc(), GrpcCode::NotFound);
        assert_eq!(DenyReason::BodyTooLarge.grpc(), GrpcCode::InvalidArgument);
        assert_eq!(
            DenyReason::UnsupportedMediaType.grpc(),
            GrpcCode::InvalidArgument
        );
        assert_eq!(
            DenyReason::QuotaExceeded.grpc(),
            GrpcCode::ResourceExhausted
        );
        assert_eq!(DenyReason::AuditUnavailable.grpc(), GrpcCode::Unavailable);
    }

    #[test]
    fn failures_are_only_what_could_not_be_decided_or_recorded() {
        let failures: Vec<_> = ALL.iter().filter(|r| r.kind() == Kind::Failure).collect();
        assert_eq!(
            failures,
            [&DenyReason::AuditUnavailable, &DenyReason::AuthnUnavailable]
        );
    }

    #[test]
    fn every_reason_has_its_own_code_and_a_status_matching_its_grpc_code() {
        let mut codes: Vec<_> = ALL.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len());
        for r in ALL {
            let expected = match r.status() {
                401 => GrpcCode::Unauthenticated,
                403 => GrpcCode::PermissionDenied,
                404 | 410 => GrpcCode::NotFound,
                405 => GrpcCode::Unimplemented,
                409 => GrpcCode::AlreadyExists,
                429 => GrpcCode::ResourceExhausted,
                500 => GrpcCode::Internal,
                503 => GrpcCode::Unavailable,
                _ => GrpcCode::InvalidArgument,
            };
            assert_eq!(r.grpc(), expected, "{r:?}");
        }
    }

    #[test]
    fn error_description_stays_within_rfc_6750_characters() {
        assert_eq!(quoted_string("a \"b\" \\c\u{e9}\n"), "a 'b' /c??");
    }

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
    fn problem_documents_are_written_member_by_member_in_their_order() {
        use crate::decision::quota::QuotaOutcome;
        let spent = || {
            Box::new(QuotaOutcome {
                descriptor: "principal".into(),
                name: None,
                stats_key: String::new(),
                limit: 600,
                window_seconds: 60,
                remaining: 0,
                reset_seconds: 12,
                retry_after_seconds: Some(12),
                shadow_exceeded: Vec::new(),
                degraded: None,
                cost_too_large: None,
            })
        };
        let mut d = Decision::new("v1").deny(DenyReason::QuotaExceeded, "spent \"quickly\"");
        d.quota = Some(spent());
        assert_eq!(
            d.problem_json(),
            format!(
                r#"{{"type":"urn:portcullis:problem:quota_exceeded","title":"{}","status":429,"detail":"spent \"quickly\"","decision_id":"{}","quota":{{"limit":600,"window_seconds":60,"remaining":0,"retry_after_seconds":12}}}}"#,
                DenyReason::QuotaExceeded.row().title,
                d.id
            )
        );
        // The body's problems; a quota member only on quota_exceeded.
        let mut d = Decision::new("v1").deny(DenyReason::InvalidBody, "invalid body");
        d.problems.push(crate::decision::Problem::new(
            "/max_tokens",
            "must be at most 4096",
        ));
        d.quota = Some(spent());
        assert_eq!(
            d.problem_json(),
            format!(
                r#"{{"type":"urn:portcullis:problem:invalid_body","title":"{}","status":{},"detail":"invalid body","decision_id":"{}","errors":[{{"pointer":"/max_tokens","message":"must be at most 4096"}}]}}"#,
                DenyReason::InvalidBody.row().title,
                d.status,
                d.id
            )
        );
    }

    #[test]
    fn invalid_credentials_carry_an_rfc_6750_challenge() {
        let d = Decision::new("v1").deny(DenyReason::InvalidCredentials, "expired");
        let h = d.client_headers();
        let challenge = &h.iter().find(|(k, _)| k == "www-authenticate").unwrap().1;
        assert_eq!(
            challenge,
            r#"Bearer realm="portcullis", error="invalid_token", error_description="expired""#
        );
        assert!(h
            .iter()
            .any(|(k, v)| k == "content-type" && v == PROBLEM_JSON));
    }

    const ALL: [DenyReason; 28] = [
        DenyReason::Unauthenticated,
        DenyReason::InvalidCredentials,
        DenyReason::InvalidSignature,
        DenyReason::Forbidden,
        DenyReason::PolicyError,
        DenyReason::ResidencyViolation,
        DenyReason::NoRoute,
        DenyReason::UnknownResource,
        DenyReason::UnknownModel,
        DenyReason::UnknownModelVersion,
        DenyReason::ModelVersionRetired,
        DenyReason::MethodNotAllowed,
        DenyReason::BadPath,
        DenyReason::BadMethod,
        DenyReason::BadQuotaCost,
        DenyReason::MalformedBody,
        DenyReason::BodyTooLarge,
        DenyReason::UnsupportedMediaType,
        DenyReason::InvalidBody,
        DenyReason::PiiDetected,
        DenyReason::TooManyFailedAttempts,
        DenyReason::QuotaExceeded,
        DenyReason::AnomalyBlocked,
        DenyReason::QuotaUnavailable,
        DenyReason::AuditUnavailable,
        DenyReason::AuthnUnavailable,
        DenyReason::BodyNotForwarded,
        DenyReason::RequestIdInUse,
    ];
}
