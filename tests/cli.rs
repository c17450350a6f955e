//! The `portcullis` binary's commands: `policy validate`, `check`, config
//! errors, and hot reload as an operator sees it (the logs).

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{policies_dir, Portcullis};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("run portcullis")
}

fn copy_policies(to: &Path) {
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn validate_accepts_the_bundled_policies() {
    let out = portcullis(&["policy", "validate", policies_dir().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ok (9 policies, 5 routes"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn validate_names_file_and_line_of_a_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    std::fs::write(
        dir.path().join("extra.cedar"),
        "// a comment\n@id(\"broken\")\npermit (principal, action, resource)\nwhen { context.method == };\n",
    )
    .unwrap();
    let out = portcullis(&["policy", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("extra.cedar:4:"), "{err}");
}

#[test]
fn validate_names_file_and_line_of_a_schema_violation() {
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    std::fs::write(
        dir.path().join("extra.cedar"),
        "\n\n@id(\"typo\")\npermit (principal, action == Action::\"invoke\", resource is ModelVersion)\nwhen { resource.deprecatd == false };\n",
    )
    .unwrap();
    let out = portcullis(&["policy", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("extra.cedar:3:"), "{err}");
    assert!(err.contains("typo") && err.contains("deprecatd"), "{err}");
}

#[test]
fn validate_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    std::fs::write(
        dir.path().join("a.cedar"),
        "permit (principal, action, resource);\n",
    )
    .unwrap();
    let routes = std::fs::read_to_string(dir.path().join("routes.yaml")).unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes.replace("action: readAudit", "action: readAudits"),
    )
    .unwrap();
    std::fs::write(dir.path().join("entities.json"), "[ { \"uid\": ").unwrap();
    let out = portcullis(&["policy", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("a.cedar:1: policy has no @id"), "{err}");
    assert!(
        err.contains("routes.yaml:") && err.contains("readAudits"),
        "{err}"
    );
    assert!(err.contains("entities.json:1:"), "{err}");
    assert!(err.contains("3 problem(s)"), "{err}");
}

#[test]
fn check_prints_the_decision_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("req.json");
    std::fs::write(
        &request,
        r#"{"method": "POST", "path": "/v1/models/sentiment/versions/v1:predict",
            "identity": {"principal": "User::\"alice\"", "parents": ["Org::\"acme\""]}}"#,
    )
    .unwrap();
    let out = portcullis(&[
        "check",
        "--request",
        request.to_str().unwrap(),
        "--policies",
        policies_dir().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["status"], 403);
    assert_eq!(d["principal"], r#"User::"alice""#);
    assert_eq!(d["action"], r#"Action::"invoke""#);
    assert_eq!(d["resource"], r#"ModelVersion::"sentiment/v1""#);
    assert_eq!(d["determining_policies"][0], "no-deprecated-versions");
    assert!(d["policy_version"].as_str().is_some_and(|v| !v.is_empty()));
}

#[test]
fn check_verifies_tokens_with_the_configured_issuers() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(dir.path());
    let token = support::mint(support::claims("alice", "acme"), support::Key::Es256);
    let request = dir.path().join("req.json");
    std::fs::write(
        &request,
        serde_json::json!({"method": "POST", "path": "/v1/models/sentiment/versions/v2:predict",
                           "headers": {"Authorization": format!("Bearer {token}")}})
        .to_string(),
    )
    .unwrap();
    let out = portcullis(&[
        "check",
        "--request",
        request.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(d["auth_method"], "jwt");
}

#[test]
fn check_rejects_a_malformed_request_file_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("req.json");
    std::fs::write(&request, "{\"method\": \"GET\",\n \"pth\": \"/\"}").unwrap();
    let out = portcullis(&["check", "--request", request.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("req.json") && err.contains("pth") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn serve_refuses_a_bad_config_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        "server:\n  max_concurrent_streams: 0\nlog:\n  format: xml\n",
    )
    .unwrap();
    let out = portcullis(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("c.yaml") && err.contains("format") && err.contains("line 4"),
        "{err}"
    );
}

#[test]
fn serve_refuses_an_invalid_policy_directory_listing_errors() {
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    std::fs::write(
        dir.path().join("x.cedar"),
        "@id(\"x\")\nforbid (principal, action, resource) when { ;\n",
    )
    .unwrap();
    let out = portcullis(&[
        "serve",
        "--policies",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("x.cedar:2"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn rejected_reload_is_logged_with_file_and_line_and_old_snapshot_serves() {
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    let mut pdp = Portcullis::start(&["--policies", dir.path().to_str().unwrap()]);
    let _ = pdp.listener("admin");
    std::fs::write(
        dir.path().join("broken.cedar"),
        "@id(\"broken\")\npermit (principal, action, resource) when { 1 + };\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !pdp.stderr().contains("policy reload rejected") {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = pdp.stderr();
    assert!(log.contains("policy reload rejected"), "{log}");
    assert!(
        log.contains("rejected policy change") && log.contains("broken.cedar"),
        "{log}"
    );
    // Still serving, and cleanly stoppable.
    let status = pdp.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}
