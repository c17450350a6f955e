//! Checks a token's signature and registered claims (against the request's
//! time, not this process's clock; NumericDates whole or fractional) and
//! maps its claims to an [`Identity`], reading the claims the issuer's
//! configuration names (top-level names or JSON Pointers). It does not
//! parse the compact form or choose the key.

use std::collections::{BTreeMap, BTreeSet};

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::compact::malformed;
use super::keys::Key;
use super::{Issuer, Verified};
use crate::authn::{entity_uid, AuthMethod, AuthnFailure, Identity, TokenFacts};

impl Issuer {
    /// Checks the signature and the registered claims.
    pub(super) fn decode(
        &self,
        token: &str,
        key: &Key,
        alg: Algorithm,
        leeway: u64,
    ) -> Result<Map<String, Value>, AuthnFailure> {
        let mut validation = Validation::new(alg);
        validation.leeway = leeway;
        // Time claims are checked against the request's time in
        // `identity`, not against this process's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // The audience is checked in `identity`, from the configured
        // audience claim, with the stricter rule (every value ours).
        validation.validate_aud = false;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| map_error(e.kind()))?;
        Ok(data.claims)
    }

    /// The rules `jsonwebtoken` does not apply (time claims against the
    /// request's time, every audience ours, lifetime), then claims to
    /// identity.
    pub(super) fn identity(
        &self,
        claims: Map<String, Value>,
        now_epoch: u64,
        leeway: u64,
    ) -> Result<Verified, AuthnFailure> {
        let cfg = &self.config;
        self.check_audience(&claims, &cfg.audience_claim)?;
        if cfg.audience_claim != "aud" && claims.contains_key("aud") {
            // RFC 7519 4.1.3: an `aud` present must name us, whatever
            // other claim carries this issuer's audience.
            self.check_audience(&claims, "aud")?;
        }
        let exp = numeric_date(&claims, "exp")?
            .ok_or_else(|| AuthnFailure::new("missing_claim", "the token has no 'exp' claim"))?;
        let iat = numeric_date(&claims, "iat")?;
        let nbf = numeric_date(&claims, "nbf")?;
        // NumericDates may have fractions (RFC 7519 section 2); the
        // request's time is whole seconds.
        let now = now_epoch as f64;
        let leeway_f = leeway as f64;
        if exp + leeway_f < now {
            return Err(AuthnFailure::new(
                "expired",
                "the token has expired; get a new one",
            ));
        }
        if nbf.is_some_and(|nbf| nbf > now + leeway_f) {
            return Err(AuthnFailure::new(
                "not_yet_valid",
                "the token is not valid yet (nbf is in the future)",
            ));
        }
        if iat.is_some_and(|iat| iat > now + leeway_f) {
            return Err(AuthnFailure::new(
                "issued_in_future",
                "the token's iat is in the future; check the issuer's clock",
            ));
        }
        if let Some(max) = cfg.max_lifetime_seconds {
            let Some(iat) = iat else {
                return Err(AuthnFailure::new(
                    "missing_claim",
                    "the token has no 'iat' claim (this issuer's tokens must state their lifetime)",
                ));
            };
            if exp - iat > max as f64 {
                return Err(AuthnFailure::new(
                    "lifetime_too_long",
                    format!("the token lives longer than the {max} seconds this API accepts; request a shorter-lived token"),
                ));
            }
        }
        let subject = claim(&claims, &cfg.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                AuthnFailure::new(
                    "missing_subject",
                    format!(
                        "the token has no '{}' claim naming the caller",
                        cfg.subject_claim
                    ),
                )
            })?;
        let principal = entity_uid(&cfg.principal_type, subject).ok_or_else(|| {
            AuthnFailure::new("bad_subject", "the token's subject cannot be used")
        })?;
        let mut parents = Vec::new();
        if let Some(org_claim) = &cfg.org_claim {
            for org in strings(claim(&claims, org_claim)) {
                parents.extend(entity_uid(&cfg.org_type, &org));
            }
        }
        for roles_claim in &cfg.roles_claim {
            for role in strings(claim(&claims, roles_claim)) {
                let uid = entity_uid(&cfg.role_type, &role);
                if uid.as_ref().is_some_and(|u| !parents.contains(u)) {
                    parents.extend(uid);
                }
            }
        }
        let mut scopes = BTreeSet::new();
        for scope_claim in &cfg.scope_claims {
            match claim(&claims, scope_claim) {
                // RFC 8693 4.2 / RFC 9068: space-separated (Entra's `scp`
                // is a string too).
                Some(Value::String(s)) => {
                    scopes.extend(s.split_ascii_whitespace().map(str::to_string))
                }
                // Okta's `scp`, Auth0's `permissions`.
                Some(list @ Value::Array(_)) => scopes.extend(strings(Some(list))),
                _ => {}
            }
        }
        let amr = strings(claims.get("amr"));
        let acr = claims.get("acr").and_then(Value::as_str);
        let mfa = amr.iter().any(|a| cfg.mfa_amr_values.contains(a))
            || acr.is_some_and(|a| cfg.mfa_acr_values.iter().any(|c| c == a));
        let mut context_claims = BTreeMap::new();
        for name in &cfg.context_claims {
            match claims.get(name) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => {
                    context_claims.insert(name.clone(), s.clone());
                }
                Some(other) => {
                    context_claims.insert(name.clone(), other.to_string());
                }
            }
        }
        Ok(Verified {
            identity: Identity::with_token(
                principal,
                parents,
                AuthMethod::Jwt,
                TokenFacts {
                    scopes,
                    claims: context_claims,
                    mfa,
                },
            ),
            issuer: cfg.issuer.clone(),
            // Cached no longer than the whole second before `exp`.
            exp: exp.floor() as u64,
        })
    }

    /// The token's audience, read from `name` (a string or a non-empty
    /// array of strings), names one of `audiences`, and nothing but
    /// `audiences` and `tolerated_audiences`: a token meant for another
    /// service as well is not accepted here.
    fn check_audience(&self, claims: &Map<String, Value>, name: &str) -> Result<(), AuthnFailure> {
        let cfg = &self.config;
        let wrong_audience = || {
            AuthnFailure::new(
                "wrong_audience",
                "the token was not issued for this API (aud)",
            )
        };
        let values: Vec<&str> = match claims.get(name) {
            None => {
                return Err(AuthnFailure::new(
                    "missing_claim",
                    format!("the token has no '{name}' claim"),
                ))
            }
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| a.as_str().ok_or_else(wrong_audience))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(wrong_audience()),
        };
        let ours = |a: &str| cfg.audiences.iter().any(|c| c == a);
        let tolerated = |a: &str| cfg.tolerated_audiences.iter().any(|c| c == a);
        if values.iter().any(|a| ours(a)) && values.iter().all(|a| ours(a) || tolerated(a)) {
            Ok(())
        } else {
            Err(wrong_audience())
        }
    }
}

