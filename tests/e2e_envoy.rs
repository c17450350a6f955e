//! End to end through a real Envoy with `deploy/envoy.yaml`: client ->
//! Envoy -> ext_authz Check -> Portcullis, and on allow -> the echo upstream.
//!
//! Each test starts its own stack (upstream, Portcullis, Envoy) so that tests
//! run in parallel and a failure names one case.

mod support;

use serde_json::{json, Value};
use support::{claims, mint, Envoy, HttpRequest, HttpResponse, Key, Portcullis, Upstream};

const PREDICT_V2: &str = "/v1/models/sentiment/versions/v2:predict";
const PREDICT_V1_DEPRECATED: &str = "/v1/models/sentiment/versions/v1:predict";
const PREDICT_RESTRICTED: &str = "/v1/models/fraud-detector/versions/v3:predict";
const PREDICT_UNKNOWN_MODEL: &str = "/v1/models/unknown/versions/v1:predict";

/// A small, plausible inference body for predict calls.
fn predict_body() -> Value {
    json!({ "inputs": ["the service was quick and friendly"] })
}

/// Upstream, Portcullis and Envoy wired together. Fields drop in order:
/// Envoy first, so nothing calls a stopped PDP or upstream.
struct Stack {
    envoy: Envoy,
    pdp: Portcullis,
    upstream: Upstream,
}

impl Stack {
    fn start() -> Stack {
        let upstream = Upstream::start();
        let pdp = Portcullis::start(&["--listen", "127.0.0.1:0"]);
        let envoy = Envoy::start(pdp.addr(), upstream.addr());
        Stack {
            envoy,
            pdp,
            upstream,
        }
    }

    fn send(&self, request: HttpRequest) -> HttpResponse {
        request.send(self.envoy.addr())
    }

    /// Asserts an allowed request reached the upstream; returns its echo.
    fn expect_allowed(&self, response: &HttpResponse) -> Value {
        assert_eq!(
            response.status,
            200,
            "expected the request to be allowed; got {} {:?} {}\nportcullis stderr (tail):\n{}",
            response.status,
            response.headers,
            response.text(),
            tail(&self.pdp.stderr())
        );
        assert_eq!(
            self.upstream.hits(),
            1,
            "the allowed request should reach the upstream once"
        );
        response.json()
    }

    /// Asserts a denial: `status`, an RFC 9457 problem document whose
    /// `status` matches, and nothing forwarded to the upstream.
    fn expect_denied(&self, response: &HttpResponse, status: u16) -> Value {
        assert_eq!(
            response.status,
            status,
            "expected a {status} denial; got {} {:?} {}\nportcullis stderr (tail):\n{}",
            response.status,
            response.headers,
            response.text(),
            tail(&self.pdp.stderr())
        );
        let problem = expect_problem(response, status);
        assert_eq!(
            self.upstream.hits(),
            0,
            "a denied request must not reach the upstream"
        );
        problem
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Checks the problem+json contract every denial keeps.
fn expect_problem(response: &HttpResponse, status: u16) -> Value {
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "a denial must be application/problem+json, got content-type {content_type:?}; body {:?}",
        response.text()
    );
    let problem = response.json();
    for field in ["type", "title", "detail", "decision_id"] {
        assert!(
            problem[field].as_str().is_some_and(|s| !s.is_empty()),
            "problem document needs a non-empty string `{field}`: {problem}"
        );
    }
    assert_eq!(
        problem["status"],
        json!(status),
        "problem `status` must match the HTTP status: {problem}"
    );
    problem
}

/// The single value of header `name` the upstream received; panics if it
/// came zero or several times.
fn upstream_header(echo: &Value, name: &str) -> String {
    let values: Vec<&str> = echo["header_list"]
        .as_array()
        .expect("echo header_list")
        .iter()
        .filter(|pair| pair[0] == name)
        .filter_map(|pair| pair[1].as_str())
        .collect();
    assert_eq!(
        values.len(),
        1,
        "upstream should see exactly one `{name}` header, saw {values:?}; all headers: {}",
        echo["headers"]
    );
    values[0].to_string()
}

fn alice() -> String {
    mint(claims("alice", "acme"), Key::Es256)
}

fn predict(path: &str, token: Option<&str>) -> HttpRequest {
    let request = HttpRequest::post(path).json(&predict_body());
    match token {
        Some(token) => request.bearer(token),
        None => request,
    }
}

// --- allowed ------------------------------------------------------------------

#[test]
fn anonymous_status_is_allowed() {
    let stack = Stack::start();
    let response = stack.send(HttpRequest::get("/v1/status"));
    let echo = stack.expect_allowed(&response);
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/v1/status");
}

#[test]
fn predict_with_es256_token_is_allowed_and_upstream_sees_the_decision() {
    let stack = Stack::start();
    let response = stack.send(predict(PREDICT_V2, Some(&alice())));
    let echo = stack.expect_allowed(&response);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], PREDICT_V2);
    assert_eq!(
        echo["body"],
        predict_body().to_string(),
        "the body reaches the upstream unchanged"
    );
    assert_eq!(
        upstream_header(&echo, "x-portcullis-principal"),
        r#"User::"alice""#
    );
    assert!(!upstream_header(&echo, "x-portcullis-decision-id").is_empty());
    assert!(!upstream_header(&echo, "x-portcullis-policy-version").is_empty());
}

