//! The Cedar context of a request: its inputs, typed (`RequestContext`,
//! which also writes the decision-cache key), turned into JSON only when
//! Cedar evaluates, then into Cedar's `Context` without serde's untagged
//! guessing ([`context_from_json`]).

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

/// The Cedar context of one request, typed: what the route, the request
/// and the caller's identity put in it. The JSON form
/// ([`RequestContext::to_json`], then [`context_from_json`]) is built only
/// when Cedar evaluates, that is on a decision-cache miss; a hit needs only
/// [`RequestContext::write_key`].
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    req: &'a AccessRequest,
    path: &'a str,
    route: &'a Route,
    identity: &'a Identity,
    risk: Option<u8>,
    region: Option<&'a str>,
}

impl<'a> RequestContext<'a> {
    /// The context for a real request; `path` is the request path in
    /// normal form, as the route matched it (`routes::normalize_path`).
    pub fn new(
        req: &'a AccessRequest,
        path: &'a str,
        route: &'a Route,
        identity: &'a Identity,
    ) -> Self {
        RequestContext {
            req,
            path,
            route,
            identity,
            risk: None,
            region: None,
        }
    }

    /// With `context.risk` (0-100), for actions whose schema declares it.
    pub fn with_risk(self, risk: u8) -> Self {
        RequestContext {
            risk: Some(risk),
            ..self
        }
    }

    /// With `context.region`, the gateway's region, for routes whose
    /// residency rules read it.
    pub fn with_region(self, region: &'a str) -> Self {
        RequestContext {
            region: Some(region),
            ..self
        }
    }

