//! The attack suite: hostile and malformed credentials, table-driven,
//! through the ext_authz adapter (the tonic trait method) with keys from a
//! local identity provider found through OIDC discovery. Every case must be
//! a 401 with `WWW-Authenticate: Bearer error="invalid_token"` — never a
//! 5xx, never a panic, never an echo of the token — and no header may make
//! Portcullis fetch anything.

use base64::Engine;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use portcullis::adapters::extauthz::AuthzService;
use portcullis::authn::Authenticator;
use serde_json::{json, Value};

use crate::support::{self, now, sign_raw_es256, Check, IdentityProvider, PREDICT, PREDICT_BODY};

const ATTACKER_JWKS: &str = "/attacker/jwks.json";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

async fn service(idp: &IdentityProvider) -> (AuthzService, support::TestAudit) {
    let yaml = format!(
        r#"
authentication:
  jwks:
    unknown_kid_refetch_seconds: 3600
  jwt:
    - issuer: "{issuer}"
      audiences: [portcullis]
      discovery: true
      algorithms: [ES256, RS256]
      org_claim: org
"#,
        issuer = idp.issuer()
    );
    let config = support::parse_config(&yaml, "attack.yaml");
    let authenticator = Authenticator::new(&config.authentication).unwrap();
    authenticator.prefetch().await;
    assert!(authenticator.unready_issuers().is_empty(), "keys fetched");
    support::authz_service(authenticator, None)
}

/// A Check for a predict call with these header values (repeats allowed,
/// sent as Envoy sends raw headers: `header_map` with byte values).
fn check_request(headers: &[(&str, Vec<u8>)]) -> CheckRequest {
    headers
        .iter()
        .fold(Check::post(PREDICT), |check, (name, value)| {
            check.raw_header(name, value)
        })
        .raw_header("content-type", b"application/json")
        .raw_body(PREDICT_BODY)
        .build()
}

async fn check(service: &AuthzService, headers: &[(&str, Vec<u8>)]) -> CheckResponse {
    service
        .check(tonic::Request::new(check_request(headers)))
        .await
        .expect("Check answers (a denial is not a gRPC error)")
        .into_inner()
}

fn bearer(token: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![("authorization", format!("Bearer {token}").into_bytes())]
}

fn claims() -> Value {
    json!({"iss": "", "aud": "portcullis", "sub": "alice", "org": "acme",
           "iat": now(), "exp": now() + 300})
}

/// A well-formed ES256 token from the provider with `edit` applied to the
/// claims and `header` as the header JSON.
fn token_with(issuer: &str, header: Value, edit: impl FnOnce(&mut Value)) -> String {
    let mut c = claims();
    c["iss"] = json!(issuer);
    edit(&mut c);
    sign_raw_es256(&header.to_string(), &c.to_string(), "test-es256.pem")
}

fn es256() -> Value {
    json!({"alg": "ES256", "kid": "test-es256", "typ": "JWT"})
}

