//! End to end through a real Envoy with `deploy/envoy.yaml`: client ->
//! Envoy -> ext_authz Check -> Portcullis, and on allow -> the echo upstream.
//!
//! Each test starts its own stack (upstream, Portcullis, Envoy) so that tests
//! run in parallel and a failure names one case.

use serde_json::{json, Value};

use crate::support::{
    self, claims, mint, Envoy, HttpRequest, HttpResponse, Key, Portcullis, Upstream,
};

const PREDICT_V2: &str = "/v1/models/sentiment/versions/v2:predict";
const PREDICT_V1_DEPRECATED: &str = "/v1/models/sentiment/versions/v1:predict";
const PREDICT_V0_RETIRED: &str = "/v1/models/sentiment/versions/v0:predict";
const PREDICT_RESTRICTED: &str = "/v1/models/fraud-detector/versions/v3:predict";
const PREDICT_UNKNOWN_MODEL: &str = "/v1/models/unknown/versions/v1:predict";

/// A small, plausible inference body for predict calls.
fn predict_body() -> Value {
    json!({ "features": ["the service was quick and friendly"] })
}

/// Upstream, Portcullis and Envoy wired together. Fields drop in order:
/// Envoy first, so nothing calls a stopped PDP or upstream.
struct Stack {
    envoy: Envoy,
    pdp: Portcullis,
    upstream: Upstream,
    /// Holds the config (and, relative to it, the audit trail).
    config_dir: tempfile::TempDir,
}

impl Stack {
    fn start() -> Stack {
        Self::start_with_config("")
    }

