//! Real gateways in front of a small upstream, with the `portcullis`
//! binary behind them: Envoy 1.40 with `deploy/envoy.yaml` (gRPC `Check`),
//! and the forward-auth configs of `deploy/forward-auth/`: nginx
//! (`auth_request`), Caddy (`forward_auth` written out) and Envoy's
//! ext_authz in HTTP mode. Every request of the bundled policy test cases
//! goes through each, and the table of what the client and the upstream
//! saw is printed and checked: the same decision, status and upstream
//! identity headers as through gRPC `Check`, but where a gateway that
//! forwards no body meets a route that checks bodies (refused,
//! `body_not_forwarded`). Then forged forwarding headers through the
//! gateways.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use portcullis::adapters::offline::check::CheckInput;
use serde_json::{json, Value};

use crate::support::{
    self, claims, mint, Envoy, Gateway, HttpRequest, HttpResponse, Key, PolicyDir, Portcullis,
    Upstream,
};

/// Issuers of the tokens that stand in for a case's identity: the fixture
/// issuer for users, and two more on the same key set whose principals are
/// service accounts (standing in for an mTLS workload, which no HTTP
/// gateway here hands on) and apps (standing in for an API key).
const WORKLOAD_ISSUER: &str = "https://workloads.idp.test.portcullis/";
const APP_ISSUER: &str = "https://apps.idp.test.portcullis/";

/// The Portcullis config: the bundled policies with roomy quotas (a replay
/// must never run out), the three issuers, the gateway region from a
/// header (the residency cases), anomaly detection off (the replay's
/// denials must not raise `context.risk` for the cases after them), the
/// forward-auth listener trusting loopback's 127.0.0.1 (the gateways), and
/// Envoy's HTTP mode forwarding bodies.
fn write_config(dir: &Path, policies: &Path, extra: &str) -> PathBuf {
    let jwks = support::fixture("keys/test-issuer.jwks.json");
    let issuer = |iss: &str, kind: &str| {
        format!(
            "    - issuer: \"{iss}\"\n      audiences: [\"{aud}\"]\n      jwks_file: {jwks:?}\n      \
             algorithms: [ES256]\n      principal_type: {kind}\n      org_claim: org\n",
            aud = "portcullis",
        )
    };
    let text = format!(
        "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\nhttp_listen: \"127.0.0.1:0\"\n\
         policies: {policies:?}\nreload: {{ watch: false }}\naudit: {{ directory: {audit:?} }}\n\
         log: {{ level: warn }}\n\
         authentication:\n  leeway_seconds: 30\n  jwt:\n{}{}{}\
         residency:\n  region_header: x-gateway-region\n\
         anomaly: {{ enabled: false }}\n\
         forward_auth:\n  listen: \"127.0.0.1:0\"\n  trusted_proxies: [127.0.0.1/32]\n  \
         bodies_forwarded: {{ request_line: true }}\n{extra}",
        issuer(support::ISSUER, "User"),
        issuer(WORKLOAD_ISSUER, "ServiceAccount"),
        issuer(APP_ISSUER, "App"),
        audit = dir.join("audit"),
    );
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The bundled policies with every rate and burst a thousand times larger.
fn roomy_policies() -> PolicyDir {
    let dir = PolicyDir::bundled();
    let quotas = dir.read("quotas.yaml");
    let roomy: String = quotas
        .lines()
        .map(|line| {
            for key in ["requests_per_unit: ", "burst: "] {
                if let Some(at) = line.find(key) {
                    let (head, number) = line.split_at(at + key.len());
                    if let Ok(n) = number.trim().parse::<u64>() {
                        return format!("{head}{}", n * 1000);
                    }
                }
            }
            line.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    dir.write("quotas.yaml", &(roomy + "\n"));
    dir
}

/// The upstream, Portcullis and the four gateways. Fields drop in order:
/// the gateways first.
struct Stack {
    grpc: Envoy,
    nginx: Gateway,
    caddy: Gateway,
    envoy_http: Envoy,
    _pdp: Portcullis,
    upstream: Upstream,
    _policies: PolicyDir,
    dir: tempfile::TempDir,
}

impl Stack {
    fn start(extra_config: &str) -> Stack {
        let policies = roomy_policies();
        let upstream = Upstream::start();
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), policies.path(), extra_config);
        let mut pdp = Portcullis::start(&[
            "--config",
            config.to_str().unwrap(),
            "--policies",
            policies.arg(),
        ]);
        let fa = pdp.listener("forward_auth");
        Stack {
            grpc: Envoy::start(pdp.addr(), upstream.addr()),
            nginx: support::start_nginx(fa, upstream.addr()),
            caddy: support::start_caddy(fa, upstream.addr()),
            envoy_http: Envoy::start_file(
                "forward-auth/envoy-http.yaml",
                // Portcullis's address in the shipped file.
                "127.0.0.1:9191",
                fa,
                upstream.addr(),
            ),
            _pdp: pdp,
            upstream,
            _policies: policies,
            dir,
        }
    }

    /// The doors, named as the table names them.
    fn doors(&self) -> [(&'static str, SocketAddr); 4] {
        [
            ("gRPC Check", self.grpc.addr()),
            ("nginx", self.nginx.addr()),
            ("Caddy", self.caddy.addr()),
            ("Envoy-HTTP", self.envoy_http.addr()),
        ]
    }

    /// Every decision record written so far, by decision id.
    fn records(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("audit")) else {
            return out;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                let text = std::fs::read_to_string(&path).unwrap();
                for line in text.lines() {
                    if let Ok(r) = serde_json::from_str::<Value>(line) {
                        if r["kind"] == "decision" {
                            out.insert(r["id"].as_str().unwrap_or("").to_string(), r);
                        }
                    }
                }
            }
        }
        out
    }
}

