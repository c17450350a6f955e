//! The gRPC server in process on 127.0.0.1:0, called with tonic clients:
//! ext_authz Check, health, the admin API, hot reload and shutdown.

use std::path::{Path, PathBuf};

use crate::support;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use portcullis::config::Config;
use portcullis::proto::policy_service_client::PolicyServiceClient;
use portcullis::proto::GetVersionRequest;
use portcullis::server::{self, Running};

fn bundled() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        support::copy_policy_entry(&entry.path(), to);
    }
}

async fn start(policies: &Path) -> Running {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        policies: policies.to_path_buf(),
        reload: portcullis::config::ReloadConfig {
            watch: true,
            debounce_ms: 100,
            poll_seconds: 0,
        },
        // Each server its own audit trail (a directory takes one writer).
        audit: portcullis::config::AuditConfig {
            directory: tempfile::tempdir().unwrap().keep(),
            ..Default::default()
        },
        ..Config::default()
    };
    server::start(&config).await.expect("server starts")
}

fn check_request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "api.test".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn check(
    client: &mut AuthorizationClient<tonic::transport::Channel>,
    req: CheckRequest,
) -> CheckResponse {
    client
        .check(req)
        .await
        .expect("Check succeeds")
        .into_inner()
}

fn http_status(resp: &CheckResponse) -> u16 {
    match &resp.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().unwrap().code as u16,
        other => panic!("unexpected http_response {other:?}"),
    }
}

#[tokio::test]
async fn check_allows_and_denies_over_grpc() {
    let running = start(&bundled()).await;
    let mut client = AuthorizationClient::connect(format!("http://{}", running.decision_addr))
        .await
        .unwrap();

    let ok = check(&mut client, check_request("GET", "/v1/status", &[])).await;
    assert_eq!(ok.status.as_ref().unwrap().code, 0);
    assert_eq!(http_status(&ok), 200);

    let not_found = check(&mut client, check_request("GET", "/nope", &[])).await;
    assert_eq!(http_status(&not_found), 404);
    let Some(HttpResponse::DeniedResponse(denied)) = &not_found.http_response else {
        unreachable!()
    };
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(body["status"], 404);
    assert!(body["decision_id"].as_str().is_some_and(|s| !s.is_empty()));

    let unauthenticated = check(
        &mut client,
        check_request("POST", "/v1/models/sentiment/versions/v2:predict", &[]),
    )
    .await;
    assert_eq!(http_status(&unauthenticated), 401);
    assert_eq!(unauthenticated.status.unwrap().code, 16);

    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_check_request_is_a_grpc_error_never_an_allow() {
    let running = start(&bundled()).await;
    let mut client = AuthorizationClient::connect(format!("http://{}", running.decision_addr))
        .await
        .unwrap();
    let err = client.check(CheckRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("no attributes"), "{}", err.message());
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_reports_serving_on_both_listeners() {
    let running = start(&bundled()).await;
    for addr in [running.decision_addr, running.admin_addr] {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    running.shutdown().await.unwrap();
}

async fn version(
    admin: &mut PolicyServiceClient<tonic::transport::Channel>,
) -> portcullis::proto::GetVersionResponse {
    admin
        .get_version(GetVersionRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Polls `f` until it returns true, for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn hot_reload_applies_valid_changes_and_keeps_last_good_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&bundled(), dir.path());
    let running = start(dir.path()).await;
    let mut client = AuthorizationClient::connect(format!("http://{}", running.decision_addr))
        .await
        .unwrap();
    let mut admin = PolicyServiceClient::connect(format!("http://{}", running.admin_addr))
        .await
        .unwrap();
    let v0 = version(&mut admin).await;
    assert!(v0.version.starts_with("sha256:"), "{}", v0.version);
    assert_eq!(v0.policy_count, 14);

    // Edit: remove the public status permit; the decision changes within 2 s.
    let platform = dir.path().join("platform.cedar");
    let original = std::fs::read_to_string(&platform).unwrap();
    let edited = original.replace(
        "@id(\"public-status\")\npermit",
        "@id(\"public-status\")\nforbid",
    );
    assert_ne!(original, edited);
    std::fs::write(&platform, &edited).unwrap();
    let changed = eventually(Duration::from_secs(2), || {
        let mut client = client.clone();
        async move {
            http_status(&check(&mut client, check_request("GET", "/v1/status", &[])).await) == 403
        }
    })
    .await;
    assert!(changed, "the edited policy did not take effect within 2 s");
    let v1 = version(&mut admin).await;
    assert_ne!(v1.version, v0.version);
    assert_eq!(v1.reloads, 1);

    // Break it: the old decision stays, the rejection is recorded with file:line.
    std::fs::write(
        &platform,
        format!(
            "{edited}\n@id(\"broken\")\npermit (principal, action, resource) when {{ 1 + }};\n"
        ),
    )
    .unwrap();
    let rejected = eventually(Duration::from_secs(3), || {
        let mut admin = admin.clone();
        async move { version(&mut admin).await.rejected_reloads >= 1 }
    })
    .await;
    assert!(rejected, "the broken policy was not rejected within 3 s");
    let v2 = version(&mut admin).await;
    assert_eq!(
        v2.version, v1.version,
        "the last good snapshot keeps serving"
    );
    assert!(
        v2.last_reload_errors
            .iter()
            .any(|e| e.starts_with("platform.cedar:")),
        "{:?}",
        v2.last_reload_errors
    );
    assert_eq!(
        http_status(&check(&mut client, check_request("GET", "/v1/status", &[])).await),
        403
    );

    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_policy_directory_refuses_to_start_listing_every_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&bundled(), dir.path());
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit (principal, action, resource) when { x };\n",
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("routes.yaml")).unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        policies: dir.path().to_path_buf(),
        ..Config::default()
    };
    let err = server::start(&config).await.unwrap_err().to_string();
    assert!(err.contains("bad.cedar:1"), "{err}");
    assert!(err.contains("routes.yaml"), "{err}");
}

