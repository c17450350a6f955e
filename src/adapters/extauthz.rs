//! The Envoy ext_authz v3 adapter: `CheckRequest` -> `AccessRequest`
//! (decoded by `check_decode`), and `Decision` -> `CheckResponse` (status,
//! headers and body from the outcome table, `decision::outcome`, written by
//! `check_encode`). Protocol mapping only; no policy logic.

use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::access;
use super::check_decode::{self, Undecided};
use super::check_encode::EncodedCheckResponse;
use crate::app::State;
use crate::pipeline::Door;
use crate::request::{AccessRequest, Headers};

/// The ext_authz `Authorization` service.
#[derive(Debug, Clone)]
pub struct AuthzService {
    state: Arc<State>,
}

impl AuthzService {
    /// A service deciding with the shared state.
    pub fn new(state: Arc<State>) -> Self {
        AuthzService { state }
    }

    /// Answers one `Check` on the request it asks about (decoded from the
    /// wire by [`check_decode::decode`], or translated by
    /// [`to_access_request`]). The answer is the `CheckResponse` already in
    /// wire form ([`EncodedCheckResponse`]); [`Authorization::check`]
    /// decodes it back into prost's message for in-process callers.
    pub fn answer(
        &self,
        mut asked: AccessRequest,
    ) -> impl std::future::Future<Output = Result<Response<EncodedCheckResponse>, Status>> + Send + 'static
    {
        let state = Arc::clone(&self.state);
        async move {
            let decision = access::decide(&state, &mut asked, Door::ExtAuthz).await;
            Ok(Response::new(EncodedCheckResponse::of(&decision, &asked)))
        }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let asked =
            to_access_request(Box::new(request.into_inner())).map_err(Status::invalid_argument)?;
        let encoded = self.answer(asked).await?;
        let response = CheckResponse::decode(encoded.get_ref().as_bytes()).map_err(|e| {
            tracing::error!(error = %e, "an encoded CheckResponse did not decode");
            Status::internal("the CheckResponse could not be encoded")
        })?;
        Ok(Response::new(response))
    }
}

/// The request a `CheckRequest` asks about, as the wire decoder
/// ([`check_decode::decode`]) reads it: the message is encoded and decoded
/// again, so that an in-process caller's request is translated exactly as
/// one from Envoy. A request without HTTP attributes is malformed: we
/// answer with a gRPC error (never an empty, allowing, CheckResponse).
///
/// # Errors
/// Which of `attributes`, `attributes.request.http`, the HTTP method or
/// the path is missing.
pub fn to_access_request(check: Box<CheckRequest>) -> Result<AccessRequest, &'static str> {
    match check_decode::decode(&check.encode_to_vec()) {
        Ok(request) => Ok(request),
        Err(Undecided::Incomplete(what)) => Err(what),
        // prost decodes what prost encoded.
        Err(Undecided::Wire(_)) => Err("CheckRequest could not be encoded"),
    }
}

/// Headers of an Envoy `HeaderMap` (`config.core.v3`), names lower-cased,
/// values as [`header_value`] reads them, repeats merged as
/// [`merge_repeat`] does: ext_authz's raw headers.
pub(crate) fn header_map(
    map: Option<&envoy_types::pb::envoy::config::core::v3::HeaderMap>,
) -> Headers {
    let mut out = Headers::default();
    for h in map.iter().flat_map(|m| m.headers.iter()) {
        let value = header_value(h);
        out.entry(h.key.to_ascii_lowercase())
            .and_modify(|v| merge_repeat(v, &value))
            .or_insert_with(|| value.into_owned());
    }
    out
}

/// One Envoy `HeaderValue`'s value: `raw_value` when set (invalid UTF-8
/// replaced), else `value`.
pub(crate) fn header_value(
    h: &envoy_types::pb::envoy::config::core::v3::HeaderValue,
) -> std::borrow::Cow<'_, str> {
    if h.raw_value.is_empty() {
        std::borrow::Cow::Borrowed(h.value.as_str())
    } else {
        String::from_utf8_lossy(&h.raw_value)
    }
}

