//! Decision semantics through the library's public API, on real policy
//! directories: the bundled `policies/` and small fixtures.

use portcullis::authn::config::{AuthnConfig, IssuerConfig};
use portcullis::authn::{AuthMethod, Authenticator, Identity};
use portcullis::decision::{DenyReason, Outcome};
use portcullis::policy::snapshot::Snapshot;
use portcullis::request::AccessRequest;
use serde_json::json;

use crate::support::{self, decide, decide_as, decide_with, PolicyDir};

fn bundled() -> Snapshot {
    Snapshot::load(&support::policies_dir()).expect("bundled policies are valid")
}

fn user(id: &str, org: Option<&str>) -> Identity {
    Identity::new(
        format!("User::\"{id}\"").parse().unwrap(),
        org.map(|o| vec![format!("Org::\"{o}\"").parse().unwrap()])
            .unwrap_or_default(),
        AuthMethod::Jwt,
    )
}

fn predict(model: &str, version: &str) -> AccessRequest {
    let features = match model {
        "fraud-detector" => json!([120.5, 5411, "DE", 14]),
        "translate" => json!(["good morning", "de"]),
        _ => json!(["great service"]),
    };
    AccessRequest::for_test(
        "POST",
        &format!("/v1/models/{model}/versions/{version}:predict"),
    )
    .with_json(&json!({ "features": features }))
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
fn forbid_overrides_permit_for_restricted_models() {
    // alice is an invoker in acme (a permit holds) without the privileged
    // role or step-up (two forbids hold).
    let d = decide_as(
        &bundled(),
        Some(user("alice", Some("acme"))),
        &predict("fraud-detector", "v3"),
    );
    assert_eq!(d.status, 403);
    let mut policies = d.determining_policies.clone();
    policies.sort();
    assert_eq!(
        policies,
        vec![
            "restricted-models-need-mfa-or-scope",
            "restricted-models-need-privileged-role"
        ]
    );
}

#[test]
fn deprecated_versions_are_served_with_deprecation_headers_until_sunset() {
    let d = decide_as(
        &bundled(),
        Some(user("alice", Some("acme"))),
        &predict("sentiment", "v1"),
    );
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(
        d.response_headers,
        vec![
            ("deprecation".to_string(), "@1788220800".to_string()),
            (
                "sunset".to_string(),
                "Sun, 30 Jun 2030 00:00:00 GMT".to_string()
            )
        ]
    );
    // After the sunset date (2030-06-30) the registry refuses it: 410.
    let mut later = predict("sentiment", "v1");
    later.time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_924_992_000);
    let d = decide_as(&bundled(), Some(user("alice", Some("acme"))), &later);
    assert_eq!(d.status, 410, "{d:?}");
    assert_eq!(d.reason, Some(DenyReason::ModelVersionRetired));
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
    assert!(
        alice
            .determining_policies
            .contains(&"restricted-models-need-privileged-role".to_string()),
        "{alice:?}"
    );
    let mut carol = user("carol", Some("acme"));
    carol.token.mfa = true;
    let carol = decide_as(&s, Some(carol), &predict("fraud-detector", "v3"));
    assert_eq!(carol.status, 200, "{carol:?}");
}

#[test]
fn restricted_model_needs_mfa_or_the_restricted_scope() {
    let s = bundled();
    let carol = decide_as(
        &s,
        Some(user("carol", Some("acme"))),
        &predict("fraud-detector", "v3"),
    );
    assert_eq!(carol.status, 403);
    assert_eq!(
        carol.determining_policies,
        vec!["restricted-models-need-mfa-or-scope"]
    );
    let mut scoped = user("carol", Some("acme"));
    scoped.token.scopes.insert("models:restricted".into());
    let d = decide_as(&s, Some(scoped), &predict("fraud-detector", "v3"));
    assert_eq!(d.status, 200, "{d:?}");
}

#[test]
fn unknown_model_version_is_404_on_must_exist_route() {
    let d = decide_as(
        &bundled(),
        Some(user("alice", Some("acme"))),
        &predict("sentiment", "v9"),
    );
    assert_eq!(d.reason, Some(DenyReason::UnknownModelVersion));
    assert_eq!(d.status, 404);
    assert_eq!(
        d.detail,
        "model 'sentiment' has no version 'v9'; available: v0 (deprecated, sunset 2026-01-31), v1 (deprecated, sunset 2030-06-30), v2; aliases: latest -> v2"
    );
}

