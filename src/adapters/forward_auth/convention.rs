//! What a forward-auth request asks about: the gateway's request to this
//! listener carries the client's original request in one of three
//! conventions, told apart by the path the gateway calls, never guessed
//! from headers (a client could send any header):
//!
//! | path | convention | gateways |
//! | --- | --- | --- |
//! | `/forward-auth` | `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host`, `X-Forwarded-Proto` | Traefik ForwardAuth, Caddy `forward_auth` |
//! | `/auth-request` | `X-Original-Method`, `X-Original-URI` (`X-Original-Host`, else `Host`) | nginx `auth_request` |
//! | `<path_prefix>/...` | the request line itself, after the prefix | Envoy ext_authz `http_service`, Gateway API external auth (`protocol: HTTP`) |
//!
//! Each path reads its own headers only: through nginx, a client's
//! `X-Forwarded-Uri` is an ordinary header, and through Caddy a client's
//! `X-Original-URI` is. Translation only; nothing here decides.

use std::net::IpAddr;
use std::time::SystemTime;

use hyper::body::Bytes;
use hyper::http::request::Parts;
use hyper::http::HeaderMap;

use super::proxies::client_address;
use super::{ForwardAuthConfig, FORWARDED_PATH, ORIGINAL_PATH};
use crate::request::AccessRequest;

/// How the gateway described the original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// `X-Forwarded-Method`/`-Uri`/`-Host`/`-Proto` at [`FORWARDED_PATH`].
    Forwarded,
    /// `X-Original-Method`/`-URI` at [`ORIGINAL_PATH`].
    Original,
    /// The request line after `path_prefix`.
    RequestLine,
}

impl Convention {
    /// The convention's name in logs and problems.
    pub const fn as_str(self) -> &'static str {
        match self {
            Convention::Forwarded => "x-forwarded",
            Convention::Original => "x-original",
            Convention::RequestLine => "request-line",
        }
    }
}

/// An auth request that says nothing decidable: answered with a problem
/// document (`bad_forward_auth_request`), not decided, not recorded, as an
/// unreadable `CheckRequest` is answered with a gRPC error. Every gateway
/// treats the answer as a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAsk {
    /// 404 for a path that is no convention's, 400 otherwise.
    pub status: u16,
    /// What is wrong and how to fix the gateway's configuration.
    pub detail: String,
}

impl BadAsk {
    fn new(detail: impl Into<String>) -> Self {
        BadAsk {
            status: 400,
            detail: detail.into(),
        }
    }
}

/// Which convention `path` (without its query) is, and for the request
/// line the original path (with `query`) after the prefix.
pub fn convention(
    path: &str,
    query: Option<&str>,
    prefix: &str,
) -> Result<(Convention, Option<String>), BadAsk> {
    if path == FORWARDED_PATH {
        return Ok((Convention::Forwarded, None));
    }
    if path == ORIGINAL_PATH {
        return Ok((Convention::Original, None));
    }
    if let Some(rest) = path.strip_prefix(prefix) {
        if rest.is_empty() || rest.starts_with('/') {
            let mut original = if rest.is_empty() {
                "/".to_string()
            } else {
                rest.to_string()
            };
            if let Some(q) = query {
                original.push('?');
                original.push_str(q);
            }
            return Ok((Convention::RequestLine, Some(original)));
        }
    }
    Err(BadAsk {
        status: 404,
        detail: format!(
            "not a forward-auth endpoint: call {FORWARDED_PATH} (X-Forwarded-* headers: Traefik, \
             Caddy), {ORIGINAL_PATH} (X-Original-* headers: nginx auth_request) or \
             {prefix}/<original path> (Envoy ext_authz http_service, Gateway API)"
        ),
    })
}

/// The headers of the auth request, names lower case, repeats joined with
/// `,` (as Envoy joins them for `Check`); values that are not UTF-8 are
/// decoded lossily (a credential that is not ASCII is refused by the
/// authenticator as malformed).
fn headers_of(map: &HeaderMap) -> crate::request::Headers {
    let mut out =
        crate::request::Headers::with_capacity_and_hasher(map.keys_len(), Default::default());
    for (name, value) in map {
        let value = String::from_utf8_lossy(value.as_bytes());
        out.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    out
}

/// The one value of header `name`: a convention header sent twice is
/// refused (which one would the gateway have meant?), an empty one counts
/// as absent.
fn single<'h>(map: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, BadAsk> {
    let mut values = map.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadAsk::new(format!(
            "{name} appears more than once: the gateway must set it exactly once"
        )));
    }
    let text = first
        .to_str()
        .map_err(|_| BadAsk::new(format!("{name} is not visible ASCII")))?
        .trim();
    Ok((!text.is_empty()).then_some(text))
}

fn required<'h>(map: &'h HeaderMap, name: &str, convention: Convention) -> Result<&'h str, BadAsk> {
    single(map, name)?.ok_or_else(|| {
        BadAsk::new(format!(
            "the {} convention needs {name}: the gateway must send the original request's {}",
            convention.as_str(),
            match name {
                n if n.ends_with("method") => "method",
                _ => "path and query",
            }
        ))
    })
}

