//! The forward-auth HTTP listener in process: each gateway convention asks
//! about the same request and gets `Check`'s decision; a client's forged
//! convention or forwarding headers change nothing; a route that checks
//! bodies is refused when the gateway forwarded none; decisions are
//! recorded and counted under their adapter; the listener's own limits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse as CheckHttp;
use portcullis::config::Config;
use serde_json::Value;

use crate::support::{
    self, check_at, http_status, mint, policies_dir, token, Check, HttpRequest, HttpResponse, Key,
    TestServer, PREDICT, PREDICT_BODY,
};

/// A server in process with the forward-auth listener on, trusting the
/// fixture issuer; `adjust` changes the config first.
async fn start(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = support::in_process_config(&policies_dir());
    config.reload.watch = false;
    config.authentication.jwt = vec![support::fixture_issuer()];
    config.forward_auth.listen = Some("127.0.0.1:0".parse().unwrap());
    adjust(&mut config);
    TestServer::start(config).await
}

fn fa(server: &TestServer) -> SocketAddr {
    server
        .forward_auth_addr
        .expect("the forward-auth listener is on")
}

/// Sends `request` from a blocking thread (the server shares the runtime).
async fn send(addr: SocketAddr, request: HttpRequest) -> HttpResponse {
    tokio::task::spawn_blocking(move || request.send(addr))
        .await
        .unwrap()
}

/// A request at the gateway, as each convention describes it.
#[derive(Clone)]
struct Asked {
    method: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
    body: Option<&'static [u8]>,
}

impl Asked {
    fn new(method: &'static str, path: &'static str) -> Asked {
        Asked {
            method,
            path,
            headers: Vec::new(),
            body: None,
        }
    }

