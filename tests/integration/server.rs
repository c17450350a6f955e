//! The gRPC server in process on 127.0.0.1:0, called with tonic clients:
//! ext_authz Check, health, the admin API, hot reload and shutdown.

use std::path::Path;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use portcullis::config::Config;
use portcullis::policy::reload::ReloadConfig;
use portcullis::proto::policy_service_client::PolicyServiceClient;
use portcullis::proto::GetVersionRequest;

use crate::support::{
    self, copy_bundled_policies, http_status, policies_dir, Check, TestServer, PREDICT,
};

/// A server in process on `policies`, watching them for changes.
async fn start(policies: &Path) -> TestServer {
    TestServer::start(Config {
        reload: ReloadConfig {
            watch: true,
            debounce_ms: 100,
            poll_seconds: 0,
        },
        ..support::in_process_config(policies)
    })
    .await
}

fn status_check() -> CheckRequest {
    Check::get("/v1/status").build()
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

#[tokio::test]
async fn check_allows_and_denies_over_grpc() {
    let running = start(&policies_dir()).await;
    let mut client = AuthorizationClient::connect(format!("http://{}", running.decision_addr))
        .await
        .unwrap();

    let ok = check(&mut client, status_check()).await;
    assert_eq!(ok.status.as_ref().unwrap().code, 0);
    assert_eq!(http_status(&ok), 200);

    let not_found = check(&mut client, Check::get("/nope").build()).await;
    assert_eq!(http_status(&not_found), 404);
    let Some(HttpResponse::DeniedResponse(denied)) = &not_found.http_response else {
        unreachable!()
    };
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(body["status"], 404);
    assert!(body["decision_id"].as_str().is_some_and(|s| !s.is_empty()));

    let unauthenticated = check(&mut client, Check::post(PREDICT).build()).await;
    assert_eq!(http_status(&unauthenticated), 401);
    assert_eq!(unauthenticated.status.unwrap().code, 16);

    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_check_request_is_a_grpc_error_never_an_allow() {
    let running = start(&policies_dir()).await;
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
    let running = start(&policies_dir()).await;
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
    copy_bundled_policies(dir.path());
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
        async move { http_status(&check(&mut client, status_check()).await) == 403 }
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
    assert_eq!(http_status(&check(&mut client, status_check()).await), 403);

    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_policy_directory_refuses_to_start_listing_every_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundled_policies(dir.path());
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit (principal, action, resource) when { x };\n",
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("routes.yaml")).unwrap();
    let err = TestServer::try_start(support::in_process_config(dir.path()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.cedar:1"), "{err}");
    assert!(err.contains("routes.yaml"), "{err}");
}

#[tokio::test]
async fn polling_follows_a_symlink_swap_that_file_watching_misses() {
    // git-sync and ConfigMap volumes publish a new version by swapping a
    // symlink; the directory the watcher watches never changes.
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("rev-a"), root.path().join("rev-b"));
    copy_bundled_policies(&a);
    copy_bundled_policies(&b);
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

    let running = TestServer::start(Config {
        reload: ReloadConfig {
            watch: false,
            debounce_ms: 100,
            poll_seconds: 1,
        },
        ..support::in_process_config(&current)
    })
    .await;
    let mut client = AuthorizationClient::connect(format!("http://{}", running.decision_addr))
        .await
        .unwrap();
    assert_eq!(http_status(&check(&mut client, status_check()).await), 200);

    // Atomic swap: a new link renamed over the old one.
    let next = root.path().join("current.next");
    std::os::unix::fs::symlink(&b, &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    let swapped = eventually(Duration::from_secs(5), || {
        let mut client = client.clone();
        async move { http_status(&check(&mut client, status_check()).await) == 403 }
    })
    .await;
    assert!(swapped, "the swapped-in version did not serve within 5 s");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_context_claim_the_schema_does_not_declare_stops_startup_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundled_policies(dir.path());
    let config = |claims: &str| {
        Config {
        reload: ReloadConfig {
            watch: false,
            ..Default::default()
        },
        authentication: portcullis::authn::config::AuthnConfig {
            jwt: vec![serde_yaml_ng::from_str(&format!(
                "issuer: https://idp.example/\naudiences: [portcullis]\njwks_file: {}\ncontext_claims: {claims}\n",
                support::fixture("keys/test-issuer.jwks.json").display()
            ))
            .unwrap()],
            ..Default::default()
        },
        ..support::in_process_config(dir.path())
    }
    };

    // `team` is not in the bundled schema's token.claims record.
    let err = TestServer::try_start(config("[tier, team]"))
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
    let running = TestServer::start(config("[tier]")).await;
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

/// Every task the server spawns has an owner: started and stopped five
/// times (watching the policies, polling them, serving a Check and an admin
/// call each time), it leaves no task running and every port free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_and_stopping_leaves_no_task_or_port_behind() {
    let runtime = tokio::runtime::Handle::current().metrics();
    let before = runtime.num_alive_tasks();
    for round in 0..5 {
        let server = TestServer::start(Config {
            reload: ReloadConfig {
                watch: true,
                debounce_ms: 100,
                poll_seconds: 1,
            },
            ..support::in_process_config(&policies_dir())
        })
        .await;
        let tracker = server.task_tracker();
        assert!(!tracker.is_empty(), "round {round}: nothing was tracked");
        let addrs = [server.decision_addr, server.admin_addr, server.http_addr];
        let mut client = AuthorizationClient::connect(format!("http://{}", server.decision_addr))
            .await
            .unwrap();
        assert_eq!(http_status(&check(&mut client, status_check()).await), 200);
        let mut admin = PolicyServiceClient::connect(format!("http://{}", server.admin_addr))
            .await
            .unwrap();
        admin.get_version(GetVersionRequest {}).await.unwrap();
        drop((client, admin));
        server.shutdown().await.unwrap();
        assert!(
            tracker.is_empty(),
            "round {round}: {} tasks still running after shutdown",
            tracker.len()
        );
        for addr in addrs {
            std::net::TcpListener::bind(addr)
                .unwrap_or_else(|e| panic!("round {round}: {addr} still bound: {e}"));
        }
    }
    // Connection tasks end as their clients hang up; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while runtime.num_alive_tasks() > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        runtime.num_alive_tasks(),
        before,
        "tasks left on the runtime after five starts and stops"
    );
}
