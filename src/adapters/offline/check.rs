//! The offline request format (`portcullis check --request FILE.json`): a
//! request as JSON, optionally with an identity that stands in for
//! credentials. Translates into `AccessRequest` like any adapter.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cedar_policy::EntityUid;
use serde::Deserialize;

use crate::authn::{AuthMethod, Identity};
use crate::request::AccessRequest;

/// A request described in JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckInput {
    /// HTTP method.
    pub method: String,
    /// Path, with query string if any.
    pub path: String,
    /// Host / authority.
    #[serde(default)]
    pub host: String,
    /// Headers (names are lower-cased), e.g. `authorization`.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// Client address.
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// mTLS peer identity as Envoy would report it.
    #[serde(default)]
    pub source_principal: Option<String>,
    /// Request time, seconds since the epoch (default: now).
    #[serde(default)]
    pub time: Option<u64>,
    /// Decide as this identity instead of authenticating the request.
    #[serde(default)]
    pub identity: Option<IdentityInput>,
    /// The anomaly risk score the policies see as `context.risk` (0-100;
    /// the live detector's score when serving).
    #[serde(default)]
    pub risk: u8,
    /// The request body, as JSON (sent with `Content-Type:
    /// application/json` unless `headers` say otherwise).
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// The request body as raw text, for bodies that are not JSON or not
    /// well-formed.
    #[serde(default)]
    pub raw_body: Option<String>,
    /// The region the gateway serves.
    #[serde(default)]
    pub region: Option<String>,
}

/// An identity given directly, in Cedar terms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityInput {
    /// The principal, e.g. `User::"alice"`.
    pub principal: String,
    /// Extra parents, e.g. `["Org::\"acme\""]`.
    #[serde(default)]
    pub parents: Vec<String>,
    /// Scopes the credential grants (`context.token.scopes`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Whether the user passed multi-factor authentication.
    #[serde(default)]
    pub mfa: bool,
}

impl CheckInput {
    /// Parses the JSON text of a request file.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text)
            .map_err(|e| format!("line {} column {}: {e}", e.line(), e.column()))
    }

    /// The request in our own terms.
    pub fn to_access_request(&self) -> AccessRequest {
        let body = match (&self.body, &self.raw_body) {
            (Some(json), _) => Some(json.to_string().into_bytes()),
            (None, Some(raw)) => Some(raw.clone().into_bytes()),
            (None, None) => None,
        };
        let mut headers: crate::request::Headers = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if self.body.is_some() {
            headers
                .entry("content-type".into())
                .or_insert_with(|| "application/json".into());
        }
        AccessRequest {
            // As sent, as the live front doors take it: `get` is not `GET`.
            method: self.method.clone(),
            path: self.path.clone(),
            host: self.host.clone(),
            headers,
            source_ip: self.source_ip,
            source_principal: self.source_principal.clone(),
            request_id: String::new(),
            time: self
                .time
                .map(|t| UNIX_EPOCH + Duration::from_secs(t))
                .unwrap_or_else(SystemTime::now),
            body,
            gateway_region: self.region.clone(),
            body_not_forwarded: false,
        }
    }

    /// The given identity, if any.
    pub fn identity(&self) -> Result<Option<Identity>, String> {
        self.identity.as_ref().map(Self::identity_of).transpose()
    }

    /// An identity from its JSON form.
    pub fn identity_of(input: &IdentityInput) -> Result<Identity, String> {
        let parse = |s: &str| {
            s.parse::<EntityUid>().map_err(|e| {
                format!("identity: '{s}' is not a Cedar entity uid like User::\"alice\": {e}")
            })
        };
        Ok(Identity::with_token(
            parse(&input.principal)?,
            input
                .parents
                .iter()
                .map(|p| parse(p))
                .collect::<Result<_, _>>()?,
            AuthMethod::Jwt,
            crate::authn::TokenFacts {
                scopes: input.scopes.iter().cloned().collect(),
                claims: Default::default(),
                mfa: input.mfa,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_is_kept_as_sent_not_upper_cased() {
        for method in ["GET", "get"] {
            let input = CheckInput::parse(&format!(
                r#"{{"method": "{method}", "path": "/v1/status"}}"#
            ))
            .unwrap();
            assert_eq!(input.to_access_request().method, method);
        }
    }
}
