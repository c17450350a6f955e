//! Decisions as forward-auth answers. Every gateway reads a 2xx as allow
//! and anything else as deny, so the answer is the decision's own status:
//!
//! - **allow**: `200`, no body, the headers the upstream gets
//!   (`x-portcullis-decision-id`, `-policy-version`, `-principal`, `-pii`:
//!   nginx reads them with `auth_request_set`, Traefik and Caddy copy the
//!   ones listed, Envoy those `allowed_upstream_headers` match), the
//!   client's (`ratelimit-*`, `deprecation`, `sunset`), and
//!   `x-envoy-auth-headers-to-remove` naming the request headers the
//!   upstream must not see (spoofed `x-portcullis-*`, the route's
//!   `headers_to_remove`), which Envoy's HTTP mode applies;
//! - **deny**: the status, headers and problem+json body of `Check`'s
//!   denied response, from the same pieces (`adapters::access`). Through
//!   nginx's convention the problem also rides in `x-portcullis-problem`:
//!   `auth_request` passes only 401 and 403 on and drops the body, and the
//!   shipped nginx snippet rebuilds the answer from that header.

use hyper::body::Bytes;
use hyper::http::{HeaderName, HeaderValue, Response, StatusCode};

use super::convention::{BadAsk, Convention};
use crate::adapters::access;
use crate::decision::outcome::PROBLEM_JSON;
use crate::decision::Decision;
use crate::request::AccessRequest;

/// The response body of every answer.
pub type Body = http_body_util::Full<Bytes>;

/// The header Envoy's HTTP ext_authz reads for request headers to remove.
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
/// The problem document of a denial, for nginx (see the module doc).
pub const PROBLEM_HEADER: &str = "x-portcullis-problem";
/// The longest problem document sent in [`PROBLEM_HEADER`]; a longer one
/// is cut to its fixed fields (nginx's `proxy_buffer_size` must hold it).
pub const MAX_PROBLEM_HEADER_BYTES: usize = 4096;

/// The answer to a decided request.
pub fn decision(d: &Decision, req: &AccessRequest, convention: Convention) -> Response<Body> {
    if d.is_allowed() {
        let upstream = access::upstream(d, req);
        let mut headers = upstream.set;
        headers.extend(d.client_headers());
        let mut remove = upstream.spoofed;
        for h in upstream.minimised {
            if !remove.contains(&h) {
                remove.push(h);
            }
        }
        if !remove.is_empty() {
            headers.push((HEADERS_TO_REMOVE.to_string(), remove.join(",")));
        }
        return response(200, headers, Bytes::new());
    }
    let denial = access::denial(d);
    let mut headers = denial.headers;
    if convention == Convention::Original {
        headers.push((PROBLEM_HEADER.to_string(), problem_header(d, &denial.body)));
    }
    response(denial.status, headers, Bytes::from(denial.body))
}

/// The answer to an auth request that cannot be read: a problem document
/// naming the gateway setting to fix. Not a decision: no id, no record.
pub fn bad_ask(bad: &BadAsk) -> Response<Body> {
    let body = serde_json::json!({
        "type": "urn:portcullis:problem:bad_forward_auth_request",
        "title": "Bad forward-auth request",
        "status": bad.status,
        "detail": bad.detail,
    })
    .to_string();
    response(
        bad.status,
        vec![
            ("content-type".into(), PROBLEM_JSON.into()),
            ("cache-control".into(), "no-store".into()),
        ],
        Bytes::from(body),
    )
}

/// An answer of the listener itself (over its request budget, out of
/// time, a body too large): `status` with a problem document of `code`.
pub fn listener_problem(status: u16, code: &str, title: &str, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": format!("urn:portcullis:problem:{code}"),
        "title": title,
        "status": status,
        "detail": detail,
    })
    .to_string();
    let mut headers = vec![
        ("content-type".to_string(), PROBLEM_JSON.to_string()),
        ("cache-control".to_string(), "no-store".to_string()),
    ];
    if status == 503 {
        headers.push(("retry-after".into(), "1".into()));
    }
    response(status, headers, Bytes::from(body))
}

