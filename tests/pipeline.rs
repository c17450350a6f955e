//! Decision semantics through the library's public API, on real policy
//! directories: the bundled `policies/` and small fixtures.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::authn::{AuthMethod, Authenticator, Identity};
use portcullis::config::{AuthnConfig, IssuerConfig};
use portcullis::decision::{DenyReason, Outcome};
use portcullis::pipeline::decide_as;
use portcullis::request::AccessRequest;
use portcullis::snapshot::Snapshot;
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bundled() -> Snapshot {
    Snapshot::load(&root().join("policies")).expect("bundled policies are valid")
}

fn user(id: &str, org: Option<&str>) -> Identity {
    Identity {
        principal: format!("User::\"{id}\"").parse().unwrap(),
        parents: org
            .map(|o| vec![format!("Org::\"{o}\"").parse().unwrap()])
            .unwrap_or_default(),
        method: AuthMethod::Jwt,
    }
}

fn predict(model: &str, version: &str) -> AccessRequest {
    AccessRequest::for_test(
        "POST",
        &format!("/v1/models/{model}/versions/{version}:predict"),
    )
}

#[test]
fn invoker_in_owning_org_may_invoke() {
    let s = bundled();
    let d = decide_as(
        &s,
        Some(user("alice", Some("acme"))),
        &predict("sentiment", "v2"),
    );
    assert_eq!(d.decision, Outcome::Allow, "{d:?}");
    assert_eq!(d.status, 200);
    assert_eq!(d.determining_policies, vec!["invokers-invoke-org-models"]);
    assert_eq!(d.principal.as_deref(), Some(r#"User::"alice""#));
    assert_eq!(
        d.resource.as_deref(),
        Some(r#"ModelVersion::"sentiment/v2""#)
    );
    assert_eq!(d.policy_version, s.version);
}

#[test]
fn invoker_of_another_org_is_forbidden() {
    let d = decide_as(
        &bundled(),
        Some(user("erin", Some("globex"))),
        &predict("sentiment", "v2"),
    );
    assert_eq!(d.reason, Some(DenyReason::Forbidden));
    assert_eq!(d.status, 403);
    assert!(
        d.determining_policies.is_empty(),
        "default deny has no determining policy"
    );
}

#[test]
fn viewer_may_not_invoke() {
    let d = decide_as(
        &bundled(),
        Some(user("bob", Some("acme"))),
        &predict("sentiment", "v2"),
    );
    assert_eq!(d.status, 403);
}

#[test]
fn forbid_overrides_permit_for_deprecated_versions() {
    let d = decide_as(
        &bundled(),
        Some(user("alice", Some("acme"))),
        &predict("sentiment", "v1"),
    );
    assert_eq!(d.status, 403);
    assert_eq!(d.determining_policies, vec!["no-deprecated-versions"]);
}

#[test]
fn restricted_model_needs_privileged_role() {
    let s = bundled();
    let alice = decide_as(
        &s,
        Some(user("alice", Some("acme"))),
        &predict("fraud-detector", "v3"),
    );
    assert_eq!(alice.status, 403);
    assert_eq!(
        alice.determining_policies,
        vec!["restricted-models-need-privileged-role"]
    );
    let carol = decide_as(
        &s,
        Some(user("carol", Some("acme"))),
        &predict("fraud-detector", "v3"),
    );
    assert_eq!(carol.status, 200, "{carol:?}");
}

#[test]
fn unknown_model_version_is_404_on_must_exist_route() {
    let d = decide_as(
        &bundled(),
        Some(user("alice", Some("acme"))),
        &predict("sentiment", "v9"),
    );
    assert_eq!(d.reason, Some(DenyReason::UnknownResource));
    assert_eq!(d.status, 404);
}

#[test]
fn unmatched_path_is_404_and_wrong_method_is_405() {
    let s = bundled();
    let d = decide_as(&s, None, &AccessRequest::for_test("GET", "/nope"));
    assert_eq!(d.reason, Some(DenyReason::NoRoute));
    let d = decide_as(&s, None, &AccessRequest::for_test("DELETE", "/v1/status"));
    assert_eq!(d.status, 405);
    assert_eq!(d.allow_methods.as_deref(), Some("GET"));
}

#[test]
fn anonymous_only_where_the_route_allows_it() {
    let s = bundled();
    let d = decide_as(
        &s,
        None,
        &AccessRequest::for_test("GET", "/v1/status?verbose=1"),
    );
    assert_eq!(d.decision, Outcome::Allow, "{d:?}");
    assert_eq!(d.principal.as_deref(), Some(r#"Anonymous::"anonymous""#));
    let d = decide_as(&s, None, &predict("sentiment", "v2"));
    assert_eq!(d.reason, Some(DenyReason::Unauthenticated));
    assert_eq!(d.status, 401);
}

#[test]
fn mtls_service_account_invokes_its_org_models() {
    let s = bundled();
    let authn = Authenticator::new(&AuthnConfig::default()).unwrap();
    let mut req = predict("sentiment", "v2");
    req.source_principal = Some("spiffe://acme.example/ns/ml/sa/batch-scorer".into());
    let d = decide(&s, &authn, &req);
    assert_eq!(d.decision, Outcome::Allow, "{d:?}");
    assert_eq!(d.auth_method, Some("mtls"));
}

#[test]
fn token_org_claim_makes_the_user_an_org_member() {
    // alice is in no org in entities.json; her token's org claim puts her
    // in acme for this request.
    let s = bundled();
    let without = decide_as(
        &s,
        Some(user("alice", None)),
        &AccessRequest::for_test("GET", "/v1/orgs/acme/models"),
    );
    assert_eq!(without.status, 403);
    let with = decide_as(
        &s,
        Some(user("alice", Some("acme"))),
        &AccessRequest::for_test("GET", "/v1/orgs/acme/models"),
    );
    assert_eq!(with.status, 200, "{with:?}");
}

#[test]
fn erroring_forbid_denies_even_when_a_permit_holds() {
    let s = Snapshot::load(&root().join("tests/fixtures/policies-erroring-forbid")).unwrap();
    let rita = Identity {
        principal: r#"User::"rita""#.parse().unwrap(),
        parents: vec![],
        method: AuthMethod::Jwt,
    };
    // Known, public document: permitted.
    let ok = decide_as(
        &s,
        Some(rita.clone()),
        &AccessRequest::for_test("GET", "/docs/memo"),
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    // Known secret document: the forbid applies.
    let secret = decide_as(
        &s,
        Some(rita.clone()),
        &AccessRequest::for_test("GET", "/docs/plans"),
    );
    assert_eq!(secret.reason, Some(DenyReason::Forbidden));
    // Unknown document: the forbid errors; Cedar alone would allow via the
    // permit. We deny, and say why in the operator-facing errors.
    let ghost = decide_as(
        &s,
        Some(rita),
        &AccessRequest::for_test("GET", "/docs/ghost"),
    );
    assert_eq!(ghost.decision, Outcome::Deny);
    assert_eq!(ghost.reason, Some(DenyReason::PolicyError));
    assert!(
        ghost.errors.iter().any(|e| e.contains("no-secret-docs")),
        "{:?}",
        ghost.errors
    );
    assert!(
        !ghost.problem_json().contains("no-secret-docs"),
        "policy ids stay internal"
    );
}

fn authenticator() -> Authenticator {
    Authenticator::new(&AuthnConfig {
        jwt: vec![IssuerConfig {
            issuer: "https://idp.test.portcullis/".into(),
            audiences: vec!["portcullis".into()],
            jwks_file: root().join("tests/fixtures/keys/test-issuer.jwks.json"),
            algorithms: vec!["ES256".into()],
            principal_type: "User".into(),
            subject_claim: "sub".into(),
            org_claim: Some("org".into()),
            org_type: "Org".into(),
        }],
        ..AuthnConfig::default()
    })
    .unwrap()
}

fn token(sub: &str, org: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let pem = std::fs::read(root().join("tests/fixtures/keys/test-es256.pem")).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("test-es256".into());
    let claims = json!({"iss": "https://idp.test.portcullis/", "aud": "portcullis",
                        "sub": sub, "org": org, "exp": now + 300, "iat": now});
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(&pem).unwrap()).unwrap()
}

#[test]
fn jwt_bearer_end_to_end_in_process() {
    let s = bundled();
    let authn = authenticator();
    let mut req = predict("sentiment", "v2");
    req.headers.insert(
        "authorization".into(),
        format!("Bearer {}", token("alice", "acme")),
    );
    let d = decide(&s, &authn, &req);
    assert_eq!(d.decision, Outcome::Allow, "{d:?}");
    assert_eq!(d.auth_method, Some("jwt"));

    req.headers
        .insert("authorization".into(), "Bearer not.a.jwt".into());
    let d = decide(&s, &authn, &req);
    assert_eq!(d.reason, Some(DenyReason::InvalidCredentials));
    assert_eq!(d.status, 401);
}

#[test]
fn bad_token_on_anonymous_route_is_still_401() {
    let s = bundled();
    let mut req = AccessRequest::for_test("GET", "/v1/status");
    req.headers
        .insert("authorization".into(), "Bearer garbage".into());
    let d = decide(&s, &authenticator(), &req);
    assert_eq!(d.status, 401);
}

#[test]
fn declared_headers_reach_the_cedar_context() {
    // A route's context_headers are typed by the schema; a request with the
    // header still evaluates cleanly (no context error).
    let s = bundled();
    let mut req = predict("sentiment", "v2");
    req.headers
        .insert("x-client-region".into(), "eu-west-1".into());
    req.headers.insert("x-undeclared".into(), "ignored".into());
    let d = decide_as(&s, Some(user("alice", Some("acme"))), &req);
    assert_eq!(d.status, 200, "{d:?}");
    assert!(d.errors.is_empty());
}

/// The async pipeline, run to completion with in-process quotas.
fn decide(
    s: &Snapshot,
    authn: &portcullis::authn::Authenticator,
    req: &AccessRequest,
) -> portcullis::decision::Decision {
    let quotas = portcullis::quota::Quotas::in_process(1024);
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(portcullis::pipeline::decide(s, authn, &quotas, req))
}