#[test]
fn unmatched_path_is_404_and_wrong_method_is_405() {
    let s = bundled();
    let d = decide_as(&s, None, &AccessRequest::for_test("GET", "/nope"));
    assert_eq!(d.reason, Some(DenyReason::NoRoute));
    let d = decide_as(&s, None, &AccessRequest::for_test("DELETE", "/v1/status"));
    assert_eq!(d.status, 405);
    assert_eq!(d.allow_methods.as_deref(), Some("GET, HEAD"));
}

#[test]
fn a_method_not_in_upper_case_is_a_bad_method_on_every_route() {
    // Methods are case-sensitive (RFC 9110 section 9.1): `get` is not the
    // `GET` the route lists, and an upstream that folds case would run
    // `delete` as `DELETE` where a policy on an `ANY` route compared
    // `context.method` with "DELETE".
    let s = bundled();
    for (method, path) in [
        ("get", "/v1/status"),
        ("Get", "/v1/status"),
        ("head", "/v1/status"),
        ("delete", "/v1/nowhere"),
    ] {
        let d = decide_as(&s, None, &AccessRequest::for_test(method, path));
        assert_eq!(d.reason, Some(DenyReason::BadMethod), "{method}: {d:?}");
        assert_eq!(d.status, 400, "{method}");
        assert_eq!(
            d.detail,
            format!("the method '{method}' has lower-case letters; methods are case-sensitive (RFC 9110 section 9.1) and Portcullis takes upper-case ones only, as every standard method is written")
        );
    }
    for (method, problem) in [
        ("", "is empty"),
        ("GE T", "is not an HTTP token (RFC 9110 section 5.6.2)"),
        ("GET\n", "is not an HTTP token (RFC 9110 section 5.6.2)"),
    ] {
        let d = decide_as(&s, None, &AccessRequest::for_test(method, "/v1/status"));
        assert_eq!(d.reason, Some(DenyReason::BadMethod), "{method:?}: {d:?}");
        assert_eq!(d.detail, format!("the method '{method}' {problem}"));
    }
    let d = decide_as(&s, None, &AccessRequest::for_test("GET", "/v1/status"));
    assert_eq!(d.status, 200, "{d:?}");
    // An upper-case method the path does not list is still a 405.
    let d = decide_as(&s, None, &AccessRequest::for_test("PURGE", "/v1/status"));
    assert_eq!(d.status, 405, "{d:?}");
}

#[test]
fn a_refusal_repeats_at_most_256_characters_of_a_long_path_or_method() {
    let s = bundled();
    let long_path = format!("/v1/{}", "a".repeat(1_000_000));
    let d = decide_as(&s, None, &AccessRequest::for_test("GET", &long_path));
    assert_eq!(d.reason, Some(DenyReason::NoRoute));
    let echoed = format!("{}…", &long_path[..256]);
    assert_eq!(d.detail, format!("no API route matches GET {echoed}"));
    let long_method = "X".repeat(5_000);
    let d = decide_as(
        &s,
        None,
        &AccessRequest::for_test(&long_method, "/v1/status"),
    );
    assert_eq!(d.status, 405);
    let echoed = &long_method[..256];
    assert_eq!(
        d.detail,
        format!("{echoed}… is not allowed on this path; allowed: GET, HEAD")
    );
    // Cut on a character, not a byte.
    let long_method = "Ä".repeat(5_000);
    let d = decide_as(
        &s,
        None,
        &AccessRequest::for_test(&long_method, "/v1/status"),
    );
    assert_eq!(d.reason, Some(DenyReason::BadMethod));
    let echoed: String = long_method.chars().take(256).collect();
    assert_eq!(
        d.detail,
        format!("the method '{echoed}…' is not an HTTP token (RFC 9110 section 5.6.2)")
    );
    // A short one is repeated whole.
    let d = decide_as(&s, None, &AccessRequest::for_test("GET", "/nope"));
    assert_eq!(d.detail, "no API route matches GET /nope");
}