/// One replayed case: its name, the request, what the file expects, and
/// why a live replay may not reach that (`time` and `risk` cannot be set
/// on a real request).
struct Case {
    name: String,
    request: CheckInput,
    expect_status: Option<u16>,
    not_live: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    let dir = support::policies_dir().join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for case in doc["cases"].as_sequence().unwrap() {
            let Some(request) = case.get("request") else {
                continue; // a Cedar request: no HTTP request to replay
            };
            let request: CheckInput = serde_yaml_ng::from_value(request.clone()).unwrap();
            let not_live = if request.risk > 0 {
                Some("risk is the live detector's")
            } else if request.time.is_some() {
                Some("time is now")
            } else {
                None
            };
            out.push(Case {
                name: case["name"].as_str().unwrap().to_string(),
                expect_status: case["expect"]["status"].as_u64().map(|s| s as u16),
                request,
                not_live,
            });
        }
    }
    out
}

/// A bearer token for the case's identity: its principal's type picks the
/// issuer, its parents' org the `org` claim, scopes and MFA their claims.
fn token_for(request: &CheckInput) -> Option<String> {
    let identity = request.identity.as_ref()?;
    let (kind, id) = identity.principal.split_once("::").unwrap();
    let id = id.trim_matches('"');
    let org = identity
        .parents
        .iter()
        .find_map(|p| p.strip_prefix("Org::"))
        .map(|o| o.trim_matches('"').to_string());
    let mut c = claims(id, org.as_deref().unwrap_or(""));
    if org.is_none() {
        c.as_object_mut().unwrap().remove("org");
    }
    c["iss"] = json!(match kind {
        "User" => support::ISSUER,
        "ServiceAccount" => WORKLOAD_ISSUER,
        "App" => APP_ISSUER,
        other => panic!("no issuer stands in for {other} principals"),
    });
    if !identity.scopes.is_empty() {
        c["scope"] = json!(identity.scopes.join(" "));
    }
    if identity.mfa {
        c["amr"] = json!(["pwd", "mfa"]);
    }
    Some(mint(c, Key::Es256))
}

/// The case as a client sends it.
fn http_request(request: &CheckInput) -> HttpRequest {
    let mut r = HttpRequest::new(&request.method, &request.path);
    for (k, v) in &request.headers {
        r = r.header(k, v);
    }
    if let Some(token) = token_for(request) {
        r = r.bearer(&token);
    }
    if let Some(region) = &request.region {
        r = r.header("x-gateway-region", region);
    }
    match (&request.body, &request.raw_body) {
        (Some(json), _) if !request.headers.contains_key("content-type") => r.json(json),
        (Some(json), _) => r.body(json.to_string().as_bytes()),
        (None, Some(raw)) => r.body(raw.as_bytes()),
        (None, None) => r,
    }
}

/// What the client and the upstream saw through one door.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: u16,
    /// The problem type's last part on a refusal.
    problem: Option<String>,
    /// On an allow, the identity headers as the upstream got them.
    principal: Option<String>,
    pii: Option<String>,
    policy_version: Option<String>,
    /// The decision's id (the upstream's header or the problem's).
    decision_id: Option<String>,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.problem, &self.principal) {
            (Some(p), _) => write!(f, "{} {p}", self.status),
            (None, Some(who)) => {
                write!(f, "{} {}", self.status, who.replace('"', ""))?;
                if let Some(pii) = &self.pii {
                    write!(f, " pii={pii}")?;
                }
                Ok(())
            }
            (None, None) => write!(f, "{}", self.status),
        }
    }
}

