//! The request under decision, in our own terms: what every adapter
//! (ext_authz, RLS, the offline `check` command) translates its input into.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::SystemTime;

/// Whether `text` is an HTTP token (RFC 9110 section 5.6.2: one or more
/// of `!#$%&'*+-.^_`|~`, digits and letters), as a method (section 9.1)
/// and a field name (section 5.1) are.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Request headers: lower-case names to values (Envoy comma-merges
/// repeats). Hashed with foldhash, seeded per map, as the quota
/// configuration's maps are (`quota/config`): a decision looks headers up
/// a dozen times (authentication, tracing, residency, body, quotas, the
/// response), and SipHash, the standard library's default, cost about
/// 200 instructions a lookup. A client chooses header names, but a
/// gateway passes a bounded number of them (Envoy: 100 by default), and
/// the seed is not theirs to know.
pub type Headers = HashMap<String, String, foldhash::fast::RandomState>;

/// One request a gateway asks about.
#[derive(Debug, Clone)]
pub struct AccessRequest {
    /// HTTP method as the client sent it: case-sensitive (RFC 9110
    /// section 9.1), so `get` matches no route listing `GET`.
    pub method: String,
    /// The raw `:path`, possibly with a query string.
    pub path: String,
    /// The `:authority` / Host.
    pub host: String,
    /// Request headers, names lower-cased (Envoy comma-merges repeats).
    pub headers: Headers,
    /// The downstream client's address, as the gateway saw it.
    pub source_ip: Option<IpAddr>,
    /// The downstream mTLS peer identity (URI SAN / SPIFFE id), if any.
    pub source_principal: Option<String>,
    /// The gateway's request id (`x-request-id`), for correlation.
    pub request_id: String,
    /// When the gateway received the request.
    pub time: SystemTime,
    /// The request body, when the gateway sends it (quota costs read it).
    /// Never logged.
    pub body: Option<Vec<u8>>,
    /// The region the gateway serves (from Portcullis's configuration or a
    /// header only the gateway sets), for data residency. Never taken from
    /// anything the client controls.
    pub gateway_region: Option<String>,
    /// True when no body came and the front door cannot tell an empty body
    /// from one the gateway did not forward (forward-auth, where nginx never
    /// forwards bodies and Caddy or Traefik may not): a route with a body
    /// rule is then refused (`body_not_forwarded`), never allowed
    /// unvalidated.
    pub body_not_forwarded: bool,
}

impl AccessRequest {
    /// A header value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// A request with only a method and a path, made now: no host,
    /// headers, addresses, id or body. What calls that are not HTTP
    /// requests (RLS, the admin API) stand for, before what they do carry
    /// is set.
    pub fn bare(method: String, path: String) -> Self {
        AccessRequest {
            method,
            path,
            host: String::new(),
            headers: Headers::default(),
            source_ip: None,
            source_principal: None,
            request_id: String::new(),
            time: SystemTime::now(),
            body: None,
            gateway_region: None,
            body_not_forwarded: false,
        }
    }

    /// The request an RLS call stands for in logs and the audit trail: RLS
    /// carries only descriptors, no HTTP request. Method `POST`, path
    /// `/ratelimit/<domain>`, no host, headers or body; built for every RLS
    /// call, so without a formatter.
    pub fn for_ratelimit(domain: &str) -> Self {
        const PREFIX: &str = "/ratelimit/";
        let mut path = String::with_capacity(PREFIX.len() + domain.len());
        path.push_str(PREFIX);
        path.push_str(domain);
        Self::bare("POST".to_string(), path)
    }

    /// This request with a JSON body (and `Content-Type: application/json`).
    pub fn with_json(mut self, body: &serde_json::Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self.headers
            .insert("content-type".into(), "application/json".into());
        self
    }

    /// A minimal request for tests.
    pub fn for_test(method: &str, path: &str) -> Self {
        AccessRequest {
            host: "api.test".to_string(),
            ..Self::bare(method.to_string(), path.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rls_call_stands_for_a_post_to_its_domain_without_host_headers_or_body() {
        let r = AccessRequest::for_ratelimit("ml_api");
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/ratelimit/ml_api")
        );
        assert!(r.host.is_empty() && r.headers.is_empty() && r.body.is_none());
        assert!(r.request_id.is_empty() && r.source_ip.is_none());
    }
}