    /// A stack whose Portcullis config has `extra` YAML appended.
    fn start_with_config(extra: &str) -> Stack {
        let upstream = Upstream::start();
        let config_dir = tempfile::tempdir().unwrap();
        let config = support::write_config_with(config_dir.path(), extra);
        let pdp = Portcullis::start(&[
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ]);
        let envoy = Envoy::start(pdp.addr(), upstream.addr());
        Stack {
            envoy,
            pdp,
            upstream,
            config_dir,
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
fn deprecated_model_version_is_served_with_deprecation_and_sunset_headers() {
    let stack = Stack::start();
    let response = stack.send(predict(PREDICT_V1_DEPRECATED, Some(&alice())));
    stack.expect_allowed(&response);
    // models.yaml: sentiment v1 deprecated 2026-09-01, sunset 2030-06-30.
    assert_eq!(response.header("deprecation"), Some("@1788220800"));
    assert_eq!(
        response.header("sunset"),
        Some("Sun, 30 Jun 2030 00:00:00 GMT")
    );
}

#[test]
fn retired_model_version_is_gone_and_names_its_successor() {
    let stack = Stack::start();
    let response = stack.send(predict(PREDICT_V0_RETIRED, Some(&alice())));
    let problem = stack.expect_denied(&response, 410);
    assert_eq!(
        problem["detail"],
        "model 'sentiment' version 'v0' was retired on 2026-01-31; use v2 (alias latest)"
    );
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
    // A port that refuses connections (and that no other test's server can
    // take meanwhile): Envoy cannot reach the PDP at all.
    let nobody = support::ClosedPort::new();
    let envoy = Envoy::start(nobody.addr, upstream.addr());
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
    let response = stack.send(
        HttpRequest::post(PREDICT_RESTRICTED)
            .bearer(&mint(stepped_up, Key::Es256))
            .json(&json!({"features": [120.5, 5411, "DE", 14]})),
    );
    stack.expect_allowed(&response);
}

// --- request bodies and data governance (issue 5) ---------------------------

/// Every `{pointer, message}` of a problem document.
fn problems(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    (
                        e["pointer"].as_str().unwrap().to_string(),
                        e["message"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_valid_inference_request_passes_with_its_body() {
    let stack = Stack::start();
    let body = json!({"features": ["the parcel arrived early"], "max_tokens": 64});
    let response = stack.send(
        HttpRequest::post("/v1/models/sentiment/versions/latest:predict")
            .bearer(&alice())
            .json(&body),
    );
    let echo = stack.expect_allowed(&response);
    assert_eq!(echo["body"], body.to_string());
    assert!(response.header("deprecation").is_none());
}

#[test]
fn a_wrong_feature_count_is_422_pointing_at_the_field() {
    let stack = Stack::start();
    let response = stack.send(
        HttpRequest::post(PREDICT_V2)
            .bearer(&alice())
            .json(&json!({"features": ["first text", "second text"]})),
    );
    let problem = stack.expect_denied(&response, 422);
    assert_eq!(problem["type"], "urn:portcullis:problem:invalid_body");
    assert_eq!(
        problems(&problem),
        [(
            "/features".to_string(),
            "sentiment/v2 takes exactly 1 feature (text); this request has 2: send one value per feature, in that order".to_string()
        )]
    );
}

#[test]
fn an_unknown_model_version_is_404_naming_the_versions_that_exist() {
    let stack = Stack::start();
    let response = stack.send(predict(
        "/v1/models/sentiment/versions/v9:predict",
        Some(&alice()),
    ));
    let problem = stack.expect_denied(&response, 404);
    assert_eq!(
        problem["type"],
        "urn:portcullis:problem:unknown_model_version"
    );
    assert_eq!(
        problem["detail"],
        "model 'sentiment' has no version 'v9'; available: v0 (deprecated, sunset 2026-01-31), v1 (deprecated, sunset 2030-06-30), v2; aliases: latest -> v2"
    );
}

#[test]
fn a_card_number_on_a_deny_pii_route_is_refused_and_appears_nowhere() {
    let stack = Stack::start_with_config("log:\n  level: trace\n");
    let card = "4111 1111 1111 1111";
    let response = stack.send(
        HttpRequest::post(PREDICT_V2)
            .bearer(&alice())
            .header("x-request-id", "pii-card-1")
            .json(&json!({"features": [format!("please charge my card {card} today")]})),
    );
    let problem = stack.expect_denied(&response, 422);
    assert_eq!(problem["type"], "urn:portcullis:problem:pii_detected");
    assert_eq!(
        problems(&problem),
        [(
            "/features/0".to_string(),
            "contains a payment card number: remove or mask it before sending".to_string()
        )]
    );
    // The decision was made and recorded (so the logs and the trail had
    // their chance to leak it)...
    let audit_dir = stack.config_dir.path().join("audit");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let trail = loop {
        let trail: String = std::fs::read_dir(&audit_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| support::read_lossy(&e.path()))
                    .collect()
            })
            .unwrap_or_default();
        if trail.contains("pii-card-1") || std::time::Instant::now() > deadline {
            break trail;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        trail.contains("pii_detected"),
        "the denial is audited: {trail}"
    );
    // ...and the number is in none of them, in any spelling.
    for spelling in [card.to_string(), card.replace(' ', ""), "1111 1111".into()] {
        for (place, text) in [
            ("response", response.text()),
            ("portcullis log", stack.pdp.stderr()),
            ("audit trail", trail.clone()),
            ("envoy log", stack.envoy.log()),
        ] {
            assert!(
                !text.contains(&spelling),
                "{spelling:?} leaked into the {place}"
            );
        }
    }
}

#[test]
fn malformed_bodies_are_400_with_a_precise_message() {
    let stack = Stack::start();
    let deep = format!(
        "{{\"features\": {}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    for (body, content_type, says) in [
        (
            br#"{"features": ["fine""#.to_vec(),
            "application/json",
            "ends early",
        ),
        (
            b"{\"features\": [\"\xff\"]}".to_vec(),
            "application/json",
            "not valid UTF-8",
        ),
        (
            br#"{"features": ["a"], "features": ["b"]}"#.to_vec(),
            "application/json",
            "\"features\" appears twice",
        ),
        (
            deep.into_bytes(),
            "application/json",
            "more than 8 levels deep",
        ),
        (
            br#"{"features": [123456789012345678901234567890]}"#.to_vec(),
            "application/json",
            "out of range",
        ),
    ] {
        let response = stack.send(
            HttpRequest::post(PREDICT_V2)
                .bearer(&alice())
                .raw_body(content_type, &body),
        );
        let problem = stack.expect_denied(&response, 400);
        assert_eq!(problem["type"], "urn:portcullis:problem:malformed_body");
        let found = problems(&problem);
        assert!(found[0].1.contains(says), "{says}: {found:?}");
    }
    let response = stack.send(
        HttpRequest::post(PREDICT_V2)
            .bearer(&alice())
            .raw_body("text/plain", b"the parcel arrived early"),
    );
    let problem = stack.expect_denied(&response, 415);
    assert_eq!(
        problem["detail"],
        "the request has Content-Type text/plain; send Content-Type: application/json"
    );
}

#[test]
fn oversized_bodies_are_413_at_the_gateway_or_the_route() {
    let stack = Stack::start();
    // Over Envoy's max_request_bytes (65536): Envoy refuses it itself,
    // never sending a partial body to check.
    let huge = json!({"features": ["x".repeat(70_000)]});
    let response = stack.send(HttpRequest::post(PREDICT_V2).bearer(&alice()).json(&huge));
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(stack.upstream.hits(), 0);
    // Over the feedback route's own max_bytes (8192): Portcullis says so.
    let big = json!({"decision_id": "0192f0c4-7b8a-7cc1-9a4e-3c1d2b4a5e6f", "rating": 3, "comment": "y".repeat(9_000)});
    let response = stack.send(
        HttpRequest::post("/v1/feedback")
            .bearer(&alice())
            .json(&big),
    );
    let problem = stack.expect_denied(&response, 413);
    assert_eq!(
        problem["detail"],
        "the request body has 9078 bytes; this endpoint accepts at most 8192"
    );
}

#[test]
fn personal_data_is_tagged_for_the_upstream_on_a_tag_route() {
    let stack = Stack::start();
    let response = stack.send(
        HttpRequest::post("/v1/feedback")
            .bearer(&alice())
            .header("x-portcullis-pii", "none")
            .header("cookie", "session=abc")
            .json(&json!({
                "decision_id": "0192f0c4-7b8a-7cc1-9a4e-3c1d2b4a5e6f",
                "rating": 2,
                "comment": "mail me at jo@example.org or call +44 20 7946 0958"
            })),
    );
    let echo = stack.expect_allowed(&response);
    // Set by Portcullis (the client's value replaced), kinds only.
    assert_eq!(upstream_header(&echo, "x-portcullis-pii"), "email,phone");
    // Minimisation: the route strips the cookie.
    assert!(
        echo["header_list"]
            .as_array()
            .unwrap()
            .iter()
            .all(|pair| pair[0] != "cookie"),
        "{echo}"
    );
}

#[test]
fn predict_strips_the_headers_the_model_does_not_need() {
    let stack = Stack::start();
    let response = stack.send(
        predict(PREDICT_V2, Some(&alice()))
            .header("cookie", "session=abc")
            .header("x-client-id", "device-1234")
            .header("x-keep-me", "yes"),
    );
    let echo = stack.expect_allowed(&response);
    let names: Vec<&str> = echo["header_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|pair| pair[0].as_str())
        .collect();
    assert!(
        !names.contains(&"cookie") && !names.contains(&"x-client-id"),
        "{names:?}"
    );
    assert!(names.contains(&"x-keep-me"), "{names:?}");
}

/// A token for frank of initech, whose data may be processed only in
/// eu-west-1 and eu-central-1 (policies/entities.json).
fn frank() -> String {
    mint(claims("frank", "initech"), Key::Es256)
}

fn credit_score() -> HttpRequest {
    HttpRequest::post("/v1/models/credit-score/versions/v1:predict")
        .bearer(&frank())
        .json(&json!({"features": [52000, 41, 0.31]}))
}

#[test]
fn residency_refuses_an_org_outside_its_regions_and_a_client_cannot_choose_the_region() {
    // The gateway serves us-east-1 (Portcullis configuration).
    let stack = Stack::start_with_config("residency:\n  region: us-east-1\n");
    let response = stack.send(credit_score());
    let problem = stack.expect_denied(&response, 403);
    assert_eq!(
        problem["type"],
        "urn:portcullis:problem:residency_violation"
    );
    assert_eq!(
        problem["detail"],
        "org 'initech' allows its data to be processed only in eu-central-1, eu-west-1; this gateway serves us-east-1: send the request through a gateway in an allowed region"
    );
    // Orgs without restrictions are unaffected.
    let response = stack.send(predict(PREDICT_V2, Some(&alice())));
    stack.expect_allowed(&response);
}

#[test]
fn residency_allows_an_org_inside_its_regions() {
    let stack = Stack::start_with_config("residency:\n  region: eu-west-1\n");
    let response = stack.send(credit_score());
    stack.expect_allowed(&response);
}

#[test]
fn a_region_header_is_trusted_only_as_the_gateway_sets_it() {
    // Portcullis reads the region from x-gateway-region, which Envoy
    // overwrites (header_mutation, first filter) with the region it
    // serves: a client claiming eu-west-1 does not get through.
    let template = std::fs::read_to_string(support::repo().join("deploy/envoy.yaml")).unwrap();
    let marker = "                          - remove: x-portcullis-principal\n";
    assert!(template.contains(marker));
    let upstream = Upstream::start();
    let config_dir = tempfile::tempdir().unwrap();
    let config = support::write_config_with(
        config_dir.path(),
        "residency:\n  region_header: x-gateway-region\n",
    );
    let pdp = Portcullis::start(&[
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ]);
    let envoy = Envoy::start_with(
        &template.replace(
            marker,
            &format!("                          - append: {{ header: {{ key: x-gateway-region, value: us-east-1 }}, append_action: OVERWRITE_IF_EXISTS_OR_ADD }}\n{marker}"),
        ),
        pdp.addr(),
        upstream.addr(),
    );
    let response = credit_score()
        .header("x-gateway-region", "eu-west-1")
        .send(envoy.addr());
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response.text().contains("this gateway serves us-east-1"),
        "{}",
        response.text()
    );
    assert_eq!(upstream.hits(), 0);
}