impl Seen {
    /// Decision, status and upstream identity headers: what must agree.
    fn same_as(&self, other: &Seen) -> bool {
        (self.status, &self.problem, &self.principal, &self.pii)
            == (other.status, &other.problem, &other.principal, &other.pii)
            && self.policy_version == other.policy_version
    }
}

fn seen(response: &HttpResponse, upstream_hits_before: usize, upstream: &Upstream) -> Seen {
    if response.status == 200 {
        assert_eq!(
            upstream.hits(),
            upstream_hits_before + 1,
            "an allowed request reaches the upstream once"
        );
        let echo = response.json();
        let header = |name: &str| echo["headers"][name].as_str().map(str::to_string);
        return Seen {
            status: 200,
            problem: None,
            principal: header("x-portcullis-principal"),
            pii: header("x-portcullis-pii"),
            policy_version: header("x-portcullis-policy-version"),
            decision_id: header("x-portcullis-decision-id"),
        };
    }
    assert_eq!(
        upstream.hits(),
        upstream_hits_before,
        "a refusal never reaches the upstream"
    );
    let problem = response.json();
    Seen {
        status: response.status,
        problem: problem["type"]
            .as_str()
            .and_then(|t| t.strip_prefix("urn:portcullis:problem:"))
            .map(str::to_string),
        principal: None,
        pii: None,
        policy_version: None,
        decision_id: problem["decision_id"].as_str().map(str::to_string),
    }
}

/// The refusals a gateway that forwards no body may turn into
/// `body_not_forwarded`: an allow, or a refusal of the body itself.
fn needed_the_body(check: &Seen) -> bool {
    check.status == 200
        || matches!(
            check.problem.as_deref(),
            Some(
                "malformed_body"
                    | "unsupported_media_type"
                    | "invalid_body"
                    | "body_too_large"
                    | "pii_detected"
            )
        )
}