#[tokio::test]
async fn polling_follows_a_symlink_swap_that_file_watching_misses() {
    // git-sync and ConfigMap volumes publish a new version by swapping a
    // symlink; the directory the watcher watches never changes.
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("rev-a"), root.path().join("rev-b"));
    copy_dir(&bundled(), &a);
    copy_dir(&bundled(), &b);
    let platform = b.join("platform.cedar");
    let text = std::fs::read_to_string(&platform).unwrap();
    std::fs::write(
        &platform,
        text.replace(
            "@id(\"public-status\")\npermit",
            "@id(\"public-status\")\nforbid",
        ),
    )
    .unwrap();
    let current = root.path().join("current");
    std::os::unix::fs::symlink(&a, &current).unwrap();

    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        policies: current.clone(),
        reload: portcullis::config::ReloadConfig {
            watch: false,
            debounce_ms: 100,
            poll_seconds: 1,
        },
        audit: portcullis::config::AuditConfig {
            directory: tempfile::tempdir().unwrap().keep(),
            ..Default::default()
        },
        ..Config::default()
    };
    let running = server::start(&config).await.unwrap();
    let mut client = AuthorizationClient::connect(format!("http://{}", running.decision_addr))
        .await
        .unwrap();
    assert_eq!(
        http_status(&check(&mut client, check_request("GET", "/v1/status", &[])).await),
        200
    );

    // Atomic swap: a new link renamed over the old one.
    let next = root.path().join("current.next");
    std::os::unix::fs::symlink(&b, &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    let swapped = eventually(Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            http_status(&check(&mut client, check_request("GET", "/v1/status", &[])).await) == 403
        }
    })
    .await;
    assert!(swapped, "the swapped-in version did not serve within 5 s");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_context_claim_the_schema_does_not_declare_stops_startup_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&bundled(), dir.path());
    let config = |claims: &str| {
        Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        policies: dir.path().to_path_buf(),
        reload: portcullis::config::ReloadConfig {
            watch: false,
            ..Default::default()
        },
        authentication: portcullis::config::AuthnConfig {
            jwt: vec![serde_yaml_ng::from_str(&format!(
                "issuer: https://idp.example/\naudiences: [portcullis]\njwks_file: {}\ncontext_claims: {claims}\n",
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/keys/test-issuer.jwks.json")
                    .display()
            ))
            .unwrap()],
            ..Default::default()
        },
        audit: portcullis::config::AuditConfig {
            directory: tempfile::tempdir().unwrap().keep(),
            ..Default::default()
        },
        ..Config::default()
    }
    };

    // `team` is not in the bundled schema's token.claims record.
    let err = server::start(&config("[tier, team]"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("schema.cedarschema: authentication.jwt[0].context_claims: claim 'team'"),
        "{err}"
    );
    assert!(err.contains(r#"declare `"team"?: String`"#), "{err}");
    assert!(!err.contains("claim 'tier'"), "{err}");

    // Declared: it starts. A reload whose schema drops the claim is
    // rejected and the last good snapshot keeps serving.
    let running = server::start(&config("[tier]")).await.expect("starts");
    let before = running.state.policies.current().version.clone();
    let schema = dir.path().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap();
    let dropped = text.replace(r#""tier"?: String,"#, "");
    assert_ne!(text, dropped);
    std::fs::write(&schema, dropped).unwrap();
    let policies = std::sync::Arc::clone(&running.state.policies);
    let err = tokio::task::spawn_blocking(move || policies.reload())
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("claim 'tier'"), "{err}");
    assert_eq!(running.state.policies.current().version, before);
    running.shutdown().await.unwrap();
}