fn response(status: u16, headers: Vec<(String, String)>, body: Bytes) -> Response<Body> {
    let mut r = Response::new(http_body_util::Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    let map = r.headers_mut();
    for (name, value) in headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            // Every value is built by Portcullis; one that cannot be a
            // header is left out rather than fail the answer.
            _ => {
                tracing::warn!(header = %name, "a header value that HTTP cannot carry was left out")
            }
        }
    }
    r
}

/// The problem document as a header value: ASCII only (characters beyond
/// it as JSON `\u` escapes, which only occur inside strings), and at most
/// [`MAX_PROBLEM_HEADER_BYTES`] (else without the per-field `errors`).
fn problem_header(d: &Decision, body: &str) -> String {
    let text = ascii_json(body);
    if text.len() <= MAX_PROBLEM_HEADER_BYTES {
        return text;
    }
    let mut value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if let Some(o) = value.as_object_mut() {
        o.remove("errors");
        o.insert(
            "detail".into(),
            serde_json::Value::String(d.detail.chars().take(512).collect()),
        );
    }
    ascii_json(&value.to_string())
}

fn ascii_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::DenyReason;

    fn header<'r>(r: &'r Response<Body>, name: &str) -> Option<&'r str> {
        r.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn an_allow_is_200_with_upstream_and_client_headers_and_what_to_remove() {
        let mut req = AccessRequest::for_test("POST", "/x");
        req.headers
            .insert("x-portcullis-role".into(), "admin".into());
        let mut d = Decision::new("v7").allow();
        d.principal = Some("User::\"alice\"".into());
        d.strip_headers = vec!["cookie".into()];
        d.response_headers = vec![("deprecation".into(), "@1".into())];
        let r = decision(&d, &req, Convention::RequestLine);
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "x-portcullis-principal"),
            Some("User::\"alice\"")
        );
        assert_eq!(header(&r, "x-portcullis-policy-version"), Some("v7"));
        assert_eq!(header(&r, "deprecation"), Some("@1"));
        assert_eq!(
            header(&r, HEADERS_TO_REMOVE),
            Some("x-portcullis-role,cookie")
        );
    }

    #[test]
    fn a_denial_is_checks_denial_and_through_nginx_also_a_header() {
        let req = AccessRequest::for_test("GET", "/x");
        let mut d = Decision::new("v1").deny(DenyReason::QuotaExceeded, "spent: caf\u{e9}");
        d.retry_after_seconds = Some(7);
        let r = decision(&d, &req, Convention::Forwarded);
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "content-type"), Some(PROBLEM_JSON));
        assert_eq!(header(&r, "retry-after"), Some("7"));
        assert!(header(&r, PROBLEM_HEADER).is_none());
        let nginx = decision(&d, &req, Convention::Original);
        let problem = header(&nginx, PROBLEM_HEADER).unwrap();
        assert!(
            problem.is_ascii() && problem.contains("caf\\u00e9"),
            "{problem}"
        );
        let v: serde_json::Value = serde_json::from_str(problem).unwrap();
        assert_eq!(v["status"], 429);
        assert_eq!(v["detail"], "spent: caf\u{e9}");
    }

    #[test]
    fn a_long_problem_header_keeps_its_fixed_fields() {
        let req = AccessRequest::for_test("GET", "/x");
        let mut d = Decision::new("v1").deny(DenyReason::InvalidBody, "bad");
        d.problems = (0..20)
            .map(|i| crate::decision::Problem::new(format!("/f{i}"), "x".repeat(400)))
            .collect();
        let r = decision(&d, &req, Convention::Original);
        let problem = header(&r, PROBLEM_HEADER).unwrap();
        assert!(problem.len() <= MAX_PROBLEM_HEADER_BYTES);
        let v: serde_json::Value = serde_json::from_str(problem).unwrap();
        assert_eq!(v["status"], 422);
        assert!(v.get("errors").is_none());
    }

    #[test]
    fn unreadable_asks_are_problems_without_a_decision() {
        let r = bad_ask(&BadAsk {
            status: 400,
            detail: "x".into(),
        });
        assert_eq!(r.status(), 400);
        assert_eq!(header(&r, "content-type"), Some(PROBLEM_JSON));
        assert!(header(&r, "x-portcullis-decision-id").is_none());
    }
}