    /// The context as the JSON value [`context_from_json`] turns into
    /// Cedar's: `method`, `path`, `host`, `route`, `time` (`{epoch, hour,
    /// weekday}`), `auth` (`{method, mfa}`), `token` (`{scopes, claims}`),
    /// `headers` (the route's `context_headers` present), and when known
    /// `source_ip` (an `ip` extension value), `risk` and `region`.
    pub fn to_json(&self) -> Value {
        let (req, identity) = (self.req, self.identity);
        let mut headers = Map::new();
        for name in &self.route.context_headers {
            if let Some(v) = req.header(name) {
                headers.insert(name.clone(), Value::String(v.to_string()));
            }
        }
        let epoch = crate::time::epoch_seconds(req.time);
        let mut ctx = json!({
            "method": req.method,
            "path": self.path,
            "host": req.host,
            "route": self.route.name,
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
        if let Some(risk) = self.risk {
            ctx["risk"] = json!(risk);
        }
        if let Some(region) = self.region {
            ctx["region"] = Value::String(region.to_string());
        }
        ctx
    }

    /// Appends an encoding of every input of [`RequestContext::to_json`]
    /// to `key`: two contexts write the same key exactly when their JSON
    /// forms are equal (strings are length-prefixed, so no value can forge
    /// a separator). The principal and its parents are not here: the
    /// decision cache adds them.
    pub fn write_key(&self, key: &mut String) {
        use std::fmt::Write as _;
        // Numbers through `itoa`, not `fmt`: this runs on every decision.
        fn number(key: &mut String, n: impl itoa::Integer) {
            key.push_str(itoa::Buffer::new().format(n));
        }
        fn text(key: &mut String, s: &str) {
            number(key, s.len());
            key.push(':');
            key.push_str(s);
        }
        let (req, identity) = (self.req, self.identity);
        for s in [
            req.method.as_str(),
            self.path,
            req.host.as_str(),
            &self.route.name,
        ] {
            text(key, s);
        }
        number(key, crate::time::epoch_seconds(req.time));
        key.push('|');
        key.push_str(identity.method.as_str());
        key.push_str(if identity.token.mfa { "|1|" } else { "|0|" });
        number(key, identity.token.scopes.len());
        key.push('|');
        for s in &identity.token.scopes {
            text(key, s);
        }
        number(key, identity.token.claims.len());
        key.push('|');
        for (k, v) in &identity.token.claims {
            text(key, k);
            text(key, v);
        }
        for name in &self.route.context_headers {
            match req.header(name) {
                Some(v) => text(key, v),
                None => key.push('-'),
            }
        }
        match req.source_ip {
            Some(ip) => {
                let _ = write!(key, "|{ip}|");
            }
            None => key.push_str("|-|"),
        }
        match self.risk {
            Some(r) => {
                number(key, r);
                key.push('|');
            }
            None => key.push_str("-|"),
        }
        match self.region {
            Some(r) => text(key, r),
            None => key.push('-'),
        }
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
        RequestContext::new(&req, "/", route, &identity).to_json()
    }
}

/// The context an authorization is asked with: a request's, typed, or a
/// JSON record given whole (an admin call, a policy test case).
#[derive(Debug, Clone)]
pub enum ContextInput<'a> {
    /// A request's context ([`RequestContext`]).
    Request(RequestContext<'a>),
    /// A JSON record in the form [`context_from_json`] reads.
    Json(Value),
}

impl ContextInput<'_> {
    /// Appends the context's decision-cache key to `key` (the two kinds
    /// never share a key).
    pub fn write_key(&self, key: &mut String) {
        use std::fmt::Write as _;
        match self {
            ContextInput::Request(c) => {
                key.push('R');
                c.write_key(key);
            }
            ContextInput::Json(v) => {
                let _ = write!(key, "J{v}");
            }
        }
    }

    /// The context as JSON, for Cedar.
    pub fn into_json(self) -> Value {
        match self {
            ContextInput::Request(c) => c.to_json(),
            ContextInput::Json(v) => v,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::{entity_uid, AuthMethod};
    use crate::routes::RouteTable;

    fn route() -> Route {
        let table = RouteTable::parse(
            "routes:\n  - name: r\n    method: POST\n    path: /v1/{m}\n    action: invoke\n    resource: {type: Model, id: \"{m}\"}\n    context_headers: [x-a, x-b]\n",
            std::path::Path::new("routes.yaml"),
        )
        .expect("the test route parses");
        table.routes()[0].clone()
    }

    /// Contexts that differ in one input each, including values that carry
    /// the key's own separators and an empty header against a missing one.
    fn variants(route: &Route) -> Vec<(String, Value)> {
        let base_req = {
            let mut r = AccessRequest::for_test("POST", "/v1/m");
            r.time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
            r
        };
        let base_id = Identity::new(
            entity_uid("User", "a").unwrap(),
            Vec::new(),
            AuthMethod::Jwt,
        );
        type Edit = fn(&mut AccessRequest, &mut Identity);
        let edits: Vec<Edit> = vec![
            |_, _| {},
            |r, _| r.method = "GET".into(),
            |r, _| r.host = "4:x|y".into(),
            |r, _| r.time += std::time::Duration::from_secs(1),
            |r, _| r.source_ip = Some([10, 0, 0, 1].into()),
            |r, _| r.source_ip = Some([10, 0, 0, 2].into()),
            |r, _| {
                r.headers.insert("x-a".into(), String::new());
            },
            |r, _| {
                r.headers.insert("x-a".into(), "-".into());
            },
            |r, _| {
                r.headers.insert("x-b".into(), "v".into());
            },
            |r, _| {
                r.headers
                    .insert("x-other".into(), "not in the context".into());
            },
            |_, i| i.token.mfa = true,
            |_, i| i.method = AuthMethod::ApiKey,
            |_, i| {
                i.token.scopes.insert("read".into());
            },
            |_, i| {
                i.token.scopes.insert("read write".into());
            },
            |_, i| {
                i.token.claims.insert("tier".into(), "1:a".into());
            },
            |_, i| {
                i.token.claims.insert("tier:1".into(), "a".into());
            },
        ];
        let mut out = Vec::new();
        for edit in edits {
            let (mut req, mut id) = (base_req.clone(), base_id.clone());
            edit(&mut req, &mut id);
            for (risk, region) in [
                (None, None),
                (Some(0), None),
                (Some(7), None),
                (None, Some("eu")),
            ] {
                let mut c = RequestContext::new(&req, "/v1/m", route, &id);
                if let Some(r) = risk {
                    c = c.with_risk(r);
                }
                if let Some(r) = region {
                    c = c.with_region(r);
                }
                let mut key = String::new();
                c.write_key(&mut key);
                out.push((key, c.to_json()));
            }
        }
        out
    }

    #[test]
    fn the_decision_key_differs_exactly_when_the_json_context_differs() {
        let route = route();
        let all = variants(&route);
        for (i, (ka, ja)) in all.iter().enumerate() {
            for (kb, jb) in &all[i + 1..] {
                assert_eq!(ka == kb, ja == jb, "keys {ka:?} / {kb:?} for {ja} / {jb}");
            }
        }
        // The edit outside the route's context headers changes neither.
        let distinct: std::collections::HashSet<&String> = all.iter().map(|(k, _)| k).collect();
        assert_eq!(distinct.len(), all.len() - 4);
    }

    #[test]
    fn a_request_context_and_a_json_record_never_share_a_key() {
        let route = route();
        let (key, json) = variants(&route).remove(0);
        let mut from_json = String::new();
        ContextInput::Json(json).write_key(&mut from_json);
        assert_ne!(format!("R{key}"), from_json);
        assert!(from_json.starts_with('J'));
    }
}