#[test]
fn predict_with_rs256_token_is_allowed() {
    let stack = Stack::start();
    let token = mint(claims("alice", "acme"), Key::Rs256);
    let response = stack.send(predict(PREDICT_V2, Some(&token)));
    let echo = stack.expect_allowed(&response);
    assert_eq!(
        upstream_header(&echo, "x-portcullis-principal"),
        r#"User::"alice""#
    );
}

#[test]
fn spoofed_principal_header_is_replaced_by_the_real_one() {
    let stack = Stack::start();
    let response = stack.send(
        predict(PREDICT_V2, Some(&alice()))
            .header("x-portcullis-principal", r#"User::"admin""#)
            .header("x-portcullis-decision-id", "forged"),
    );
    let echo = stack.expect_allowed(&response);
    assert_eq!(
        upstream_header(&echo, "x-portcullis-principal"),
        r#"User::"alice""#
    );
    assert_ne!(upstream_header(&echo, "x-portcullis-decision-id"), "forged");
}

#[test]
fn spoofed_principal_header_on_anonymous_route_never_reaches_upstream() {
    let stack = Stack::start();
    let response = stack
        .send(HttpRequest::get("/v1/status").header("x-portcullis-principal", r#"User::"admin""#));
    let echo = stack.expect_allowed(&response);
    let forged = echo["header_list"]
        .as_array()
        .unwrap()
        .iter()
        .any(|pair| pair[0] == "x-portcullis-principal" && pair[1] == r#"User::"admin""#);
    assert!(
        !forged,
        "a client-supplied principal reached the upstream: {}",
        echo["headers"]
    );
}

#[test]
fn path_is_normalized_before_the_decision() {
    let stack = Stack::start();
    // Dot segments and doubled slashes are resolved by Envoy, so Portcullis
    // and the upstream both see (and decide on) `/v1/status`.
    let response = stack.send(HttpRequest::get("//v1/models/..//status"));
    let echo = stack.expect_allowed(&response);
    assert_eq!(echo["path"], "/v1/status");
}

#[test]
fn escaped_slash_in_path_is_rejected_at_the_edge() {
    let stack = Stack::start();
    let response = stack.send(HttpRequest::get("/v1/models%2F..%2Fstatus"));
    assert_eq!(
        response.status,
        400,
        "{:?} {}",
        response.headers,
        response.text()
    );
    assert_eq!(stack.upstream.hits(), 0);
}

// --- 401: authentication ------------------------------------------------------

#[test]
fn predict_without_token_is_unauthorized() {
    let stack = Stack::start();
    let response = stack.send(predict(PREDICT_V2, None));
    stack.expect_denied(&response, 401);
}

#[test]
fn garbage_bearer_token_is_unauthorized() {
    let stack = Stack::start();
    let response = stack.send(predict(PREDICT_V2, Some("garbage")));
    stack.expect_denied(&response, 401);
}

#[test]
fn token_signed_by_untrusted_key_is_unauthorized() {
    let stack = Stack::start();
    let token = mint(claims("alice", "acme"), Key::UntrustedEs256);
    let response = stack.send(predict(PREDICT_V2, Some(&token)));
    stack.expect_denied(&response, 401);
}

#[test]
fn expired_token_is_unauthorized() {
    let stack = Stack::start();
    let mut expired = claims("alice", "acme");
    let now = support::now();
    expired["iat"] = json!(now - 1200);
    expired["exp"] = json!(now - 600);
    let response = stack.send(predict(PREDICT_V2, Some(&mint(expired, Key::Es256))));
    stack.expect_denied(&response, 401);
}

#[test]
fn token_for_another_audience_is_unauthorized() {
    let stack = Stack::start();
    let mut other = claims("alice", "acme");
    other["aud"] = json!("some-other-service");
    let response = stack.send(predict(PREDICT_V2, Some(&mint(other, Key::Es256))));
    stack.expect_denied(&response, 401);
}

// --- 403: authorization -------------------------------------------------------

#[test]
fn deprecated_model_version_is_forbidden() {
    let stack = Stack::start();
    let response = stack.send(predict(PREDICT_V1_DEPRECATED, Some(&alice())));
    stack.expect_denied(&response, 403);
}

#[test]
fn viewer_cannot_predict() {
    let stack = Stack::start();
    let bob = mint(claims("bob", "acme"), Key::Es256);
    let response = stack.send(predict(PREDICT_V2, Some(&bob)));
    stack.expect_denied(&response, 403);
}

#[test]
fn restricted_model_is_forbidden() {
    let stack = Stack::start();
    let response = stack.send(predict(PREDICT_RESTRICTED, Some(&alice())));
    stack.expect_denied(&response, 403);
}

// --- 404: no such route or model ----------------------------------------------

#[test]
fn unknown_route_is_not_found() {
    let stack = Stack::start();
    let response = stack.send(HttpRequest::get("/nope"));
    stack.expect_denied(&response, 404);
}

#[test]
fn unknown_model_is_not_found() {
    let stack = Stack::start();
    let response = stack.send(predict(PREDICT_UNKNOWN_MODEL, Some(&alice())));
    stack.expect_denied(&response, 404);
}

// --- the PDP is unreachable ---------------------------------------------------

#[test]
fn unreachable_pdp_fails_closed_with_503() {
    let upstream = Upstream::start();
    // A port nothing listens on: Envoy cannot reach the PDP at all.
    let nobody = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let envoy = Envoy::start(nobody, upstream.addr());
    let response = HttpRequest::get("/v1/status").send(envoy.addr());
    assert_eq!(
        response.status,
        503,
        "{:?} {}",
        response.headers,
        response.text()
    );
    assert_eq!(
        upstream.hits(),
        0,
        "fail closed: nothing is forwarded without a decision"
    );
}

// --- authentication hardening (issue 3) ----------------------------------------

#[test]
fn two_authorization_headers_are_unauthorized_through_envoy() {
    let stack = Stack::start();
    let token = alice();
    let request = HttpRequest::post(PREDICT_V2)
        .json(&predict_body())
        .header("authorization", &format!("Bearer {token}"))
        .header("authorization", &format!("Bearer {token}"));
    let response = stack.send(request);
    stack.expect_denied(&response, 401);
}

#[test]
fn expired_token_challenge_says_what_to_fix() {
    let stack = Stack::start();
    let mut expired = claims("alice", "acme");
    let now = support::now();
    expired["iat"] = json!(now - 1200);
    expired["exp"] = json!(now - 600);
    let token = mint(expired, Key::Es256);
    let response = stack.send(predict(PREDICT_V2, Some(&token)));
    let problem = stack.expect_denied(&response, 401);
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(r#"error="invalid_token""#)
            && challenge.contains("error_description=\"the token has expired"),
        "{challenge}"
    );
    assert!(problem["detail"].as_str().unwrap().contains("expired"));
    assert!(
        !response.text().contains(&token),
        "the token is never echoed"
    );
}

#[test]
fn restricted_model_is_allowed_after_mfa_step_up() {
    let stack = Stack::start();
    let mut stepped_up = claims("carol", "acme");
    stepped_up["amr"] = json!(["pwd", "mfa"]);
    let response = stack.send(predict(
        PREDICT_RESTRICTED,
        Some(&mint(stepped_up, Key::Es256)),
    ));
    stack.expect_allowed(&response);
}
