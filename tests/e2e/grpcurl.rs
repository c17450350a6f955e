//! The decision listener as an operator sees it with grpcurl 1.8.6 and
//! server reflection only (no proto files), plus the SIGTERM stop path.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{grpcurl, Portcullis};

fn call(pdp: &Portcullis, method: &str, request: &Value) -> Value {
    let addr = pdp.addr().to_string();
    let out = grpcurl(pdp, &["-d", &request.to_string(), &addr, method]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("grpcurl output is not JSON ({e}): {out}"))
}

/// A CheckRequest as Envoy sends it for a request without a body.
fn check_request(method: &str, path: &str) -> Value {
    json!({
        "attributes": {
            "source": { "address": { "socketAddress": { "address": "127.0.0.1", "portValue": 40000 } } },
            "destination": { "address": { "socketAddress": { "address": "127.0.0.1", "portValue": 10000 } } },
            "request": {
                "http": {
                    "id": "1",
                    "method": method,
                    "path": path,
                    "host": "api.test",
                    "scheme": "http",
                    "protocol": "HTTP/1.1",
                    "headers": {
                        ":authority": "api.test",
                        ":method": method,
                        ":path": path,
                        ":scheme": "http",
                        "x-request-id": "grpcurl-test-1"
                    }
                }
            }
        }
    })
}

#[test]
fn reflection_lists_the_services_of_each_listener() {
    let mut pdp = Portcullis::start(&["--listen", "127.0.0.1:0"]);
    let listed = |text: &str, service: &str| text.lines().any(|l| l.trim() == service);
    let decision = pdp.addr().to_string();
    let admin = pdp.listener("admin").to_string();
    let on_decision = grpcurl(&pdp, &[&decision, "list"]);
    let on_admin = grpcurl(&pdp, &[&admin, "list"]);
    for service in [
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed(&on_decision, service),
            "decision listener {decision} should list {service}; it listed:\n{on_decision}"
        );
    }
    for service in ["portcullis.admin.v1.PolicyService", "grpc.health.v1.Health"] {
        assert!(
            listed(&on_admin, service),
            "admin listener {admin} should list {service}; it listed:\n{on_admin}"
        );
    }
    // The admin API is not exposed on the listener the gateway reaches.
    assert!(
        !listed(&on_decision, "portcullis.admin.v1.PolicyService"),
        "{on_decision}"
    );
    // And it answers: the snapshot version, through reflection only.
    let version = grpcurl(
        &pdp,
        &[&admin, "portcullis.admin.v1.PolicyService/GetVersion"],
    );
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert!(
        version["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{version}"
    );
    assert_eq!(version["policyCount"], 14, "{version}");
}

#[test]
fn health_check_is_serving() {
    let pdp = Portcullis::start(&["--listen", "127.0.0.1:0"]);
    let reply = call(&pdp, "grpc.health.v1.Health/Check", &json!({}));
    assert_eq!(reply["status"], "SERVING", "{reply}");
}

#[test]
fn check_allows_anonymous_status() {
    let pdp = Portcullis::start(&["--listen", "127.0.0.1:0"]);
    let reply = call(
        &pdp,
        "envoy.service.auth.v3.Authorization/Check",
        &check_request("GET", "/v1/status"),
    );
    assert!(
        reply.get("okResponse").is_some(),
        "expected an okResponse: {reply}"
    );
    assert!(
        reply.get("deniedResponse").is_none(),
        "unexpected deniedResponse: {reply}"
    );
    // google.rpc.Code OK is 0, which protobuf JSON leaves out.
    let code = reply["status"]["code"].as_i64().unwrap_or(0);
    assert_eq!(code, 0, "gRPC-level status must be OK: {reply}");
}

#[test]
fn check_denies_unknown_route_with_404_problem() {
    let pdp = Portcullis::start(&["--listen", "127.0.0.1:0"]);
    let reply = call(
        &pdp,
        "envoy.service.auth.v3.Authorization/Check",
        &check_request("GET", "/nope"),
    );
    let denied = reply
        .get("deniedResponse")
        .unwrap_or_else(|| panic!("expected a deniedResponse: {reply}"));
    assert_eq!(denied["status"]["code"], "NotFound", "{reply}");
    assert_ne!(
        reply["status"]["code"].as_i64().unwrap_or(0),
        0,
        "a denial carries a non-OK google.rpc.Status: {reply}"
    );

    let content_type = denied["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| {
            h["header"]["key"]
                .as_str()
                .is_some_and(|k| k.eq_ignore_ascii_case("content-type"))
        })
        .and_then(|h| h["header"]["value"].as_str())
        .unwrap_or_else(|| panic!("deniedResponse has no content-type header: {reply}"));
    assert!(
        content_type.starts_with("application/problem+json"),
        "{content_type}"
    );
    let body = denied["body"]
        .as_str()
        .unwrap_or_else(|| panic!("deniedResponse has no body: {reply}"));
    let problem: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("deniedResponse body is not JSON ({e}): {body}"));
    assert_eq!(problem["status"], 404, "{problem}");
    for field in ["type", "title", "detail", "decision_id"] {
        assert!(
            problem[field].as_str().is_some_and(|s| !s.is_empty()),
            "problem needs `{field}`: {problem}"
        );
    }
}

#[test]
fn sigterm_stops_the_server_with_exit_code_zero() {
    let mut pdp = Portcullis::start(&["--listen", "127.0.0.1:0"]);
    let status = pdp.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "SIGTERM should end portcullis with exit code 0, got {status}\nstderr:\n{}",
        pdp.stderr()
    );
}
