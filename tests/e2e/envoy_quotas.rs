//! Quotas end to end through a real Envoy with `deploy/envoy.yaml`:
//! Envoy's ratelimit filter -> Portcullis RLS -> 429 after the limit, and the
//! same kind of limit enforced through ext_authz alone (the config without
//! the ratelimit filter). `portcullis serve` runs with no Redis configured,
//! so quotas are enforced in process.

use serde_json::Value;

use crate::support::{Envoy, HttpRequest, HttpResponse, PolicyDir, Portcullis, Upstream};

/// `deploy/envoy.yaml` without its ratelimit filter: a gateway that speaks
/// only ext_authz.
fn without_ratelimit_filter(config: String) -> String {
    let start = config
        .find("                  - name: envoy.filters.http.ratelimit")
        .expect("deploy/envoy.yaml has the ratelimit filter");
    let end = start
        + config[start + 1..]
            .find("                  - name: ")
            .expect("a filter follows the ratelimit filter")
        + 1;
    format!("{}{}", &config[..start], &config[end..])
}

/// Every value of header `name` on the response, in order.
fn values<'a>(r: &'a HttpResponse, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn problem(r: &HttpResponse) -> Value {
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/problem+json"),
        "{:?}",
        r.headers
    );
    r.json()
}

#[test]
fn envoy_ratelimit_filter_gets_429_with_headers_from_rls() {
    // The bundled policies with the tight test quotas over them.
    let policies = PolicyDir::bundled().with_test_quotas();
    let upstream = Upstream::start();
    let pdp = Portcullis::start(&["--policies", policies.arg()]);
    let envoy = Envoy::start(pdp.addr(), upstream.addr());

    // The fixture allows 2 requests an hour per client address (RLS) and
    // anonymous callers 3 an hour (in Check). An allowed response carries
    // one set of rate-limit headers: Check's, about the caller.
    for remaining in ["2", "1"] {
        let r = HttpRequest::get("/v1/status").send(envoy.addr());
        assert_eq!(
            r.status,
            200,
            "{:?} {}\n{}",
            r.headers,
            r.text(),
            pdp.stderr()
        );
        assert_eq!(values(&r, "ratelimit-limit"), ["3"], "{:?}", r.headers);
        assert_eq!(values(&r, "ratelimit-remaining"), [remaining]);
        assert_eq!(values(&r, "x-ratelimit-limit"), [] as [&str; 0]);
    }
    let r = HttpRequest::get("/v1/status").send(envoy.addr());
    assert_eq!(r.status, 429, "{:?} {}", r.headers, r.text());
    assert_eq!(
        upstream.hits(),
        2,
        "the refused request must not reach the upstream"
    );
    // Headers describe the limit that refused: 2 per hour, none left.
    assert_eq!(r.header("ratelimit-limit"), Some("2"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("ratelimit-policy"), Some("2;w=3600"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=1800).contains(&retry), "retry-after {retry}");
    // Only the refusing layer's headers: Check never ran.
    assert_eq!(values(&r, "ratelimit-limit"), ["2"], "{:?}", r.headers);
    assert_eq!(values(&r, "x-ratelimit-limit"), [] as [&str; 0]);
    let p = problem(&r);
    assert_eq!(p["status"], 429);
    assert_eq!(p["type"], "urn:portcullis:problem:quota_exceeded");
}

#[test]
fn ext_authz_alone_enforces_quotas_with_headers() {
    // The bundled policies with the tight test quotas over them.
    let policies = PolicyDir::bundled().with_test_quotas();
    let upstream = Upstream::start();
    let pdp = Portcullis::start(&["--policies", policies.arg()]);
    let envoy = Envoy::start_edited(pdp.addr(), upstream.addr(), without_ratelimit_filter);

    // The fixture allows anonymous callers 3 requests an hour (in Check);
    // allowed responses tell the client what is left.
    for remaining in ["2", "1", "0"] {
        let r = HttpRequest::get("/v1/status").send(envoy.addr());
        assert_eq!(
            r.status,
            200,
            "{:?} {}\n{}",
            r.headers,
            r.text(),
            pdp.stderr()
        );
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some(remaining),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
    }
    let r = HttpRequest::get("/v1/status").send(envoy.addr());
    assert_eq!(r.status, 429, "{:?} {}", r.headers, r.text());
    assert_eq!(upstream.hits(), 3);
    assert_eq!(r.header("ratelimit-limit"), Some("3"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    let p = problem(&r);
    assert_eq!(p["type"], "urn:portcullis:problem:quota_exceeded");
    assert_eq!(p["quota"]["limit"], 3);
}
