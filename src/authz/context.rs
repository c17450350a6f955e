//! The Cedar context of a request: built from the request, its route and
//! the caller's identity as JSON (`RequestContext`), then turned into
//! Cedar's `Context` without serde's untagged guessing
//! ([`context_from_json`]).

use std::time::SystemTime;

use cedar_policy::{Context, RestrictedExpression};
use serde_json::{json, Map, Value};

use crate::authn::Identity;
use crate::request::AccessRequest;
use crate::routes::Route;

/// Why a JSON context has no Cedar form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The context is not a JSON object.
    #[error("the context must be a record")]
    NotARecord,
    /// A number that is not a 64-bit integer (Cedar has only `Long`).
    #[error("'{at}': {number} is not a 64-bit integer")]
    NotAnInteger {
        /// The field.
        at: String,
        /// The number as written.
        number: String,
    },
    /// `{"__extn": {"fn": ...}}` with a function other than `ip`/`decimal`.
    #[error("'{at}': unknown extension function {function}")]
    UnknownExtension {
        /// The field.
        at: String,
        /// The function named.
        function: String,
    },
    /// `null` (Cedar has no null).
    #[error("'{at}': null has no Cedar value")]
    Null {
        /// The field.
        at: String,
    },
    /// Cedar refused the record (e.g. duplicate keys).
    #[error("{0}")]
    Cedar(String),
}

/// The Cedar context a route produces.
pub struct RequestContext;

impl RequestContext {
    /// The context for a real request; `path` is the request path in
    /// normal form, as the route matched it (`routes::normalize_path`).
    pub fn build(req: &AccessRequest, path: &str, route: &Route, identity: &Identity) -> Value {
        let mut headers = Map::new();
        for name in &route.context_headers {
            if let Some(v) = req.header(name) {
                headers.insert(name.clone(), Value::String(v.to_string()));
            }
        }
        let epoch = crate::time::epoch_seconds(req.time);
        let mut ctx = json!({
            "method": req.method,
            "path": path,
            "host": req.host,
            "route": route.name,
            "time": time_record(epoch),
            "auth": { "method": identity.method.as_str(), "mfa": identity.token.mfa },
            "token": {
                "scopes": identity.token.scopes.iter().collect::<Vec<_>>(),
                "claims": identity.token.claims,
            },
            "headers": headers,
        });
        if let Some(ip) = req.source_ip {
            // Explicit extension escape: the context parses without the
            // schema (fast); `Request::new` still checks it against it.
            ctx["source_ip"] = json!({ "__extn": { "fn": "ip", "arg": ip.to_string() } });
        }
        ctx
    }

    /// A context with every field a route can produce set, to check the
    /// route against the schema at load time.
    pub fn sample(route: &Route) -> Value {
        Self::sample_with_claims(route, &[])
    }

    /// [`RequestContext::sample`] with `claims` in `context.token.claims`
    /// (as an issuer's `context_claims` copies them: strings).
    pub fn sample_with_claims(route: &Route, claims: &[&str]) -> Value {
        let mut req = AccessRequest::for_test("GET", "/");
        req.source_ip = Some(std::net::IpAddr::from([127, 0, 0, 1]));
        req.time = SystemTime::UNIX_EPOCH;
        for name in &route.context_headers {
            req.headers.insert(name.clone(), "sample".into());
        }
        let mut identity = Identity::new(
            crate::authn::entity_uid("User", "sample").expect("User is a type name"),
            Vec::new(),
            crate::authn::AuthMethod::Jwt,
        );
        identity.token.claims = claims
            .iter()
            .map(|c| (c.to_string(), "sample".to_string()))
            .collect();
        Self::build(&req, "/", route, &identity)
    }
}

/// `{epoch, hour, weekday}` in UTC; weekday is ISO (Monday 1 .. Sunday 7).
fn time_record(epoch: u64) -> Value {
    let days = epoch / 86_400;
    let hour = (epoch % 86_400) / 3_600;
    // 1970-01-01 was a Thursday (ISO 4).
    let weekday = (days + 3) % 7 + 1;
    json!({ "epoch": epoch, "hour": hour, "weekday": weekday })
}

/// A Cedar context from the JSON value `RequestContext::build` produces:
/// strings, booleans, integers, arrays, objects and `{"__extn": {"fn":
/// "ip"|"decimal", "arg": ...}}`.
pub fn context_from_json(value: Value) -> Result<Context, ContextError> {
    let Value::Object(fields) = value else {
        return Err(ContextError::NotARecord);
    };
    let pairs = fields
        .into_iter()
        .map(|(k, v)| restricted(v, &k).map(|v| (k, v)))
        .collect::<Result<Vec<_>, _>>()?;
    Context::from_pairs(pairs).map_err(|e| ContextError::Cedar(e.to_string()))
}

fn restricted(value: Value, at: &str) -> Result<RestrictedExpression, ContextError> {
    Ok(match value {
        Value::String(s) => RestrictedExpression::new_string(s),
        Value::Bool(b) => RestrictedExpression::new_bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => {
                return Err(ContextError::NotAnInteger {
                    at: at.to_string(),
                    number: n.to_string(),
                })
            }
        },
        Value::Array(items) => RestrictedExpression::new_set(
            items
                .into_iter()
                .map(|v| restricted(v, at))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Value::Object(mut fields) => {
            if let Some(Value::Object(extn)) = fields.remove("__extn") {
                let arg = extn.get("arg").and_then(Value::as_str).unwrap_or("");
                return match extn.get("fn").and_then(Value::as_str) {
                    Some("ip") => Ok(RestrictedExpression::new_ip(arg)),
                    Some("decimal") => Ok(RestrictedExpression::new_decimal(arg)),
                    other => Err(ContextError::UnknownExtension {
                        at: at.to_string(),
                        function: format!("{other:?}"),
                    }),
                };
            }
            RestrictedExpression::new_record(
                fields
                    .into_iter()
                    .map(|(k, v)| {
                        let v = restricted(v, &k)?;
                        Ok((k, v))
                    })
                    .collect::<Result<Vec<_>, ContextError>>()?,
            )
            .map_err(|e| ContextError::Cedar(e.to_string()))?
        }
        Value::Null => return Err(ContextError::Null { at: at.to_string() }),
    })
}
