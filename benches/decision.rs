//! Micro-benchmarks of the decision path in process (no gRPC): the whole
//! pipeline on the bundled policies with a bearer token, with an identity
//! given (Cedar only), with mTLS; policy-set size scaling; JWT verification
//! per algorithm; body validation, a JSON body of numbers against one of
//! strings, and a `CheckRequest` as Envoy sends it decoded into the request
//! against prost's decode of the whole message. Run:
//! `cargo bench --bench decision`.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::authn::config::{AuthnConfig, IssuerConfig};
use portcullis::authn::{AuthMethod, Authenticator, Identity};
use portcullis::decision::Decision;
use portcullis::pipeline::{self, Ask, Live, Mode};
use portcullis::policy::Snapshot;
use portcullis::quota::Quotas;
use portcullis::request::AccessRequest;

/// An enforced decision without the audit trail: the stages alone.
async fn decide(
    snapshot: &Snapshot,
    authn: &Authenticator,
    quotas: &Quotas,
    req: &AccessRequest,
) -> Decision {
    let live = Live {
        door: pipeline::Door::ExtAuthz,
        authenticator: authn,
        quotas,
        audit: None,
        anomalies: None,
    };
    pipeline::decide(snapshot, Ask::Access(req), Mode::Enforce(live)).await
}