/// A NumericDate claim (RFC 7519 section 2: seconds since 1970, possibly
/// with a fraction), if present.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, AuthnFailure> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(seconds) if seconds.is_finite() && seconds >= 0.0 => Ok(Some(seconds)),
            _ => Err(bad_date(name)),
        },
        Some(_) => Err(bad_date(name)),
    }
}

fn bad_date(name: &str) -> AuthnFailure {
    AuthnFailure::new(
        "malformed_claim",
        format!("the token's '{name}' claim must be a number of seconds since 1970"),
    )
}

/// The claim a configured reference names: a top-level claim name
/// (dots and colons are part of names: `https://acme.example/roles`,
/// `cognito:groups`), or, starting with `/`, a JSON Pointer (RFC 6901) into
/// nested objects and arrays (`/realm_access/roles`).
pub(crate) fn claim<'c>(claims: &'c Map<String, Value>, reference: &str) -> Option<&'c Value> {
    let Some(pointer) = reference.strip_prefix('/') else {
        return claims.get(reference);
    };
    let mut tokens = pointer
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"));
    let mut value = claims.get(&tokens.next()?)?;
    for token in tokens {
        value = match value {
            Value::Object(map) => map.get(&token)?,
            Value::Array(list) => list.get(array_index(&token)?)?,
            _ => return None,
        };
    }
    Some(value)
}

/// An RFC 6901 array index: `0`, or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let canonical = token == "0"
        || (!token.starts_with('0')
            && !token.is_empty()
            && token.bytes().all(|b| b.is_ascii_digit()));
    canonical.then(|| token.parse().ok()).flatten()
}

