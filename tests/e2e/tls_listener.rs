//! The decision listener over mutual TLS: it refuses plaintext clients,
//! clients without a certificate and clients whose certificate comes from
//! another CA; it picks up a new client CA without a restart; and end to
//! end, the real Envoy with `deploy/envoy-mtls.yaml` calls Portcullis with
//! its client certificate and requests flow.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    self, claims, mint, tool, Envoy, HttpRequest, Key, Portcullis, TestPki, TestServer, Upstream,
};

fn tls_yaml(pki: &TestPki, client_ca: &Path) -> String {
    format!(
        r#"
tls:
  cert_file: "{cert}"
  key_file: "{key}"
  client_ca_file: "{ca}"
  reload_interval_ms: 100
"#,
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
        ca = client_ca.display(),
    )
}

/// `grpcurl` health check against `addr` with the given TLS flags; Ok with
/// the output when it answered SERVING, Err with grpcurl's output if not.
fn health(addr: std::net::SocketAddr, flags: &[&str]) -> Result<String, String> {
    let out = Command::new(tool("grpcurl"))
        .args(["-max-time", "2"])
        .args(flags)
        .arg(addr.to_string())
        .arg("grpc.health.v1.Health/Check")
        .output()
        .expect("run grpcurl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains("SERVING") {
        Ok(text)
    } else {
        Err(text)
    }
}

fn client_flags<'a>(pki: &'a TestPki, cert: &'a Path, key: &'a Path) -> Vec<&'a str> {
    vec![
        "-cacert",
        pki.ca.to_str().unwrap(),
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
        "-servername",
        "localhost",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_listener_admits_only_clients_of_the_configured_ca() {
    let pki = TestPki::generate();
    let client_ca = pki.dir.path().join("client-ca.pem");
    std::fs::copy(&pki.ca, &client_ca).unwrap();
    let yaml = format!("{}{}", support::server_yaml(), tls_yaml(&pki, &client_ca));
    let running = TestServer::start(support::parse_config(&yaml, "tls.yaml")).await;
    let addr = running.decision_addr;

    let good = client_flags(&pki, &pki.client_cert, &pki.client_key);
    let other = client_flags(&pki, &pki.other_client_cert, &pki.other_client_key);
    let run = |flags: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            health(addr, &flags)
        })
    };
    let owned = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    run(owned(&good))
        .await
        .unwrap()
        .expect("the gateway's certificate is accepted");
    let plaintext = run(owned(&["-plaintext"])).await.unwrap();
    assert!(
        plaintext.is_err(),
        "plaintext must be refused: {plaintext:?}"
    );
    let no_cert = run(owned(&[
        "-cacert",
        pki.ca.to_str().unwrap(),
        "-servername",
        "localhost",
    ]))
    .await
    .unwrap();
    assert!(
        no_cert.is_err(),
        "a client without a certificate must be refused"
    );
    let wrong_ca = run(owned(&other)).await.unwrap();
    assert!(
        wrong_ca.is_err(),
        "a certificate from another CA must be refused"
    );

    // Rotate the trusted client CA on disk: the other CA's client gets in,
    // the old one no longer does, without a restart.
    std::fs::copy(&pki.other_ca, &client_ca).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while run(owned(&other)).await.unwrap().is_err() {
        assert!(Instant::now() < deadline, "new client CA not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(run(owned(&good)).await.unwrap().is_err());
    running.shutdown().await.unwrap();
}

#[test]
fn envoy_calls_portcullis_over_mtls_end_to_end() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    // The usual test config (fixture issuer, bundled policies) plus TLS.
    let config = support::write_config_with(dir.path(), &tls_yaml(&pki, &pki.ca));

    let upstream = Upstream::start();
    let pdp = Portcullis::start(&["--config", config.to_str().unwrap()]);
    let template = std::fs::read_to_string(support::repo().join("deploy/envoy-mtls.yaml"))
        .unwrap()
        .replace(
            "/etc/portcullis/tls/envoy.pem",
            pki.client_cert.to_str().unwrap(),
        )
        .replace(
            "/etc/portcullis/tls/envoy.key",
            pki.client_key.to_str().unwrap(),
        )
        .replace("/etc/portcullis/tls/ca.pem", pki.ca.to_str().unwrap());
    let envoy = Envoy::start_with(&template, pdp.addr(), upstream.addr());

    let token = mint(claims("alice", "acme"), Key::Es256);
    let response = HttpRequest::post("/v1/models/sentiment/versions/v2:predict")
        .bearer(&token)
        .json(&serde_json::json!({"features": ["hello"]}))
        .send(envoy.addr());
    assert_eq!(
        response.status,
        200,
        "{} {}\nenvoy log:\n{}\nportcullis stderr:\n{}",
        response.status,
        response.text(),
        envoy.log(),
        pdp.stderr()
    );
    assert_eq!(upstream.hits(), 1);
    // A decision really came from Portcullis: no token, a 401 with its
    // problem document.
    let response = HttpRequest::post("/v1/models/sentiment/versions/v2:predict")
        .json(&serde_json::json!({"features": ["hello"]}))
        .send(envoy.addr());
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(upstream.hits(), 1);

    // And a plaintext caller cannot reach the same listener.
    let out = Command::new(tool("grpcurl"))
        .args(["-plaintext", "-max-time", "2"])
        .arg(pdp.addr().to_string())
        .arg("grpc.health.v1.Health/Check")
        .output()
        .unwrap();
    assert!(!out.status.success());
}