struct Case {
    name: &'static str,
    headers: Vec<(&'static str, Vec<u8>)>,
}

fn cases(idp: &IdentityProvider) -> Vec<Case> {
    let iss = idp.issuer();
    let attacker = format!("{}{ATTACKER_JWKS}", idp.issuer());
    let tok = |header: Value, edit: &dyn Fn(&mut Value)| token_with(&iss, header, edit);
    let valid = tok(es256(), &|_| {});
    let parts: Vec<String> = valid.split('.').map(str::to_string).collect();
    let mut c = claims();
    c["iss"] = json!(iss);
    let payload = b64(&c.to_string());
    let rsa_public = std::fs::read(support::fixture("keys/test-issuer.jwks.json")).unwrap();
    let hs256_with_public_key = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("test-rs256".into());
        jsonwebtoken::encode(&h, &c, &jsonwebtoken::EncodingKey::from_secret(&rsa_public)).unwrap()
    };
    let inner = valid.clone();
    let mut list = vec![
        (
            "alg none",
            format!("{}.{payload}.", b64(r#"{"alg":"none"}"#)),
        ),
        (
            "alg None",
            format!("{}.{payload}.", b64(r#"{"alg":"None"}"#)),
        ),
        (
            "HS256 signed with the RSA public key",
            hs256_with_public_key,
        ),
        (
            "jku header",
            tok(
                json!({"alg": "ES256", "kid": "test-es256", "jku": attacker}),
                &|_| {},
            ),
        ),
        (
            "x5u header",
            tok(
                json!({"alg": "ES256", "kid": "test-es256", "x5u": attacker}),
                &|_| {},
            ),
        ),
        (
            "embedded jwk header",
            tok(
                json!({"alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256",
                    "x": "JP9SY9pimcTwdeMzS23Lb9H_EiceAkEAFrhvTJyOLMs",
                    "y": "NBSG5RqLNsJaxy6uIC4zzu6ZtbDA45hJzQngDnUCvW8"}}),
                &|_| {},
            ),
        ),
        (
            "kid path traversal",
            tok(
                json!({"alg": "ES256", "kid": "../../../../etc/passwd"}),
                &|_| {},
            ),
        ),
        (
            "kid SQL injection",
            tok(json!({"alg": "ES256", "kid": "x' OR '1'='1' --"}), &|_| {}),
        ),
        (
            "kid of 10 KB",
            tok(
                json!({"alg": "ES256", "kid": "k".repeat(10 * 1024)}),
                &|_| {},
            ),
        ),
        (
            "kid with control characters",
            tok(json!({"alg": "ES256", "kid": "a\u{0}b\r\nc"}), &|_| {}),
        ),
        (
            "unknown crit",
            tok(
                json!({"alg": "ES256", "kid": "test-es256", "crit": ["urn:x:ext"], "urn:x:ext": 1}),
                &|_| {},
            ),
        ),
        ("expired", tok(es256(), &|c| c["exp"] = json!(now() - 120))),
        (
            "nbf in the future",
            tok(es256(), &|c| c["nbf"] = json!(now() + 600)),
        ),
        (
            "iat in the future",
            tok(es256(), &|c| c["iat"] = json!(now() + 600)),
        ),
        (
            "iss missing",
            tok(es256(), &|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
        ),
        (
            "iss wrong",
            tok(es256(), &|c| c["iss"] = json!("https://evil.example/")),
        ),
        (
            "iss array",
            tok(es256(), &|c| {
                c["iss"] = json!([c["iss"].clone(), "https://evil.example/"])
            }),
        ),
        (
            "aud missing",
            tok(es256(), &|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "aud wrong",
            tok(es256(), &|c| c["aud"] = json!("another-api")),
        ),
        (
            "aud array with an extra value",
            tok(es256(), &|c| {
                c["aud"] = json!(["portcullis", "another-api"])
            }),
        ),
        (
            "exp missing",
            tok(es256(), &|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "exp as a string",
            tok(es256(), &|c| c["exp"] = json!("tomorrow")),
        ),
        (
            "signed by a key that is not the provider's",
            sign_raw_es256(&es256().to_string(), &c.to_string(), "untrusted-es256.pem"),
        ),
        (
            "key rotated out (kid unknown to the provider)",
            sign_raw_es256(
                &json!({"alg": "ES256", "kid": "rotated-es256"}).to_string(),
                &c.to_string(),
                "rotated-es256.pem",
            ),
        ),
        (
            "duplicate claim",
            sign_raw_es256(
                &es256().to_string(),
                &format!(
                    r#"{{"iss":"{iss}","aud":"portcullis","sub":"alice","sub":"carol","exp":{}}}"#,
                    now() + 300
                ),
                "test-es256.pem",
            ),
        ),
        (
            "duplicate header member",
            sign_raw_es256(
                r#"{"alg":"ES256","kid":"test-es256","kid":"test-rs256"}"#,
                &c.to_string(),
                "test-es256.pem",
            ),
        ),
        (
            "padding",
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        ),
        (
            "standard base64 alphabet",
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                parts[2].replace('-', "+").replace('_', "/")
                    + if parts[2].contains(['-', '_']) {
                        ""
                    } else {
                        "+/"
                    }
            ),
        ),
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{valid}.{}", parts[2])),
        (
            "five-part JWE",
            format!(
                "{}.{}.{}.{}.{}",
                b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#),
                "a",
                "b",
                "c",
                "d"
            ),
        ),
        (
            "nested JWT",
            sign_raw_es256(
                &json!({"alg": "ES256", "kid": "test-es256", "cty": "JWT"}).to_string(),
                &inner,
                "test-es256.pem",
            ),
        ),
        (
            "oversized token",
            format!("{valid}{}", "A".repeat(9 * 1024)),
        ),
        ("empty segments", "..".to_string()),
        ("not base64 at all", "!!!.???.***".to_string()),
        (
            "header not JSON",
            format!("{}.{payload}.{}", b64("not json"), parts[2]),
        ),
        (
            "payload a JSON array",
            format!("{}.{}.{}", parts[0], b64("[1,2]"), parts[2]),
        ),
    ];
    let mut out: Vec<Case> = list
        .drain(..)
        .map(|(name, token)| Case {
            name,
            headers: bearer(&token),
        })
        .collect();
    out.push(Case {
        name: "whitespace inside the token",
        headers: bearer(&format!("{}. {}.{}", parts[0], parts[1], parts[2])),
    });
    out.push(Case {
        name: "non-UTF-8 bytes in the token",
        headers: vec![(
            "authorization",
            [b"Bearer ".as_slice(), &[0xff, 0xfe, b'.', 0xc3, b'.', 0x80]].concat(),
        )],
    });
    out.push(Case {
        name: "two Authorization headers",
        headers: vec![
            ("authorization", format!("Bearer {valid}").into_bytes()),
            ("authorization", format!("Bearer {valid}").into_bytes()),
        ],
    });
    out.push(Case {
        name: "empty bearer",
        headers: vec![("authorization", b"Bearer ".to_vec())],
    });
    out.push(Case {
        name: "Basic scheme",
        headers: vec![("authorization", b"Basic YWxpY2U6c2VjcmV0".to_vec())],
    });
    out
}

fn denied_with_401(resp: &CheckResponse) -> Result<(), String> {
    let Some(HttpResponse::DeniedResponse(denied)) = &resp.http_response else {
        return Err(format!("not denied: {resp:?}"));
    };
    let status = denied.status.as_ref().map(|s| s.code).unwrap_or_default();
    if status != 401 {
        return Err(format!("status {status}, body {}", denied.body));
    }
    let www = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "www-authenticate")
        .map(|h| h.value.clone())
        .ok_or("no WWW-Authenticate header")?;
    if !www.starts_with("Bearer ") {
        return Err(format!("WWW-Authenticate is not a Bearer challenge: {www}"));
    }
    let problem: Value = serde_json::from_str(&denied.body).map_err(|e| e.to_string())?;
    if problem["status"] != 401 || problem["detail"].as_str().is_none_or(str::is_empty) {
        return Err(format!("problem body lacks status/detail: {problem}"));
    }
    Ok(())
}

#[tokio::test]
async fn every_attack_is_a_401_and_nothing_is_fetched() {
    let idp = IdentityProvider::start();
    let (service, _audit) = service(&idp).await;
    let fetches_before = idp.hits("/jwks.json");

    // The setup accepts a good token: the denials below are about the attack.
    let good = token_with(&idp.issuer(), es256(), |_| {});
    let resp = check(&service, &bearer(&good)).await;
    assert!(
        matches!(resp.http_response, Some(HttpResponse::OkResponse(_))),
        "a valid token is allowed: {resp:?}"
    );

    let mut failures = Vec::new();
    for case in cases(&idp) {
        let resp = check(&service, &case.headers).await;
        if let Err(why) = denied_with_401(&resp) {
            failures.push(format!("{}: {why}", case.name));
            continue;
        }
        // The token never comes back in the body or the challenge.
        let Some(HttpResponse::DeniedResponse(denied)) = &resp.http_response else {
            unreachable!()
        };
        for (_, value) in &case.headers {
            let value = String::from_utf8_lossy(value);
            if let Some(token) = value.strip_prefix("Bearer ") {
                if token.len() > 8 && denied.body.contains(token) {
                    failures.push(format!("{}: the body echoes the token", case.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "cases not refused with 401:\n{}",
        failures.join("\n")
    );

    // jku / x5u were never followed.
    assert_eq!(idp.hits(ATTACKER_JWKS), 0, "{:?}", idp.all_hits());
    // The unknown kids (rotated-out key, traversal, SQL, 10 KB) together
    // caused at most one refetch within the interval.
    assert!(
        idp.hits("/jwks.json") - fetches_before <= 1,
        "{:?}",
        idp.all_hits()
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_refetches_the_jwks_at_most_once() {
    let idp = IdentityProvider::start();
    let (service, _audit) = service(&idp).await;
    let before = idp.hits("/jwks.json");
    let mut c = claims();
    c["iss"] = json!(idp.issuer());
    for i in 0..200 {
        let token = sign_raw_es256(
            &json!({"alg": "ES256", "kid": format!("unknown-{i}")}).to_string(),
            &c.to_string(),
            "test-es256.pem",
        );
        let resp = check(&service, &bearer(&token)).await;
        denied_with_401(&resp).unwrap();
    }
    assert_eq!(idp.hits("/jwks.json") - before, 1, "{:?}", idp.all_hits());
}
