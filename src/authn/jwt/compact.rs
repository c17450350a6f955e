//! The compact JWS form and its header, read as attacker input: exactly
//! three canonical base64url segments, JSON objects without duplicate
//! members, and no header that points at keys, nests tokens or demands
//! extensions. It does not verify signatures.

use base64::Engine;
use serde_json::{Map, Value};

use crate::authn::AuthnFailure;

/// The answer for a token that is not a well-formed JWT.
pub(super) fn malformed() -> AuthnFailure {
    AuthnFailure::new(
        "malformed_token",
        "the bearer token is not a well-formed JWT",
    )
}

type JsonObject = Map<String, Value>;

/// Splits a compact JWS into exactly three canonical base64url segments
/// (no padding, no `+`/`/`, no whitespace) and parses the header and
/// payload as JSON objects without duplicate members. The payload is read
/// only to choose the issuer; the verified claims are checked afterwards.
pub(super) fn split_compact(token: &str) -> Result<(JsonObject, JsonObject), AuthnFailure> {
    let segments: Vec<&str> = token.split('.').collect();
    if segments.len() != 3 {
        return Err(malformed());
    }
    let canonical = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if segments[..2].iter().any(|s| s.is_empty()) || !segments.iter().all(|s| canonical(s)) {
        return Err(malformed());
    }
    let object = |segment: &str| -> Result<Map<String, Value>, AuthnFailure> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| malformed())?;
        let strict = crate::json::from_slice(&bytes, |_| DUPLICATE.to_string()).map_err(|e| {
            if e.to_string().contains(DUPLICATE) {
                AuthnFailure::new(
                    "duplicate_member",
                    "the token repeats a JSON member; it is ambiguous and refused",
                )
            } else {
                malformed()
            }
        })?;
        match strict {
            Value::Object(map) => Ok(map),
            _ => Err(malformed()),
        }
    };
    Ok((object(segments[0])?, object(segments[1])?))
}

/// Header members that point at keys or nest tokens: never followed.
pub(super) fn check_header(
    raw: &Map<String, Value>,
    header: &jsonwebtoken::Header,
) -> Result<(), AuthnFailure> {
    for name in ["jku", "x5u", "jwk", "x5c"] {
        if raw.contains_key(name) {
            return Err(AuthnFailure::new(
                "header_not_allowed",
                format!("the token's '{name}' header is not accepted; keys come only from the issuer's configured key set"),
            ));
        }
    }
    if raw.contains_key("crit") || header.crit.is_some() {
        return Err(AuthnFailure::new(
            "unsupported_critical_header",
            "the token names critical header extensions this service does not support",
        ));
    }
    if raw.contains_key("enc") || raw.contains_key("zip") {
        return Err(malformed());
    }
    if header
        .cty
        .as_deref()
        .is_some_and(|c| c.eq_ignore_ascii_case("jwt"))
    {
        return Err(AuthnFailure::new(
            "nested_token",
            "nested tokens (cty: JWT) are not accepted",
        ));
    }
    Ok(())
}

const DUPLICATE: &str = "duplicate JSON member";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::jwt::fixtures::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    #[test]
    fn alg_none_and_garbage_are_malformed() {
        assert_eq!(reason("garbage"), "malformed_token");
        // {"alg":"none"} . {"iss":...} . (empty signature)
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let t = format!("{}.{}.", b64(json!({"alg": "none"})), b64(claims()));
        assert_eq!(reason(&t), "malformed_token");
    }

    #[test]
    fn crit_header_is_rejected() {
        let pem = std::fs::read(fixture("test-es256.pem")).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("test-es256".into());
        header.crit = Some(vec!["exp-ext".into()]);
        let t = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_ec_pem(&pem).unwrap())
            .unwrap();
        assert_eq!(reason(&t), "unsupported_critical_header");
    }

    #[test]
    fn duplicate_members_and_key_headers_are_refused() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let header = b64(r#"{"alg":"ES256","kid":"test-es256"}"#);
        let dup = b64(&format!(
            r#"{{"iss":"{ISS}","aud":"portcullis","sub":"alice","sub":"admin","exp":{}}}"#,
            now() + 60
        ));
        assert_eq!(reason(&format!("{header}.{dup}.c2ln")), "duplicate_member");
        let jku = b64(r#"{"alg":"ES256","jku":"http://127.0.0.1:9/keys"}"#);
        let payload = b64(&claims().to_string());
        assert_eq!(
            reason(&format!("{jku}.{payload}.c2ln")),
            "header_not_allowed"
        );
        assert_eq!(
            reason(&format!("{header}=.{payload}.c2ln")),
            "malformed_token"
        );
    }
}