/// A decision for a given identity (Cedar and the body stage only).
fn decide_as(snapshot: &Snapshot, identity: Option<Identity>, req: &AccessRequest) -> Decision {
    pipeline::decide_offline(snapshot, req, identity, 0)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn authenticator() -> Authenticator {
    Authenticator::new(&AuthnConfig {
        jwt: vec![serde_json::from_value::<IssuerConfig>(serde_json::json!({
            "issuer": "https://idp.test.portcullis/",
            "audiences": ["portcullis"],
            "jwks_file": root().join("tests/fixtures/keys/test-issuer.jwks.json"),
            "algorithms": ["ES256", "RS256"],
            "org_claim": "org",
        }))
        .expect("issuer config")],
        ..AuthnConfig::default()
    })
    .expect("fixture issuer loads")
}

fn token(alg: Algorithm) -> String {
    let (file, kid) = match alg {
        Algorithm::RS256 => ("test-rs256.pem", "test-rs256"),
        _ => ("test-es256.pem", "test-es256"),
    };
    let pem = std::fs::read(root().join("tests/fixtures/keys").join(file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let claims = serde_json::json!({"iss": "https://idp.test.portcullis/", "aud": "portcullis",
        "sub": "alice", "org": "acme", "iat": now, "exp": now + 3600});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn predict() -> AccessRequest {
    AccessRequest::for_test("POST", "/v1/models/sentiment/versions/v2:predict")
        .with_json(&serde_json::json!({"features": ["great service"], "max_tokens": 64}))
}

/// `decide` is async (authentication may fetch keys); a current-thread
/// runtime drives it here, which adds its own small cost to each iteration.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The bundled policies with every quota a million times larger, so that
/// the measured requests are charged (the quota stage runs) but never run
/// out in the millions of iterations a benchmark makes.
fn bundled_with_roomy_quotas() -> (tempfile::TempDir, Snapshot) {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let schemas = dir.path().join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    for entry in std::fs::read_dir(root().join("policies/schemas")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, schemas.join(path.file_name().unwrap())).unwrap();
    }
    let quotas = dir.path().join("quotas.yaml");
    let text = std::fs::read_to_string(&quotas).unwrap();
    std::fs::write(&quotas, portcullis::quota::config::scaled(&text, 1_000_000)).unwrap();
    let snapshot = Snapshot::load(dir.path()).unwrap();
    (dir, snapshot)
}

fn pipeline(c: &mut Criterion) {
    let (_dir, snapshot) = bundled_with_roomy_quotas();
    let authn = authenticator();
    let rt = runtime();
    let quotas = portcullis::quota::Quotas::in_process(1_000_000);
    let mut g = c.benchmark_group("pipeline");
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let mut req = predict();
        req.headers
            .insert("authorization".into(), format!("Bearer {}", token(alg)));
        assert!(rt
            .block_on(decide(&snapshot, &authn, &quotas, &req))
            .is_allowed());
        g.bench_function(format!("bearer_{alg:?}"), |b| {
            b.iter(|| rt.block_on(decide(&snapshot, &authn, &quotas, &req)))
        });
        // The same with every decision evaluated by Cedar again.
        snapshot.prepared.set_decision_cache(false);
        g.bench_function(format!("bearer_{alg:?}_decision_cache_off"), |b| {
            b.iter(|| rt.block_on(decide(&snapshot, &authn, &quotas, &req)))
        });
        snapshot.prepared.set_decision_cache(true);
    }
    let mut mtls = predict();
    mtls.source_principal = Some("spiffe://acme.example/ns/ml/sa/batch-scorer".into());
    assert!(rt
        .block_on(decide(&snapshot, &authn, &quotas, &mtls))
        .is_allowed());
    g.bench_function("mtls", |b| {
        b.iter(|| rt.block_on(decide(&snapshot, &authn, &quotas, &mtls)))
    });
    let alice = Identity::new(
        r#"User::"alice""#.parse().unwrap(),
        vec![r#"Org::"acme""#.parse().unwrap()],
        AuthMethod::Jwt,
    );
    snapshot.prepared.set_decision_cache(false);
    g.bench_function("identity_given_cedar_only", |b| {
        b.iter(|| decide_as(&snapshot, Some(alice.clone()), &predict()))
    });
    snapshot.prepared.set_decision_cache(true);
    g.bench_function("no_route_404", |b| {
        let req = AccessRequest::for_test("GET", "/nowhere");
        b.iter(|| rt.block_on(decide(&snapshot, &authn, &quotas, &req)))
    });
    g.finish();
}

/// A policy directory with `n` permit policies over distinct principals,
/// plus the one that applies to the measured request. `indexed`: each
/// principal is named in the policy's scope (the index skips the others);
/// otherwise in its condition (every policy is evaluated).
fn scaled_policies(dir: &Path, n: usize, indexed: bool) {
    for f in [
        "schema.cedarschema",
        "entities.json",
        "routes.yaml",
        "models.yaml",
    ] {
        std::fs::copy(root().join("policies").join(f), dir.join(f)).unwrap();
    }
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    for entry in std::fs::read_dir(root().join("policies/schemas")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join("schemas").join(path.file_name().unwrap())).unwrap();
    }
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&if indexed {
            format!("@id(\"p{i}\")\npermit (principal == User::\"u{i}\", action == Action::\"invoke\", resource is ModelVersion) when {{ principal in resource.model.owner }};\n")
        } else {
            format!("@id(\"p{i}\")\npermit (principal, action == Action::\"invoke\", resource is ModelVersion) when {{ principal == User::\"u{i}\" && principal in resource.model.owner }};\n")
        });
    }
    text.push_str("@id(\"alice\")\npermit (principal == User::\"alice\", action == Action::\"invoke\", resource is ModelVersion);\n");
    std::fs::write(dir.join("scaled.cedar"), text).unwrap();
}

fn policy_scaling(c: &mut Criterion) {
    let alice = Identity::new(r#"User::"alice""#.parse().unwrap(), vec![], AuthMethod::Jwt);
    for (group, indexed) in [("policies", true), ("policies_in_conditions", false)] {
        let mut g = c.benchmark_group(group);
        for n in [10, 100, 1_000, 10_000] {
            let dir = tempfile::tempdir().unwrap();
            scaled_policies(dir.path(), n, indexed);
            let snapshot = Snapshot::load(dir.path()).unwrap();
            // Cedar evaluates every request: this measures the policy count.
            snapshot.prepared.set_decision_cache(false);
            assert!(decide_as(&snapshot, Some(alice.clone()), &predict()).is_allowed());
            g.bench_with_input(BenchmarkId::from_parameter(n), &snapshot, |b, s| {
                b.iter(|| decide_as(s, Some(alice.clone()), &predict()))
            });
        }
        g.finish();
    }
}

fn jwt(c: &mut Criterion) {
    let authn = authenticator();
    let rt = runtime();
    let mut g = c.benchmark_group("jwt_verify");
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let mut req = AccessRequest::for_test("GET", "/");
        req.headers
            .insert("authorization".into(), format!("Bearer {}", token(alg)));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(matches!(
            rt.block_on(authn.authenticate(&req, now)),
            portcullis::authn::Authentication::Authenticated(_)
        ));
        g.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| rt.block_on(authn.authenticate(&req, now)))
        });
    }
    g.finish();
}