#[test]
fn policy_cases_through_nginx_caddy_and_envoy_http_decide_as_through_grpc_check() {
    let stack = Stack::start("");
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut same = [0usize; 4];
    let mut body_refused = [0usize; 4];
    for case in &cases {
        let request = http_request(&case.request);
        let mut through = Vec::new();
        for (door, addr) in stack.doors() {
            let before = stack.upstream.hits();
            let response = request.send(addr);
            through.push((door, seen(&response, before, &stack.upstream)));
        }
        let check = through[0].1.clone();
        if let (Some(want), None) = (case.expect_status, case.not_live) {
            if check.status != want {
                problems.push(format!(
                    "{}: gRPC Check answered {check}, the case expects {want}",
                    case.name
                ));
            }
        }
        for (i, (door, got)) in through.iter().enumerate() {
            if got.same_as(&check) {
                same[i] += 1;
            } else if *door != "Envoy-HTTP"
                && *door != "gRPC Check"
                && got.problem.as_deref() == Some("body_not_forwarded")
                && needed_the_body(&check)
            {
                body_refused[i] += 1;
            } else {
                problems.push(format!(
                    "{}: {door} answered {got} (upstream {:?}), gRPC Check {check} (upstream {:?})",
                    case.name, got, check
                ));
            }
        }
        let expected = match (case.expect_status, case.not_live) {
            (Some(s), None) => s.to_string(),
            (Some(s), Some(why)) => format!("{s} ({why})"),
            (None, _) => "-".into(),
        };
        rows.push(
            [case.name.clone(), expected]
                .into_iter()
                .chain(through.iter().map(|(_, s)| s.to_string()))
                .collect::<Vec<_>>(),
        );
    }

    // Every answer is a decision of the one Portcullis, recorded under the
    // adapter its gateway called.
    let records = stack.records();
    let adapters: BTreeMap<String, usize> =
        records.values().fold(BTreeMap::new(), |mut counts, r| {
            *counts
                .entry(r["adapter"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
            counts
        });

    let header = [
        "case",
        "expected",
        "gRPC Check",
        "nginx",
        "Caddy",
        "Envoy-HTTP",
    ];
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap()
                .min(if i == 0 { 60 } else { 48 })
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                let c: String = c.chars().take(*w).collect();
                format!("{c:<w$}")
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let mut table = vec![
        line(&header.map(String::from)),
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-|-"),
    ];
    table.extend(rows.iter().map(|r| line(r)));
    table.push(String::new());
    table.push(format!(
        "{} cases; same decision, status and upstream identity headers as gRPC Check: \
         nginx {}, Caddy {}, Envoy-HTTP {}; refused because the gateway forwards no body \
         (body_not_forwarded, on routes that check bodies): nginx {}, Caddy {}",
        cases.len(),
        same[1],
        same[2],
        same[3],
        body_refused[1],
        body_refused[2]
    ));
    table.push(format!("audit records by adapter: {adapters:?}"));
    let table = table.join("\n");
    eprintln!("\n{table}\n");
    if let Ok(path) = std::env::var("PORTCULLIS_FORWARD_AUTH_TABLE") {
        std::fs::write(path, &table).unwrap();
    }
    assert!(problems.is_empty(), "{}\n\n{table}", problems.join("\n"));
    assert_eq!(
        same[3],
        cases.len(),
        "Envoy-HTTP decides every case as Check"
    );
    assert_eq!(same[1] + body_refused[1], cases.len());
    assert_eq!(same[2] + body_refused[2], cases.len());
    assert!(
        body_refused[1] > 0,
        "the replay has routes that check bodies"
    );
    assert_eq!(adapters.get("ext_authz"), Some(&cases.len()));
    assert_eq!(adapters.get("forward_auth"), Some(&(3 * cases.len())));
}

/// A request a client on 127.0.0.2 (not a trusted proxy: only 127.0.0.1,
/// where the gateways are, is) sends with forged forwarding headers.
fn forged(method: &str, path: &str) -> HttpRequest {
    HttpRequest::new(method, path)
        .from(IpAddr::from([127, 0, 0, 2]))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-real-ip", "203.0.113.8")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/v1/status")
        .header("x-original-method", "GET")
        .header("x-original-uri", "/v1/status")
}

#[test]
fn forged_forwarding_headers_through_the_gateways_change_no_decision() {
    let stack = Stack::start("");
    for (door, addr) in stack.doors() {
        // The path decided is the one the gateway forwards: /v1/audit
        // (admins only), never the forged /v1/status (anyone).
        let r = forged("GET", "/v1/audit").send(addr);
        assert_eq!(r.status, 401, "{door}: {} {}", r.status, r.text());
        // The client is the address the gateway saw, never the forged one.
        let before = stack.upstream.hits();
        let r = forged("GET", "/v1/status").send(addr);
        let s = seen(&r, before, &stack.upstream);
        assert_eq!(s.status, 200, "{door}");
        let id = s.decision_id.expect("the upstream gets the decision id");
        let record = stack
            .records()
            .remove(&id)
            .unwrap_or_else(|| panic!("{door}: no record of decision {id}"));
        assert_eq!(
            record["source_ip"], "127.0.0.2",
            "{door}: the client's address is the one its gateway saw: {record}"
        );

        // Identity headers only ever come from Portcullis. nginx sets the
        // four it copies (so a client's never pass) but cannot remove other
        // x-portcullis-* headers (docs/forward-auth.md).
        let before = stack.upstream.hits();
        let r = HttpRequest::get("/v1/status")
            .header("x-portcullis-principal", "User::\"admin\"")
            .header("x-portcullis-pii", "none")
            .header("x-portcullis-role", "admin")
            .send(addr);
        let s = seen(&r, before, &stack.upstream);
        assert_eq!(
            s.principal.as_deref(),
            Some("Anonymous::\"anonymous\""),
            "{door}"
        );
        assert_eq!(s.pii, None, "{door}");
        let echo = r.json();
        let role = echo["headers"]["x-portcullis-role"].as_str();
        assert_eq!(
            role.is_some(),
            door == "nginx",
            "{door}: x-portcullis-role {role:?}"
        );
    }

    // The route's headers_to_remove (predict: cookie, x-client-id) are
    // removed from the upstream request by Envoy in both modes.
    let alice = mint(claims("alice", "acme"), Key::Es256);
    for (door, addr) in [stack.doors()[0], stack.doors()[3]] {
        let before = stack.upstream.hits();
        let r = HttpRequest::post("/v1/models/sentiment/versions/v2:predict")
            .bearer(&alice)
            .header("cookie", "session=secret")
            .header("x-client-id", "laptop-7")
            .json(&json!({"features": ["the parcel arrived early"]}))
            .send(addr);
        let s = seen(&r, before, &stack.upstream);
        assert_eq!(s.status, 200, "{door}");
        let headers = &r.json()["headers"];
        assert!(headers.get("cookie").is_none(), "{door}: {headers}");
        assert!(headers.get("x-client-id").is_none(), "{door}: {headers}");
    }
}
