//! Checks a token's signature and registered claims (against the request's
//! time, not this process's clock) and maps its claims to an [`Identity`].
//! It does not parse the compact form or choose the key.

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
        validation.validate_aud = true;
        validation.set_audience(&self.config.audiences);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
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
        // Every audience the token names must be ours: a token meant for
        // another service as well is not accepted here.
        let wrong_audience = || {
            AuthnFailure::new(
                "wrong_audience",
                "the token was not issued for this API (aud)",
            )
        };
        match claims.get("aud") {
            Some(Value::String(a)) if cfg.audiences.contains(a) => {}
            Some(Value::Array(list))
                if !list.is_empty()
                    && list.iter().all(|a| {
                        a.as_str()
                            .is_some_and(|a| cfg.audiences.iter().any(|c| c == a))
                    }) => {}
            _ => return Err(wrong_audience()),
        }
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or_else(|| {
            AuthnFailure::new(
                "malformed_claim",
                "the token's 'exp' claim must be a number",
            )
        })?;
        let iat = match claims.get("iat") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                AuthnFailure::new(
                    "malformed_claim",
                    "the token's 'iat' claim must be a number",
                )
            })?),
        };
        if exp.saturating_add(leeway) < now_epoch {
            return Err(AuthnFailure::new(
                "expired",
                "the token has expired; get a new one",
            ));
        }
        match claims.get("nbf") {
            None => {}
            Some(v) => {
                let nbf = v.as_u64().ok_or_else(|| {
                    AuthnFailure::new(
                        "malformed_claim",
                        "the token's 'nbf' claim must be a number",
                    )
                })?;
                if nbf > now_epoch + leeway {
                    return Err(AuthnFailure::new(
                        "not_yet_valid",
                        "the token is not valid yet (nbf is in the future)",
                    ));
                }
            }
        }
        if let Some(iat) = iat {
            if iat > now_epoch + leeway {
                return Err(AuthnFailure::new(
                    "issued_in_future",
                    "the token's iat is in the future; check the issuer's clock",
                ));
            }
        }
        if let Some(max) = cfg.max_lifetime_seconds {
            let Some(iat) = iat else {
                return Err(AuthnFailure::new(
                    "missing_claim",
                    "the token has no 'iat' claim (this issuer's tokens must state their lifetime)",
                ));
            };
            if exp.saturating_sub(iat) > max {
                return Err(AuthnFailure::new(
                    "lifetime_too_long",
                    format!("the token lives longer than the {max} seconds this API accepts; request a shorter-lived token"),
                ));
            }
        }
        let subject = claims
            .get(&cfg.subject_claim)
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
            if let Some(org) = claims.get(org_claim).and_then(Value::as_str) {
                if !org.is_empty() {
                    parents.extend(entity_uid(&cfg.org_type, org));
                }
            }
        }
        if let Some(roles_claim) = &cfg.roles_claim {
            for role in strings(claims.get(roles_claim)) {
                parents.extend(entity_uid(&cfg.role_type, &role));
            }
        }
        let mut scopes = BTreeSet::new();
        if let Some(Value::String(s)) = claims.get("scope") {
            scopes.extend(s.split_ascii_whitespace().map(str::to_string));
        }
        if let Some(Value::Array(list)) = claims.get("scp") {
            scopes.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
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
            identity: Identity {
                principal,
                parents,
                method: AuthMethod::Jwt,
                token: TokenFacts {
                    scopes,
                    claims: context_claims,
                    mfa,
                },
            },
            issuer: cfg.issuer.clone(),
            exp,
        })
    }
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