/// What issue 7 adds to every `Check`: the anomaly detector's assessment
/// and observation (principal and source, 1,000 of each in rotation) and
/// the recording of a decision's metrics.
fn observability(c: &mut Criterion) {
    use portcullis::anomaly::{AnomalyConfig, Detector, Observed};
    let detector = Detector::new(
        &AnomalyConfig::default(),
        std::sync::Arc::new(portcullis::time::SystemClock),
    );
    let principals: Vec<String> = (0..1000).map(|i| format!("User::\"u{i}\"")).collect();
    let sources: Vec<std::net::IpAddr> = (0..1000u32)
        .map(|i| std::net::IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]))
        .collect();
    let mut g = c.benchmark_group("observability");
    let mut i = 0usize;
    g.bench_function("anomaly_assess_and_observe", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            let a = detector.assess(Some(&principals[i]), Some(sources[i]));
            let events =
                detector.observe(Some(&principals[i]), Some(sources[i]), Observed::Allowed);
            (a, events)
        })
    });
    // At the default `max_tracked`: 100,000 principals and 100,000 sources
    // tracked, none forgotten (all seen just now). The scrape-time count:
    let full = Detector::new(
        &AnomalyConfig::default(),
        std::sync::Arc::new(portcullis::time::SystemClock),
    );
    for n in 0..100_000u32 {
        let source = std::net::IpAddr::from(n.to_be_bytes());
        full.observe(
            Some(&format!("User::\"u{n}\"")),
            Some(source),
            Observed::Allowed,
        );
    }
    g.bench_function("anomaly_tracked_100k", |b| b.iter(|| full.tracked()));
    // The sweep the server runs every `sweep_period` on a blocking thread.
    g.bench_function("anomaly_settle_100k", |b| b.iter(|| full.settle()));
    let d = portcullis::decision::Decision::new("v1").allow();
    g.bench_function("metrics_decision", |b| {
        b.iter(|| {
            portcullis::metrics::global().decision(
                portcullis::metrics::Service::ExtAuthz,
                &d,
                std::time::Duration::from_micros(60),
            )
        })
    });
    g.finish();
}

/// The body stage alone, on the bundled predict route: depth scan and
/// duplicate-refusing parse, JSON Schema, the model version's input rules
/// and the PII scan (pii: deny), for a small and a 4 KB text body.
fn validation(c: &mut Criterion) {
    use portcullis::validate::{check_body, models::Lookup, ModelInput};
    let s = Snapshot::load(&root().join("policies")).expect("bundled policies load");
    let route = s
        .routes
        .routes()
        .iter()
        .find(|r| r.name == "predict")
        .unwrap();
    let spec = route.body.as_ref().unwrap();
    let schema = s.schemas.get("predict.json").map(|v| &**v);
    let Lookup::Found { entry, .. } = s.models.lookup("sentiment", "v2", 0) else {
        panic!("sentiment/v2 is registered")
    };
    let mut g = c.benchmark_group("validate");
    for (name, text) in [
        ("predict_small", "the parcel arrived early".to_string()),
        ("predict_4kb", "the parcel arrived early and ".repeat(137)),
    ] {
        let req = AccessRequest::for_test("POST", "/v1/models/sentiment/versions/v2:predict")
            .with_json(&serde_json::json!({"features": [text], "max_tokens": 64}));
        g.bench_function(name, |b| {
            b.iter(|| {
                let input = ModelInput {
                    label: "sentiment/v2",
                    version: entry,
                };
                check_body(&req, spec, schema, Some(input)).unwrap()
            })
        });
    }
    g.finish();
}