/// Why a configured claim reference cannot name a claim, if it cannot.
pub fn claim_reference_problem(reference: &str) -> Option<String> {
    if reference.is_empty() {
        return Some("a claim name must not be empty".into());
    }
    let pointer = reference.strip_prefix('/')?;
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Some(format!(
                "'{reference}' is not a JSON Pointer: '~' must be followed by 0 or 1 (~0 is '~', ~1 is '/')"
            ));
        }
    }
    if pointer.is_empty() {
        return Some("'/' names no claim; write /<claim>/<member>".into());
    }
    None
}

/// A claim holding a string or an array of strings, as strings.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn map_error(kind: &jsonwebtoken::errors::ErrorKind) -> AuthnFailure {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => AuthnFailure::new("expired", "the token has expired; get a new one"),
        K::ImmatureSignature => AuthnFailure::new(
            "not_yet_valid",
            "the token is not valid yet (nbf is in the future)",
        ),
        K::InvalidAudience => AuthnFailure::new(
            "wrong_audience",
            "the token was not issued for this API (aud)",
        ),
        K::InvalidIssuer => {
            AuthnFailure::new("unknown_issuer", "the token's issuer is not trusted")
        }
        K::InvalidSignature => {
            AuthnFailure::new("bad_signature", "the token's signature does not verify")
        }
        K::MissingRequiredClaim(claim) => {
            AuthnFailure::new("missing_claim", format!("the token has no '{claim}' claim"))
        }
        K::InvalidClaimFormat(claim) => AuthnFailure::new(
            "malformed_claim",
            format!("the token's '{claim}' claim has the wrong type"),
        ),
        K::InvalidAlgorithm => AuthnFailure::new(
            "algorithm_key_mismatch",
            "the token's algorithm does not match its signing key",
        ),
        _ => malformed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::jwt::fixtures::*;
    use serde_json::json;

    #[test]
    fn forged_signature_is_rejected() {
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "untrusted-es256.pem",
            claims(),
        );
        assert_eq!(reason(&t), "bad_signature");
    }

    #[test]
    fn expired_token_is_rejected_beyond_leeway() {
        let mut c = claims();
        c["exp"] = json!(now() - 31);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "expired");
    }

    #[test]
    fn expired_within_leeway_is_accepted() {
        let mut c = claims();
        c["exp"] = json!(now() - 5);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        verify(&verifier(), &t).unwrap();
    }

    #[test]
    fn nbf_in_future_is_rejected() {
        let mut c = claims();
        c["nbf"] = json!(now() + 120);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "not_yet_valid");
    }

    #[test]
    fn iat_in_future_is_rejected() {
        let mut c = claims();
        c["iat"] = json!(now() + 120);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "issued_in_future");
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let mut c = claims();
        c["aud"] = json!("someone-else");
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "wrong_audience");
    }

    #[test]
    fn missing_exp_is_rejected() {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "missing_claim");
    }

    #[test]
    fn roles_scopes_mfa_and_claims_reach_the_identity() {
        let mut c = claims();
        c["roles"] = json!(["invoker", "privileged"]);
        c["scope"] = json!("models:read models:invoke");
        c["scp"] = json!(["extra"]);
        c["amr"] = json!(["pwd", "mfa"]);
        c["tier"] = json!("gold");
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        let id = verify(&verifier(), &t).unwrap();
        let parents: Vec<String> = id.parents.iter().map(ToString::to_string).collect();
        assert!(
            parents.contains(&r#"Role::"privileged""#.to_string()),
            "{parents:?}"
        );
        assert!(parents.contains(&r#"Org::"acme""#.to_string()));
        assert!(id.token.mfa);
        assert_eq!(
            id.token
                .scopes
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["extra", "models:invoke", "models:read"]
        );
        assert_eq!(
            id.token.claims.get("tier").map(String::as_str),
            Some("gold")
        );
    }

    #[test]
    fn acr_can_mean_mfa_and_absent_amr_means_no_mfa() {
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "test-es256.pem",
            claims(),
        );
        assert!(!verify(&verifier(), &t).unwrap().token.mfa);
        let mut c = claims();
        c["acr"] = json!("urn:acr:mfa");
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert!(verify(&verifier(), &t).unwrap().token.mfa);
    }

    #[test]
    fn audience_array_with_a_foreign_value_is_rejected() {
        let mut c = claims();
        c["aud"] = json!(["portcullis", "someone-else"]);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "wrong_audience");
        let mut c = claims();
        c["aud"] = json!(["portcullis"]);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        verify(&verifier(), &t).unwrap();
    }

    #[test]
    fn fractional_exp_is_accepted() {
        for exp in [json!(now() as f64 + 600.5), json!((now() + 600) as f64)] {
            let mut c = claims();
            c["exp"] = exp.clone();
            let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
            assert!(
                t.split('.').nth(1).is_some_and(|p| !p.is_empty()),
                "signed with exp {exp}"
            );
            verify(&verifier(), &t).unwrap_or_else(|e| panic!("exp {exp}: {e:?}"));
        }
    }

    #[test]
    fn fractional_nbf_and_iat_are_accepted_and_still_checked() {
        let mut c = claims();
        c["iat"] = json!(now() as f64 - 0.25);
        c["nbf"] = json!(now() as f64 - 1.5);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        verify(&verifier(), &t).unwrap();
        let mut c = claims();
        c["nbf"] = json!(now() as f64 + 120.5);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "not_yet_valid");
        let mut c = claims();
        c["exp"] = json!(now() as f64 - 31.5);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(reason(&t), "expired");
    }

    #[test]
    fn a_time_claim_that_is_no_number_of_seconds_is_malformed() {
        for (name, value) in [
            ("iat", json!("1767225600")),
            ("nbf", json!(-1)),
            ("iat", json!(-0.5)),
            ("nbf", json!(true)),
        ] {
            let mut c = claims();
            c[name] = value.clone();
            let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
            let e = verify(&verifier(), &t).unwrap_err();
            assert_eq!(e.reason, "malformed_claim", "{name}: {value}");
            assert!(e.detail.contains(name), "{}", e.detail);
        }
    }

    #[test]
    fn a_fractional_lifetime_over_the_maximum_is_refused() {
        let mut ic = issuer_config(fixture("test-issuer.jwks.json"));
        ic.max_lifetime_seconds = Some(600);
        let v = verifier_with(ic);
        let mut c = claims();
        c["iat"] = json!(now() as f64);
        c["exp"] = json!(now() as f64 + 600.5);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(verify(&v, &t).unwrap_err().reason, "lifetime_too_long");
    }

    #[test]
    fn nested_roles_several_role_claims_and_org_lists_reach_the_identity() {
        let mut ic = issuer_config(fixture("test-issuer.jwks.json"));
        ic.roles_claim = vec![
            "/realm_access/roles".into(),
            "/resource_access/portcullis~1api/roles".into(),
            "groups".into(),
            "/missing/roles".into(),
        ];
        ic.org_claim = Some("organization".into());
        ic.subject_claim = "/ext/oid".into();
        let v = verifier_with(ic);
        let mut c = claims();
        c["realm_access"] = json!({"roles": ["invoker", "offline_access"]});
        c["resource_access"] = json!({"portcullis/api": {"roles": ["invoker", "auditor"]}, "account": {"roles": ["manage-account"]}});
        c["groups"] = json!("ml-team");
        c["organization"] = json!(["acme", "globex"]);
        c["ext"] = json!({"oid": "00000000-0000-0000-0000-00000000beef"});
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        let id = verify(&v, &t).unwrap();
        assert_eq!(
            id.principal.to_string(),
            r#"User::"00000000-0000-0000-0000-00000000beef""#
        );
        let parents: Vec<String> = id.parents.iter().map(ToString::to_string).collect();
        assert_eq!(
            parents,
            [
                r#"Org::"acme""#,
                r#"Org::"globex""#,
                r#"Role::"invoker""#,
                r#"Role::"offline_access""#,
                r#"Role::"auditor""#,
                r#"Role::"ml-team""#,
            ]
        );
    }

    #[test]
    fn claim_references_follow_rfc_6901() {
        let claims: Map<String, Value> = serde_json::from_value(json!({
            "a/b": 1, "https://acme.example/roles": ["x"], "cognito:groups": ["g"],
            "n": {"m~n": {"list": ["zero", "one"]}}
        }))
        .unwrap();
        assert_eq!(claim(&claims, "/a~1b"), Some(&json!(1)));
        assert_eq!(
            claim(&claims, "https://acme.example/roles"),
            Some(&json!(["x"]))
        );
        assert_eq!(claim(&claims, "cognito:groups"), Some(&json!(["g"])));
        assert_eq!(claim(&claims, "/n/m~0n/list/1"), Some(&json!("one")));
        assert_eq!(claim(&claims, "/n/m~0n/list/01"), None);
        assert_eq!(claim(&claims, "/n/m~0n/list/2"), None);
        assert_eq!(claim(&claims, "/n/missing"), None);
        assert_eq!(claim_reference_problem("/realm_access/roles"), None);
        assert_eq!(claim_reference_problem("realm_access.roles"), None);
        assert!(claim_reference_problem("/a~2b").is_some());
        assert!(claim_reference_problem("/").is_some());
        assert!(claim_reference_problem("").is_some());
    }

    #[test]
    fn scopes_come_from_strings_or_arrays_in_every_configured_claim() {
        let mut ic = issuer_config(fixture("test-issuer.jwks.json"));
        ic.scope_claims = vec!["scope".into(), "scp".into(), "permissions".into()];
        let v = verifier_with(ic);
        let mut c = claims();
        c["scope"] = json!(["openid", "profile"]);
        c["scp"] = json!("User.Read  Models.Invoke");
        c["permissions"] = json!(["read:models", ""]);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        let id = verify(&v, &t).unwrap();
        assert_eq!(
            id.token
                .scopes
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            [
                "Models.Invoke",
                "User.Read",
                "openid",
                "profile",
                "read:models"
            ]
        );
    }

    #[test]
    fn a_tolerated_audience_goes_with_ours_never_alone() {
        let mut ic = issuer_config(fixture("test-issuer.jwks.json"));
        ic.tolerated_audiences = vec!["https://acme.auth0.com/userinfo".into()];
        let v = verifier_with(ic);
        let with = |aud: Value| {
            let mut c = claims();
            c["aud"] = aud;
            let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
            verify(&v, &t).map(|_| ()).map_err(|e| e.reason)
        };
        assert_eq!(
            with(json!(["portcullis", "https://acme.auth0.com/userinfo"])),
            Ok(())
        );
        assert_eq!(
            with(json!("https://acme.auth0.com/userinfo")),
            Err("wrong_audience")
        );
        assert_eq!(
            with(json!(["https://acme.auth0.com/userinfo"])),
            Err("wrong_audience")
        );
        assert_eq!(
            with(json!(["portcullis", "someone-else"])),
            Err("wrong_audience")
        );
        assert_eq!(with(json!([])), Err("wrong_audience"));
        assert_eq!(with(json!(["portcullis", 7])), Err("wrong_audience"));
    }

    #[test]
    fn the_audience_may_come_from_another_claim_and_an_aud_is_still_checked() {
        // AWS Cognito access tokens: `client_id`, no `aud`.
        let mut ic = issuer_config(fixture("test-issuer.jwks.json"));
        ic.audience_claim = "client_id".into();
        ic.audiences = vec!["5r2gk9a0rq5v3d3n1ekqbl7d0c".into()];
        let v = verifier_with(ic);
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut c = claims();
            c.as_object_mut().unwrap().remove("aud");
            c["client_id"] = json!("5r2gk9a0rq5v3d3n1ekqbl7d0c");
            edit(&mut c);
            let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
            verify(&v, &t).map(|_| ()).map_err(|e| e.reason)
        };
        assert_eq!(with(&|_| {}), Ok(()));
        assert_eq!(
            with(&|c| c["client_id"] = json!("another-client")),
            Err("wrong_audience")
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("client_id");
            }),
            Err("missing_claim"),
            "an ID token (aud, no client_id) is not an access token"
        );
        assert_eq!(
            with(&|c| c["aud"] = json!("another-client")),
            Err("wrong_audience")
        );
        assert_eq!(
            with(&|c| c["aud"] = json!("5r2gk9a0rq5v3d3n1ekqbl7d0c")),
            Ok(())
        );
    }

    #[test]
    fn lifetime_longer_than_the_maximum_is_rejected() {
        let mut ic = issuer_config(fixture("test-issuer.jwks.json"));
        ic.max_lifetime_seconds = Some(600);
        let v = verifier_with(ic);
        let mut c = claims();
        c["exp"] = json!(now() + 3600);
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(verify(&v, &t).unwrap_err().reason, "lifetime_too_long");
        let mut c = claims();
        c.as_object_mut().unwrap().remove("iat");
        let t = sign(Algorithm::ES256, Some("test-es256"), "test-es256.pem", c);
        assert_eq!(verify(&v, &t).unwrap_err().reason, "missing_claim");
        let t = sign(
            Algorithm::ES256,
            Some("test-es256"),
            "test-es256.pem",
            claims(),
        );
        verify(&v, &t).unwrap();
    }
}