/// An HTTP method token (RFC 9110 section 9.1), as sent: methods are
/// case-sensitive, and an upstream may treat `get` otherwise than `GET`.
fn method(text: &str, header: &str) -> Result<String, BadAsk> {
    if text.len() > 32 || !crate::request::is_token(text) {
        return Err(BadAsk::new(format!("{header} is not an HTTP method")));
    }
    Ok(text.to_string())
}

/// An origin-form request target (`/path?query`), as the routes match it.
fn origin_form(text: &str, header: &str) -> Result<String, BadAsk> {
    if !text.starts_with('/') {
        return Err(BadAsk::new(format!(
            "{header} must be the original path and query, starting with '/' (nginx: \
             $request_uri; Traefik and Caddy send it so)"
        )));
    }
    Ok(text.to_string())
}

/// Reads the original request from an auth request: its convention (by
/// path), method, path, host, headers, the client's address (through the
/// trusted proxies) and the body, when the gateway forwarded one.
pub fn read(
    parts: &Parts,
    body: Bytes,
    peer: IpAddr,
    config: &ForwardAuthConfig,
) -> Result<(Convention, AccessRequest), BadAsk> {
    let (convention, request_line_path) =
        convention(parts.uri.path(), parts.uri.query(), &config.path_prefix)?;
    let h = &parts.headers;
    // The authority of the auth request: `Host`, or HTTP/2's `:authority`.
    let authority = || {
        single(h, "host").map(|host| {
            host.map(str::to_string)
                .or_else(|| parts.uri.authority().map(|a| a.to_string()))
                .unwrap_or_default()
        })
    };
    let (method_, path, host) = match convention {
        Convention::Forwarded => {
            let m = method(
                required(h, "x-forwarded-method", convention)?,
                "X-Forwarded-Method",
            )?;
            let path = origin_form(
                required(h, "x-forwarded-uri", convention)?,
                "X-Forwarded-Uri",
            )?;
            let host = match single(h, "x-forwarded-host")? {
                Some(host) => host.to_string(),
                None => authority()?,
            };
            if let Some(proto) = single(h, "x-forwarded-proto")? {
                if !matches!(
                    proto.to_ascii_lowercase().as_str(),
                    "http" | "https" | "ws" | "wss"
                ) {
                    return Err(BadAsk::new(
                        "X-Forwarded-Proto must be http, https, ws or wss",
                    ));
                }
            }
            (m, path, host)
        }
        Convention::Original => {
            let m = method(
                required(h, "x-original-method", convention)?,
                "X-Original-Method",
            )?;
            let path = origin_form(required(h, "x-original-uri", convention)?, "X-Original-URI")?;
            let host = match single(h, "x-original-host")? {
                Some(host) => host.to_string(),
                None => authority()?,
            };
            (m, path, host)
        }
        Convention::RequestLine => (
            parts.method.as_str().to_string(),
            request_line_path.unwrap_or_else(|| "/".into()),
            authority()?,
        ),
    };
    let headers = headers_of(h);
    let source_ip = client_address(
        peer,
        headers.get("x-forwarded-for").map(String::as_str),
        headers.get("x-real-ip").map(String::as_str),
        &config.trusted_proxies,
    );
    // nginx's auth_request never carries the body; the other conventions
    // carry it when the gateway is configured to, and only the
    // configuration can say whether an empty one is the client's.
    let forwards_bodies = match convention {
        Convention::Original => false,
        Convention::Forwarded => config.bodies_forwarded.x_forwarded,
        Convention::RequestLine => config.bodies_forwarded.request_line,
    };
    let (body, body_not_forwarded) = if body.is_empty() {
        (None, !forwards_bodies)
    } else {
        (Some(body.to_vec()), false)
    };
    let request_id = headers.get("x-request-id").cloned().unwrap_or_default();
    Ok((
        convention,
        AccessRequest {
            method: method_,
            path,
            host,
            headers,
            source_ip: Some(source_ip),
            source_principal: None,
            request_id,
            time: SystemTime::now(),
            body,
            gateway_region: None,
            body_not_forwarded,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::http::Request;

    fn config() -> ForwardAuthConfig {
        ForwardAuthConfig {
            trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
            ..ForwardAuthConfig::default()
        }
    }

    fn ask(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(Convention, AccessRequest), BadAsk> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        read(
            &parts,
            Bytes::copy_from_slice(body),
            "127.0.0.1".parse().unwrap(),
            &config(),
        )
    }

    #[test]
    fn traefik_and_caddy_describe_the_request_in_x_forwarded_headers() {
        let (c, r) = ask(
            "GET",
            "/forward-auth?ignored=1",
            &[
                ("host", "portcullis:9191"),
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/v1/models/m/versions/v1:predict?x=1"),
                ("x-forwarded-host", "api.example"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-request-id", "r-1"),
                ("authorization", "Bearer t"),
            ],
            b"",
        )
        .unwrap();
        assert_eq!(c, Convention::Forwarded);
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/models/m/versions/v1:predict?x=1");
        assert_eq!(r.host, "api.example");
        assert_eq!(r.source_ip, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(r.request_id, "r-1");
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        assert_eq!(r.body, None);
        assert!(
            r.body_not_forwarded,
            "Caddy and Traefik forward no body by default"
        );
    }

    #[test]
    fn nginx_describes_it_in_x_original_headers_and_never_forwards_a_body() {
        let (c, r) = ask(
            "GET",
            "/auth-request",
            &[
                ("host", "api.example"),
                ("x-original-method", "DELETE"),
                ("x-original-uri", "/v1/status"),
                // A client's header, passed on by nginx: ordinary here.
                ("x-forwarded-uri", "/v1/other"),
            ],
            b"",
        )
        .unwrap();
        assert_eq!(c, Convention::Original);
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("DELETE", "/v1/status")
        );
        assert_eq!(r.host, "api.example");
        assert!(r.body_not_forwarded);
    }

    #[test]
    fn envoy_and_gateway_api_send_the_request_line_after_the_prefix() {
        let (c, r) = ask(
            "POST",
            "/ext-authz/v1/feedback?a=b",
            &[
                ("host", "api.example"),
                ("content-type", "application/json"),
            ],
            br#"{"rating": 5}"#,
        )
        .unwrap();
        assert_eq!(c, Convention::RequestLine);
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/feedback?a=b")
        );
        assert_eq!(r.body.as_deref(), Some(&br#"{"rating": 5}"#[..]));
        assert!(!r.body_not_forwarded);
        let (_, root) = ask("GET", "/ext-authz", &[], b"").unwrap();
        assert_eq!(root.path, "/");
        // Not the prefix: a different word that starts like it.
        assert_eq!(
            ask("GET", "/ext-authzx/v1", &[], b"").unwrap_err().status,
            404
        );
    }

    #[test]
    fn the_method_is_kept_as_sent_not_upper_cased() {
        let conventions = [
            (
                "GET",
                "/forward-auth",
                Some("x-forwarded-method"),
                "x-forwarded-uri",
            ),
            (
                "GET",
                "/auth-request",
                Some("x-original-method"),
                "x-original-uri",
            ),
            ("get", "/ext-authz/v1/status", None, "x-unused"),
        ];
        for (line_method, target, header, uri_header) in conventions {
            let mut headers = vec![(uri_header, "/v1/status")];
            if let Some(header) = header {
                headers.push((header, "get"));
            }
            let (_, r) = ask(line_method, target, &headers, b"").unwrap();
            assert_eq!(r.method, "get", "{target}");
        }
    }

    #[test]
    fn a_gateway_that_forwards_bodies_makes_an_empty_one_the_clients() {
        let mut cfg = config();
        cfg.bodies_forwarded.request_line = true;
        cfg.bodies_forwarded.x_forwarded = true;
        let (parts, ()) = Request::builder()
            .method("POST")
            .uri("/ext-authz/v1/feedback")
            .body(())
            .unwrap()
            .into_parts();
        let (_, r) = read(&parts, Bytes::new(), "127.0.0.1".parse().unwrap(), &cfg).unwrap();
        assert!(!r.body_not_forwarded && r.body.is_none());
        // nginx never does, whatever the setting.
        let (parts, ()) = Request::builder()
            .uri("/auth-request")
            .header("x-original-method", "POST")
            .header("x-original-uri", "/v1/feedback")
            .body(())
            .unwrap()
            .into_parts();
        let (_, r) = read(&parts, Bytes::new(), "127.0.0.1".parse().unwrap(), &cfg).unwrap();
        assert!(r.body_not_forwarded);
    }

    #[test]
    fn missing_repeated_or_malformed_convention_headers_are_refused_with_the_fix() {
        let e = ask(
            "GET",
            "/forward-auth",
            &[("x-forwarded-method", "GET")],
            b"",
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.detail.contains("x-forwarded-uri"), "{}", e.detail);
        let e = ask(
            "GET",
            "/auth-request",
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/a"),
                ("x-original-uri", "/b"),
            ],
            b"",
        )
        .unwrap_err();
        assert!(e.detail.contains("more than once"), "{}", e.detail);
        let e = ask(
            "GET",
            "/auth-request",
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "http://h/a"),
            ],
            b"",
        )
        .unwrap_err();
        assert!(e.detail.contains("starting with '/'"), "{}", e.detail);
        let e = ask(
            "GET",
            "/forward-auth",
            &[("x-forwarded-method", "G E T"), ("x-forwarded-uri", "/a")],
            b"",
        )
        .unwrap_err();
        assert!(e.detail.contains("not an HTTP method"), "{}", e.detail);
        assert_eq!(ask("GET", "/", &[], b"").unwrap_err().status, 404);
    }

    #[test]
    fn repeated_headers_join_as_envoy_joins_them() {
        let (_, r) = ask(
            "GET",
            "/ext-authz/v1/status",
            &[("x-a", "1"), ("x-a", "2")],
            b"",
        )
        .unwrap();
        assert_eq!(r.header("x-a"), Some("1,2"));
    }
}