/// A JSON body's checks (`validate::json::parse`: depth, number lengths and
/// ranges, then serde_json) on 64 KiB of numbers against 64 KiB of
/// strings, the baseline: a body of many numbers once took 240 times as
/// long as one of strings (a line count per number).
fn json_body(c: &mut Criterion) {
    let mut g = c.benchmark_group("json_body_64k");
    for (name, item) in [("strings", "\"a\","), ("numbers", "1,")] {
        let body = format!("[{}0]", item.repeat(65_536 / item.len()));
        g.bench_function(name, |b| {
            b.iter(|| portcullis::validate::json::parse(body.as_bytes(), 8).unwrap())
        });
    }
    g.finish();
}

/// A `CheckRequest` as Envoy's ext_authz filter sends one for a predict
/// call (`with_request_body`, `pack_as_bytes`): both peers' addresses,
/// the time, the request id, protocol and scheme, 14 request headers
/// (pseudo-headers included) and the JSON body. Decoded into the request
/// (`check_decode::decode`, what `Check` does) against prost's decode of
/// the whole message, the baseline: what the generated server, the
/// benchmark's empty handler, and Portcullis before its own decoder did
/// (before turning it into a request).
fn check_request_decode(c: &mut Criterion) {
    use envoy_types::pb::envoy::config::core::v3::{address, Address, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use prost::Message as _;
    let peer = |ip: &str, port: u32| {
        Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(
                    envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(port),
                ),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
    };
    let body =
        br#"{"features": ["the delivery was quick and the support friendly"], "max_tokens": 64}"#;
    let headers = [
        (":authority", "api.example.com"),
        (":method", "POST"),
        (":path", "/v1/models/sentiment/versions/v2:predict"),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("authorization", "Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6InRlc3QtZWMifQ.eyJpc3MiOiJodHRwczovL2lkcC50ZXN0LnBvcnRjdWxsaXMvIiwic3ViIjoiYWxpY2UiLCJhdWQiOiJwb3J0Y3VsbGlzIiwiZXhwIjo0MTAyNDQ0ODAwfQ.c2lnbmF0dXJlLWJ5dGVzLWZvci10aGUtYmVuY2htYXJrLW9ubHk"),
        ("content-length", "86"),
        ("content-type", "application/json"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("user-agent", "python-requests/2.32.3"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "5b0b2a3e-8e0c-4f3c-9a55-1f6f2d6c1e11"),
    ];
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("203.0.113.7", 52_144)),
            destination: Some(peer("10.0.0.12", 8080)),
            request: Some(Request {
                time: Some(envoy_types::pb::google::protobuf::Timestamp {
                    seconds: 1_796_000_000,
                    nanos: 123_000_000,
                }),
                http: Some(HttpRequest {
                    id: "14121402215093727330".into(),
                    method: "POST".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    path: "/v1/models/sentiment/versions/v2:predict".into(),
                    host: "api.example.com".into(),
                    scheme: "https".into(),
                    size: body.len() as i64,
                    protocol: "HTTP/1.1".into(),
                    raw_body: body.to_vec(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    };
    let bytes = check.encode_to_vec();
    let mut g = c.benchmark_group("check_request_decode");
    g.bench_function("prost_check_request", |b| {
        b.iter(|| CheckRequest::decode(bytes.as_slice()).unwrap())
    });
    g.bench_function("access_request", |b| {
        b.iter(|| portcullis::adapters::check_decode::decode(&bytes).unwrap())
    });
    g.finish();
}

criterion_group!(
    benches,
    pipeline,
    policy_scaling,
    jwt,
    observability,
    validation,
    json_body,
    check_request_decode
);
criterion_main!(benches);