    fn header(mut self, name: &str, value: &str) -> Asked {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn bearer(self, token: &str) -> Asked {
        self.header("authorization", &format!("Bearer {token}"))
    }

    fn json(mut self, body: &'static [u8]) -> Asked {
        self.body = Some(body);
        self.header("content-type", "application/json")
    }

    fn check(&self) -> Check {
        let mut c = Check::new(self.method, self.path);
        for (k, v) in &self.headers {
            c = c.header(k, v);
        }
        match self.body {
            Some(b) => c.raw_body(b),
            None => c,
        }
    }

    /// Envoy's HTTP mode: the request line after the prefix, body and all.
    fn request_line(&self) -> HttpRequest {
        let mut r = HttpRequest::new(self.method, &format!("/ext-authz{}", self.path));
        for (k, v) in &self.headers {
            if !(self.body.is_some() && k == "content-type") {
                r = r.header(k, v);
            }
        }
        if let Some(b) = self.body {
            let content_type = self.headers_value("content-type").unwrap_or_default();
            r = r.raw_body(&content_type, b);
        }
        r
    }

    /// Traefik and Caddy: a GET with X-Forwarded-* and no body.
    fn forwarded(&self) -> HttpRequest {
        let mut r = HttpRequest::get("/forward-auth")
            .header("x-forwarded-method", self.method)
            .header("x-forwarded-uri", self.path)
            .header("x-forwarded-host", "api.test")
            .header("x-forwarded-proto", "https");
        for (k, v) in &self.headers {
            r = r.header(k, v);
        }
        r
    }

    /// nginx: a GET with X-Original-* and no body.
    fn original(&self) -> HttpRequest {
        let mut r = HttpRequest::get("/auth-request")
            .header("x-original-method", self.method)
            .header("x-original-uri", self.path);
        for (k, v) in &self.headers {
            r = r.header(k, v);
        }
        r
    }

    fn headers_value(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// What a client and upstream see of one answer: status, the problem type
/// of a denial, its challenge, and the upstream identity headers.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    problem: Option<String>,
    challenge: Option<String>,
    principal: Option<String>,
    pii: Option<String>,
}

fn seen_http(r: &HttpResponse) -> Seen {
    let problem = (r.status >= 300).then(|| r.json()["type"].as_str().unwrap().to_string());
    Seen {
        status: r.status,
        problem,
        challenge: r.header("www-authenticate").map(str::to_string),
        principal: (r.status == 200)
            .then(|| r.header("x-portcullis-principal").map(str::to_string))
            .flatten(),
        pii: (r.status == 200)
            .then(|| r.header("x-portcullis-pii").map(str::to_string))
            .flatten(),
    }
}

fn seen_check(c: &envoy_types::pb::envoy::service::auth::v3::CheckResponse) -> Seen {
    let status = http_status(c);
    match &c.http_response {
        Some(CheckHttp::OkResponse(ok)) => {
            let get = |name: &str| {
                ok.headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .find(|h| h.key == name)
                    .map(|h| h.value.clone())
            };
            Seen {
                status,
                problem: None,
                challenge: None,
                principal: get("x-portcullis-principal"),
                pii: get("x-portcullis-pii"),
            }
        }
        Some(CheckHttp::DeniedResponse(denied)) => {
            let body: Value = serde_json::from_str(&denied.body).unwrap();
            Seen {
                status,
                problem: Some(body["type"].as_str().unwrap().to_string()),
                challenge: support::denied_header(c, "www-authenticate"),
                principal: None,
                pii: None,
            }
        }
        other => panic!("unexpected http_response {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_convention_gets_checks_decision_status_and_headers() {
    let server = start(|_| {}).await;
    let alice = token("alice");
    let erin = mint(support::claims("erin", "globex"), Key::Es256);
    let feedback: &[u8] = br#"{"decision_id": "0192f0c4-7b8a-7cc1-9a4e-3c1d2b4a5e6f", "rating": 2, "comment": "call me on +44 20 7946 0958"}"#;
    let cases = [
        Asked::new("GET", "/v1/status"),
        Asked::new("POST", PREDICT)
            .bearer(&alice)
            .json(PREDICT_BODY),
        Asked::new("POST", PREDICT),
        Asked::new("POST", PREDICT).bearer("not.a.token"),
        Asked::new("GET", "/v1/orgs/acme/models").bearer(&erin),
        Asked::new("GET", "/v1/orgs/acme/models").bearer(&alice),
        Asked::new("GET", "/nope"),
        Asked::new("POST", "/v1/status"),
        Asked::new("POST", "/v1/feedback")
            .bearer(&token("bob"))
            .json(feedback),
    ];
    let mut table = Vec::new();
    for asked in &cases {
        let via_check = seen_check(&check_at(server.decision_addr, asked.check().build()).await);
        let via_line = seen_http(&send(fa(&server), asked.request_line()).await);
        assert_eq!(via_line, via_check, "{} {}", asked.method, asked.path);
        // The header conventions carry no body: a route that checks one
        // is refused as such, everything else decides as Check does.
        let body_route = asked.path == PREDICT || asked.path == "/v1/feedback";
        for (name, request) in [
            ("x-forwarded", asked.forwarded()),
            ("x-original", asked.original()),
        ] {
            let seen = seen_http(&send(fa(&server), request).await);
            if body_route && via_check.status == 200 {
                assert_eq!(seen.status, 500, "{name} {}", asked.path);
                assert_eq!(
                    seen.problem.as_deref(),
                    Some("urn:portcullis:problem:body_not_forwarded")
                );
            } else {
                assert_eq!(seen, via_check, "{name} {} {}", asked.method, asked.path);
            }
        }
        table.push(format!(
            "{:<5} {:<45} {}",
            asked.method, asked.path, via_check.status
        ));
    }
    eprintln!("{}", table.join("\n"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_case_method_is_a_bad_method_through_every_front_door() {
    // `get` is not `GET` (RFC 9110 section 9.1): no front door upper-cases
    // it into a route that lists `GET`, and none passes it on.
    let server = start(|_| {}).await;
    let asked = Asked::new("get", "/v1/status");
    let via_check = check_at(server.decision_addr, asked.check().build()).await;
    assert_eq!(http_status(&via_check), 400, "ext_authz");
    for (name, request) in [
        ("request line", asked.request_line()),
        ("x-forwarded", asked.forwarded()),
        ("x-original", asked.original()),
    ] {
        let answer = send(fa(&server), request).await;
        assert_eq!(answer.status, 400, "{name}: {}", answer.text());
        assert_eq!(
            answer.json()["type"],
            "urn:portcullis:problem:bad_method",
            "{name}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_carries_identity_quota_and_removal_headers_and_a_deny_checks_headers() {
    let server = start(|_| {}).await;
    let alice = token("alice");
    let allowed = send(
        fa(&server),
        Asked::new("POST", PREDICT)
            .bearer(&alice)
            .header("x-portcullis-principal", "User::\"admin\"")
            .header("x-portcullis-role", "admin")
            .header("cookie", "session=1")
            .json(PREDICT_BODY)
            .request_line(),
    )
    .await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(
        allowed.header("x-portcullis-principal"),
        Some("User::\"alice\"")
    );
    assert!(allowed.header("x-portcullis-decision-id").is_some());
    assert!(allowed.header("x-portcullis-policy-version").is_some());
    // The predict route's quota and headers_to_remove (policies/).
    assert!(
        allowed.header("ratelimit-limit").is_some(),
        "{:?}",
        allowed.headers
    );
    let remove = allowed.header("x-envoy-auth-headers-to-remove").unwrap();
    for h in ["x-portcullis-role", "cookie", "x-client-id"] {
        assert!(remove.split(',').any(|r| r == h), "{h} in {remove}");
    }
    assert!(allowed.body.is_empty());

    let denied = send(fa(&server), Asked::new("POST", PREDICT).forwarded()).await;
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        denied.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\"")
    );
    assert_eq!(denied.header("cache-control"), Some("no-store"));
    let problem = denied.json();
    assert_eq!(
        denied.header("x-portcullis-decision-id"),
        problem["decision_id"].as_str()
    );
    // Only nginx's convention repeats the problem in a header.
    assert!(denied.header("x-portcullis-problem").is_none());
    let nginx = send(fa(&server), Asked::new("POST", PREDICT).original()).await;
    assert_eq!(nginx.status, 401);
    let in_header: Value =
        serde_json::from_str(nginx.header("x-portcullis-problem").unwrap()).unwrap();
    assert_eq!(in_header, nginx.json());

    let not_allowed = send(fa(&server), Asked::new("POST", "/v1/status").original()).await;
    assert_eq!(not_allowed.status, 405);
    assert_eq!(not_allowed.header("allow"), Some("GET, HEAD"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_checks_bodies_is_refused_when_the_gateway_forwarded_none() {
    let server = start(|_| {}).await;
    let alice = token("alice");
    let erin = mint(support::claims("erin", "globex"), Key::Es256);
    let predict = Asked::new("POST", PREDICT).bearer(&alice);
    for request in [
        predict.original(),
        predict.forwarded(),
        predict.request_line(),
    ] {
        let r = send(fa(&server), request).await;
        assert_eq!(r.status, 500, "{}", r.text());
        let problem = r.json();
        assert_eq!(problem["type"], "urn:portcullis:problem:body_not_forwarded");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("the gateway did not forward the body"),
            "{problem}"
        );
    }
    // Authorization comes first: a caller who may not call learns nothing
    // about the body rules.
    let r = send(
        fa(&server),
        Asked::new("POST", PREDICT).bearer(&erin).original(),
    )
    .await;
    assert_eq!(r.status, 403);
    // Routes without a body rule do not care.
    let r = send(fa(&server), Asked::new("GET", "/v1/status").original()).await;
    assert_eq!(r.status, 200);
    server.shutdown().await.unwrap();

    // A gateway that forwards bodies: an empty one is the client's (400,
    // as Check says), except through nginx, which never forwards one.
    let server = start(|c| c.forward_auth.bodies_forwarded.request_line = true).await;
    let r = send(fa(&server), predict.request_line()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["type"], "urn:portcullis:problem:malformed_body");
    let r = send(fa(&server), predict.original()).await;
    assert_eq!(r.status, 500);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_uri_header_is_an_ordinary_header_to_the_other_conventions() {
    let server = start(|_| {}).await;
    // /v1/audit needs an admin; /v1/status is open to anyone. A client
    // adds the other conventions' headers naming /v1/status.
    let forged = |r: HttpRequest| {
        r.header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/v1/status")
            .header("x-original-method", "GET")
            .header("x-original-uri", "/v1/status")
    };
    let audit = Asked::new("GET", "/v1/audit");
    // nginx sets X-Original-* (and passes the client's X-Forwarded-*).
    let nginx = HttpRequest::get("/auth-request")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/v1/status")
        .header("x-original-method", "GET")
        .header("x-original-uri", "/v1/audit");
    // Caddy and Traefik set X-Forwarded-* (and pass the client's
    // X-Original-*).
    let caddy = HttpRequest::get("/forward-auth")
        .header("x-original-method", "GET")
        .header("x-original-uri", "/v1/status")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/v1/audit");
    for (name, request) in [
        ("nginx", nginx),
        ("caddy", caddy),
        ("envoy", forged(audit.request_line())),
    ] {
        let r = send(fa(&server), request).await;
        assert_eq!(
            r.status,
            401,
            "{name}: decided on the forged path: {}",
            r.text()
        );
    }
    // A convention header sent twice (a client's and the gateway's, with a
    // gateway that appends) is refused, never guessed.
    let twice = HttpRequest::get("/auth-request")
        .header("x-original-method", "GET")
        .header("x-original-uri", "/v1/status")
        .header("x-original-uri", "/v1/audit");
    let r = send(fa(&server), twice).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["type"],
        "urn:portcullis:problem:bad_forward_auth_request"
    );
    server.shutdown().await.unwrap();
}

/// Audit records of the trail in `dir`.
fn records(dir: &std::path::Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    out
}

/// Three refused credentials, each "from" another forged address, then a
/// valid request from yet another: what it gets, and the address its
/// record names.
async fn fail_three_times_then_ask(server: &TestServer) -> (u16, String) {
    let alice = token("alice");
    for i in 1..=3 {
        let r = send(
            fa(server),
            Asked::new("GET", "/v1/orgs/acme/models")
                .bearer("forged.not.valid")
                .header("x-forwarded-for", &format!("198.51.100.{i}"))
                .header("x-request-id", &format!("fail-{i}"))
                .forwarded(),
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let r = send(
        fa(server),
        Asked::new("GET", "/v1/orgs/acme/models")
            .bearer(&alice)
            .header("x-forwarded-for", "198.51.100.99")
            .header("x-real-ip", "198.51.100.98")
            .header("x-request-id", "last")
            .forwarded(),
    )
    .await;
    (r.status, r.header("retry-after").unwrap_or("").to_string())
}

fn three_failures_block(c: &mut Config) {
    c.authentication.failures.threshold = 3;
    c.authentication.failures.window_seconds = 60;
    c.authentication.failures.block_seconds = 60;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_x_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    // Nothing trusted (the default): every request is the peer's, however
    // it names itself, and the peer is blocked after three failures.
    let server = start(three_failures_block).await;
    let (status, retry_after) = fail_three_times_then_ask(&server).await;
    assert_eq!(status, 429, "a forged X-Forwarded-For escaped the block");
    assert!(!retry_after.is_empty());
    let audit = server.shutdown().await.unwrap();
    let last = records(audit.path())
        .into_iter()
        .find(|r| r["request_id"] == "last" && r["kind"] == "decision")
        .unwrap();
    assert_eq!(last["source_ip"], "127.0.0.1");
    assert_eq!(last["reason"], "too_many_failed_attempts");

    // The gateway trusted: each address is its own client, none blocked.
    let server = start(|c| {
        three_failures_block(c);
        c.forward_auth.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let (status, _) = fail_three_times_then_ask(&server).await;
    assert_eq!(status, 200);
    let audit = server.shutdown().await.unwrap();
    let last = records(audit.path())
        .into_iter()
        .find(|r| r["request_id"] == "last" && r["kind"] == "decision")
        .unwrap();
    assert_eq!(last["source_ip"], "198.51.100.99");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_recorded_and_counted_under_their_adapter() {
    let server = start(|_| {}).await;
    let r = send(
        fa(&server),
        Asked::new("GET", "/v1/status")
            .header("x-request-id", "via-forward-auth")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .original(),
    )
    .await;
    assert_eq!(r.status, 200);
    check_at(
        server.decision_addr,
        Check::get("/v1/status").id("via-check").build(),
    )
    .await;
    let (status, metrics) = tokio::task::spawn_blocking({
        let addr = server.http_addr;
        move || support::http_get(addr, "/metrics")
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("portcullis_decisions_total{service=\"forward_auth\",outcome=\"allow\",reason=\"none\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_decision_duration_seconds_count{service=\"forward_auth\"}")
    );
    let audit = server.shutdown().await.unwrap();
    let all = records(audit.path());
    let by_id = |id: &str| {
        all.iter()
            .find(|r| r["request_id"] == id && r["kind"] == "decision")
            .unwrap_or_else(|| panic!("no record of {id}"))
    };
    let fa_record = by_id("via-forward-auth");
    assert_eq!(fa_record["adapter"], "forward_auth");
    assert_eq!(fa_record["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(fa_record["route"], "status");
    assert_eq!(by_id("via-check")["adapter"], "ext_authz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_answered_like_http1() {
    let server = start(|_| {}).await;
    let tcp = tokio::net::TcpStream::connect(fa(&server)).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = hyper::http::Request::get(format!("http://{}/ext-authz/v1/status", fa(&server)))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-portcullis-decision-id"));
    let request = hyper::http::Request::get(format!("http://{}/ext-authz/nope", fa(&server)))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 404);
    drop(client);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_asks_oversized_bodies_and_the_busy_listener_are_refused() {
    let server = start(|c| {
        c.server.max_message_bytes = 1024;
        c.server.max_pending_requests = 1;
    })
    .await;
    let r = send(fa(&server), HttpRequest::get("/")).await;
    assert_eq!(r.status, 404);
    let problem = r.json();
    assert_eq!(
        problem["type"],
        "urn:portcullis:problem:bad_forward_auth_request"
    );
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("/forward-auth"));
    let r = send(fa(&server), HttpRequest::get("/forward-auth")).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("x-forwarded-method"), "{}", r.text());
    let big = vec![b'x'; 2048];
    let r = send(
        fa(&server),
        HttpRequest::post("/ext-authz/v1/feedback").raw_body("application/json", &big),
    )
    .await;
    assert_eq!(r.status, 413);

    // One request in progress (its body never comes): the next is refused
    // at once, not queued.
    let addr = fa(&server);
    let held = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(
            b"POST /ext-authz/v1/feedback HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n",
        )
        .unwrap();
        s
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = send(fa(&server), HttpRequest::get("/ext-authz/v1/status")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["type"], "urn:portcullis:problem:over_budget");
    assert_eq!(r.header("retry-after"), Some("1"));
    // The held request ends at the deadline (503), freeing the budget.
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = held;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let r = send(fa(&server), HttpRequest::get("/ext-authz/v1/status")).await;
    assert_eq!(r.status, 200);
    server.shutdown().await.unwrap();
}