/// Adds a repeat of a header to the value so far, comma-merged as Envoy
/// does.
pub(crate) fn merge_repeat(merged: &mut String, value: &str) {
    merged.push(',');
    merged.push_str(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Decision, DenyReason, GrpcCode};
    use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{self, HttpRequest};
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    fn check(method: &str, path: &str, headers: &[(&str, &str)]) -> Box<CheckRequest> {
        Box::new(CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(HttpRequest {
                        method: method.into(),
                        path: path.into(),
                        host: "api.test".into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
    }

    /// The answer as Envoy reads it: encoded, then decoded by prost.
    fn render(d: &Decision, req: &AccessRequest) -> CheckResponse {
        CheckResponse::decode(EncodedCheckResponse::of(d, req).as_bytes()).unwrap()
    }

    #[test]
    fn missing_http_attributes_is_an_error_not_an_allow() {
        assert!(to_access_request(Box::default()).is_err());
    }

    #[test]
    fn header_names_are_lower_cased() {
        let r = to_access_request(check("GET", "/x", &[("X-Request-Id", "abc")])).unwrap();
        assert_eq!(r.header("x-request-id"), Some("abc"));
        assert_eq!(r.request_id, "abc");
    }

    #[test]
    fn the_method_is_kept_as_sent_not_upper_cased() {
        for method in ["GET", "get", "Get", "PROPFIND"] {
            let r = to_access_request(check(method, "/x", &[])).unwrap();
            assert_eq!(r.method, method);
        }
    }

    #[test]
    fn allow_overwrites_and_strips_spoofed_headers() {
        let req = to_access_request(check(
            "GET",
            "/x",
            &[
                ("x-portcullis-principal", "User::\"admin\""),
                ("x-portcullis-role", "admin"),
            ],
        ))
        .unwrap();
        let mut d = Decision::new("v1").allow();
        d.principal = Some("User::\"alice\"".into());
        let resp = render(&d, &req);
        assert_eq!(resp.status.unwrap().code, GrpcCode::Ok as i32);
        let Some(HttpResponse::OkResponse(ok)) = resp.http_response else {
            panic!("expected OkResponse")
        };
        let set: Vec<_> = ok
            .headers
            .iter()
            .map(|h| h.header.clone().unwrap())
            .collect();
        assert!(set
            .iter()
            .any(|h| h.key == access::PRINCIPAL_HEADER && h.value == "User::\"alice\""));
        assert!(ok
            .headers
            .iter()
            .all(|h| h.append_action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32));
        assert_eq!(ok.headers_to_remove, vec!["x-portcullis-role".to_string()]);
    }

    #[test]
    fn deny_has_status_problem_body_and_www_authenticate() {
        let req = AccessRequest::for_test("GET", "/x");
        let d = Decision::new("v1").deny(DenyReason::InvalidCredentials, "expired");
        let resp = render(&d, &req);
        assert_eq!(resp.status.unwrap().code, GrpcCode::Unauthenticated as i32);
        let Some(HttpResponse::DeniedResponse(denied)) = resp.http_response else {
            panic!("expected DeniedResponse")
        };
        assert_eq!(denied.status.unwrap().code, 401);
        let keys: Vec<_> = denied
            .headers
            .iter()
            .map(|h| h.header.clone().unwrap().key)
            .collect();
        assert!(keys.contains(&"www-authenticate".to_string()));
        assert!(keys.contains(&"content-type".to_string()));
        let challenge = denied
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "www-authenticate")
            .unwrap()
            .value
            .clone();
        assert_eq!(
            challenge,
            r#"Bearer realm="portcullis", error="invalid_token", error_description="expired""#
        );
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(body["status"], 401);
    }

    #[test]
    fn refusals_carry_the_grpc_code_of_their_row_in_the_outcome_table() {
        // Before the one table, 404, 413 and 415 all answered
        // PERMISSION_DENIED in CheckResponse.status.
        let req = AccessRequest::for_test("GET", "/x");
        for (reason, http, grpc) in [
            (DenyReason::NoRoute, 404, GrpcCode::NotFound),
            (DenyReason::BodyTooLarge, 413, GrpcCode::InvalidArgument),
            (
                DenyReason::UnsupportedMediaType,
                415,
                GrpcCode::InvalidArgument,
            ),
            (DenyReason::MethodNotAllowed, 405, GrpcCode::Unimplemented),
            (DenyReason::Forbidden, 403, GrpcCode::PermissionDenied),
            (DenyReason::QuotaExceeded, 429, GrpcCode::ResourceExhausted),
            (DenyReason::AuditUnavailable, 503, GrpcCode::Unavailable),
        ] {
            let resp = render(&Decision::new("v1").deny(reason, "x"), &req);
            assert_eq!(resp.status.unwrap().code, grpc as i32, "{reason:?}");
            let Some(HttpResponse::DeniedResponse(denied)) = resp.http_response else {
                panic!("expected DeniedResponse")
            };
            assert_eq!(denied.status.unwrap().code, http, "{reason:?}");
        }
    }
}