#[test]
fn a_fragment_in_the_request_target_is_a_bad_path_not_stripped() {
    let s = bundled();
    let d = decide_as(
        &s,
        None,
        &AccessRequest::for_test("GET", "/v1/status#/../audit"),
    );
    assert_eq!(d.reason, Some(DenyReason::BadPath));
    assert_eq!(d.status, 400);
    assert_eq!(
        d.detail,
        "the request target has a raw '#', which no request carries; encode it as %23"
    );
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

#[tokio::test]
async fn mtls_service_account_invokes_its_org_models() {
    let s = bundled();
    let authn = Authenticator::new(&AuthnConfig::default()).unwrap();
    let mut req = predict("sentiment", "v2");
    req.source_principal = Some("spiffe://acme.example/ns/ml/sa/batch-scorer".into());
    let d = decide(&s, &authn, &req).await;
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
    let s = Snapshot::load(&support::fixture("policies-erroring-forbid")).unwrap();
    let rita = Identity::new(r#"User::"rita""#.parse().unwrap(), vec![], AuthMethod::Jwt);
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

/// The fixture issuer, ES256 keys only.
fn authenticator() -> Authenticator {
    Authenticator::new(&AuthnConfig {
        jwt: vec![IssuerConfig {
            algorithms: vec!["ES256".into()],
            ..support::fixture_issuer()
        }],
        ..AuthnConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn jwt_bearer_end_to_end_in_process() {
    let s = bundled();
    let authn = authenticator();
    let mut req = predict("sentiment", "v2");
    req.headers.insert(
        "authorization".into(),
        format!("Bearer {}", support::token("alice")),
    );
    let d = decide(&s, &authn, &req).await;
    assert_eq!(d.decision, Outcome::Allow, "{d:?}");
    assert_eq!(d.auth_method, Some("jwt"));

    req.headers
        .insert("authorization".into(), "Bearer not.a.jwt".into());
    let d = decide(&s, &authn, &req).await;
    assert_eq!(d.reason, Some(DenyReason::InvalidCredentials));
    assert_eq!(d.status, 401);
}

#[tokio::test]
async fn bad_token_on_anonymous_route_is_still_401() {
    let s = bundled();
    let mut req = AccessRequest::for_test("GET", "/v1/status");
    req.headers
        .insert("authorization".into(), "Bearer garbage".into());
    let d = decide(&s, &authenticator(), &req).await;
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

fn bundled_with_shadow(shadow: &str) -> (PolicyDir, Snapshot) {
    let dir = PolicyDir::bundled();
    dir.write("shadow/regions.cedar", shadow);
    let snapshot = Snapshot::load(dir.path()).unwrap();
    (dir, snapshot)
}

const SHADOW_REGION_FORBID: &str = r#"
// Candidate control: no invocations from cn-north-1.
@id("shadow-no-cn-north-1")
forbid (principal, action == Action::"invoke", resource is ModelVersion)
when { context.headers has "x-client-region" && context.headers["x-client-region"] == "cn-north-1" };
"#;

#[test]
fn shadow_policies_are_evaluated_and_never_enforced() {
    let (_dir, s) = bundled_with_shadow(SHADOW_REGION_FORBID);
    let mut req = predict("sentiment", "v2");
    req.headers
        .insert("x-client-region".into(), "cn-north-1".into());
    let d = decide_as(&s, Some(user("alice", Some("acme"))), &req);
    assert_eq!(
        d.decision,
        Outcome::Allow,
        "enforcement is unchanged: {d:?}"
    );
    let shadow = d.shadow.expect("shadow outcome recorded");
    assert!(shadow.disagrees);
    assert_eq!(shadow.decision, Outcome::Deny);
    assert_eq!(shadow.determining_policies, vec!["shadow-no-cn-north-1"]);

    // Where the candidate agrees, it is recorded as agreeing.
    req.headers
        .insert("x-client-region".into(), "eu-west-1".into());
    let d = decide_as(&s, Some(user("alice", Some("acme"))), &req);
    let shadow = d.shadow.expect("shadow outcome recorded");
    assert!(!shadow.disagrees);
    assert_eq!(shadow.decision, Outcome::Allow);
}

#[test]
fn without_shadow_policies_nothing_extra_is_recorded() {
    let d = decide_as(
        &bundled(),
        Some(user("alice", Some("acme"))),
        &predict("sentiment", "v2"),
    );
    assert!(d.shadow.is_none());
}

#[test]
fn shadow_policies_are_validated_like_enforced_ones() {
    let dir = PolicyDir::bundled();
    dir.write(
        "shadow/bad.cedar",
        "\n@id(\"public-status\")\npermit (principal, action, resource);\n\n@id(\"typo\")\nforbid (principal, action == Action::\"invoke\", resource is ModelVersion)\nwhen { resource.deprecatd };\n",
    );
    let errors: Vec<String> = Snapshot::load(dir.path())
        .unwrap_err()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        errors.iter().any(|e| e.starts_with(
            "shadow/bad.cedar:2: shadow policy id 'public-status' is also an enforced policy"
        )),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("shadow/bad.cedar:5:") && e.contains("deprecatd")),
        "{errors:?}"
    );
}

#[test]
fn shadow_outcome_is_part_of_the_decision_audit_record() {
    let (_dir, s) = bundled_with_shadow(SHADOW_REGION_FORBID);
    let mut req = predict("sentiment", "v2");
    req.headers
        .insert("x-client-region".into(), "cn-north-1".into());
    let d = decide_as(&s, Some(user("alice", Some("acme"))), &req);
    let record =
        portcullis::audit::AuditRecord::decision(&d, &req, std::time::Duration::from_micros(5));
    assert_eq!(record.decision, "allow");
    assert_eq!(record.shadow, "deny (disagrees) [shadow-no-cn-north-1]");
}

#[tokio::test]
async fn a_cost_larger_than_the_limit_ever_allows_is_a_400_without_retry_after() {
    // principal-model-tokens holds 20000 at once (bundled quotas.yaml).
    let s = bundled();
    let authn = authenticator();
    let quotas = portcullis::quota::Quotas::in_process(1024);
    let ask = |tokens: u64| {
        let mut req = predict("sentiment", "v2");
        req.headers.insert(
            "authorization".into(),
            format!("Bearer {}", support::token("alice")),
        );
        req.headers
            .insert("x-max-tokens".into(), tokens.to_string());
        req
    };
    let d = decide_with(&s, &authn, &quotas, &ask(50_000)).await;
    assert_eq!(d.reason, Some(DenyReason::BadQuotaCost), "{d:?}");
    let q = d.quota.as_ref().unwrap();
    assert_eq!(q.cost_too_large, Some(50_000));
    assert_eq!(q.retry_after_seconds, None);
    assert!(d.detail.contains("allows at once"), "{}", d.detail);
    // Nothing was charged: 15000 fits, then another 15000 must wait.
    let d = decide_with(&s, &authn, &quotas, &ask(15_000)).await;
    assert_eq!(d.status, 200, "{d:?}");
    let d = decide_with(&s, &authn, &quotas, &ask(15_000)).await;
    assert_eq!(d.reason, Some(DenyReason::QuotaExceeded), "{d:?}");
    assert!(d
        .quota
        .as_ref()
        .unwrap()
        .retry_after_seconds
        .is_some_and(|r| r > 0));
}

/// The decision cache answers a repeated request without evaluating it
/// again, misses when any input the policies read differs (the identity's
/// parents, the context), and starts empty with every snapshot, so a policy
/// change never serves a stale decision.
#[test]
fn decision_cache_hits_only_on_identical_inputs_and_dies_with_its_snapshot() {
    use portcullis::authz::{authorize, ContextInput};
    let snapshot = bundled();
    let resource: cedar_policy::EntityUid = r#"ModelVersion::"sentiment/v2""#.parse().unwrap();
    let context = |hour: u64| {
        ContextInput::Json(json!({
            "method": "POST", "path": "/v1/models/sentiment/versions/v2:predict",
            "host": "api", "route": "predict",
            "time": {"epoch": 1_700_000_000 + hour * 3600, "hour": hour, "weekday": 3},
            "auth": {"method": "jwt", "mfa": false},
            "token": {"scopes": [], "claims": {}}, "headers": {}, "risk": 0,
        }))
    };
    let alice = user("alice", Some("acme"));
    let first = authorize(
        snapshot.authz(),
        &alice,
        "invoke",
        resource.clone(),
        context(10),
    );
    assert_eq!(snapshot.prepared.cache_stats(), (0, 1));
    let again = authorize(
        snapshot.authz(),
        &alice,
        "invoke",
        resource.clone(),
        context(10),
    );
    assert_eq!(snapshot.prepared.cache_stats(), (1, 1));
    assert_eq!(first, again);
    assert!(first.0.allowed, "{first:?}");
    // Other parents: alice outside acme may not invoke acme's model.
    let outsider = user("alice", Some("globex"));
    let other = authorize(
        snapshot.authz(),
        &outsider,
        "invoke",
        resource.clone(),
        context(10),
    );
    assert_eq!(snapshot.prepared.cache_stats(), (1, 2));
    assert!(!other.0.allowed, "{other:?}");
    // Another context is another key.
    authorize(
        snapshot.authz(),
        &alice,
        "invoke",
        resource.clone(),
        context(11),
    );
    assert_eq!(snapshot.prepared.cache_stats(), (1, 3));
    // A fresh snapshot (a reload) starts with an empty cache.
    let reloaded = bundled();
    authorize(reloaded.authz(), &alice, "invoke", resource, context(10));
    assert_eq!(reloaded.prepared.cache_stats(), (0, 1));
}

#[test]
fn context_risk_goes_only_to_actions_whose_schema_declares_it() {
    // The bundled schema declares `risk` for every HTTP action...
    let s = bundled();
    assert!(s.risk_actions.contains("invoke"), "{:?}", s.risk_actions);
    // ...a schema written before it existed still loads, without it.
    let old = Snapshot::load(&support::fixture("policies-erroring-forbid")).unwrap();
    assert!(old.risk_actions.is_empty(), "{:?}", old.risk_actions);
}

#[test]
fn the_gateway_region_reaches_the_cedar_context() {
    // A policy (here a shadow one, to see it decide) can use the region the
    // gateway serves; routes whose context type declares `region` get it.
    let (_dir, s) = bundled_with_shadow(
        r#"
@id("shadow-restricted-models-in-eu-only")
forbid (principal, action == Action::"invoke", resource is ModelVersion)
when { context has region && context.region != "eu-west-1" };
"#,
    );
    assert!(s.region_routes.contains("predict"));
    let mut req = predict("sentiment", "v2");
    req.gateway_region = Some("us-east-1".into());
    let d = decide_as(&s, Some(user("alice", Some("acme"))), &req);
    assert_eq!(d.status, 200, "{d:?}");
    let shadow = d.shadow.expect("shadow outcome");
    assert_eq!(
        shadow.determining_policies,
        vec!["shadow-restricted-models-in-eu-only"]
    );
    req.gateway_region = Some("eu-west-1".into());
    let d = decide_as(&s, Some(user("alice", Some("acme"))), &req);
    assert!(!d.shadow.expect("shadow outcome").disagrees);
}

#[test]
fn residency_is_checked_against_the_orgs_allowed_regions() {
    let s = bundled();
    let req = |region: Option<&str>| {
        let mut r = predict("credit-score", "v1");
        r.body = Some(br#"{"features": [52000, 41, 0.31]}"#.to_vec());
        r.gateway_region = region.map(str::to_string);
        r
    };
    // frank's org comes from entities.json (no org in the credentials).
    let frank = || Some(user("frank", None));
    let d = decide_as(&s, frank(), &req(Some("eu-central-1")));
    assert_eq!(d.status, 200, "{d:?}");
    let d = decide_as(&s, frank(), &req(Some("us-east-1")));
    assert_eq!(d.reason, Some(DenyReason::ResidencyViolation), "{d:?}");
    assert_eq!(d.status, 403);
    let d = decide_as(&s, frank(), &req(None));
    assert!(d.detail.contains("does not declare its region"), "{d:?}");
    // An org without allowed_regions is not affected by the region.
    let d = decide_as(
        &s,
        Some(user("alice", Some("acme"))),
        &predict("sentiment", "v2"),
    );
    assert_eq!(d.status, 200, "{d:?}");
}
