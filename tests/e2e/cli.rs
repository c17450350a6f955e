//! The `portcullis` binary's commands: `policy validate`, `check`, config
//! errors, and hot reload as an operator sees it (the logs).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{self, policies_dir, write_config_with, PolicyDir, Portcullis};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("run portcullis")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn validate_accepts_the_bundled_policies() {
    let out = portcullis(&["policy", "validate", policies_dir().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ok (14 policies, 6 routes"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn validate_names_file_and_line_of_a_syntax_error() {
    let dir = PolicyDir::bundled();
    dir.write(
        "extra.cedar",
        "// a comment\n@id(\"broken\")\npermit (principal, action, resource)\nwhen { context.method == };\n",
    );
    let out = portcullis(&["policy", "validate", dir.arg()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("extra.cedar:4:"), "{err}");
}

#[test]
fn validate_names_file_and_line_of_a_schema_violation() {
    let dir = PolicyDir::bundled();
    dir.write(
        "extra.cedar",
        "\n\n@id(\"typo\")\npermit (principal, action == Action::\"invoke\", resource is ModelVersion)\nwhen { resource.deprecatd == false };\n",
    );
    let out = portcullis(&["policy", "validate", dir.arg()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("extra.cedar:3:"), "{err}");
    assert!(err.contains("typo") && err.contains("deprecatd"), "{err}");
}

#[test]
fn validate_with_a_config_checks_its_context_claims_against_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let config = |claims: &str| {
        let path = dir.path().join(format!("c{}.yaml", claims.len()));
        std::fs::write(
            &path,
            format!(
                "authentication:\n  jwt:\n    - issuer: https://idp.example/\n      audiences: [portcullis]\n      jwks_file: {}\n      context_claims: {claims}\n",
                support::fixture("keys/test-issuer.jwks.json").display()
            ),
        )
        .unwrap();
        path
    };
    let policies = policies_dir();
    let run = |config: &Path| {
        portcullis(&[
            "policy",
            "validate",
            policies.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
    };
    let out = run(&config("[tier]"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(&config("[tier, team]"));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("schema.cedarschema: authentication.jwt[0].context_claims: claim 'team'"),
        "{err}"
    );
}

#[test]
fn validate_reports_every_problem_at_once() {
    let dir = PolicyDir::bundled();
    dir.write("a.cedar", "permit (principal, action, resource);\n");
    let routes = dir.read("routes.yaml");
    dir.write(
        "routes.yaml",
        &routes.replace("action: readAudit", "action: readAudits"),
    );
    dir.write("entities.json", "[ { \"uid\": ");
    let out = portcullis(&["policy", "validate", dir.arg()]);
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
        r#"{"method": "POST", "path": "/v1/models/fraud-detector/versions/v3:predict",
            "identity": {"principal": "User::\"alice\"", "parents": ["Org::\"acme\""], "mfa": true},
            "body": {"features": [120.5, 5411, "DE", 14]}}"#,
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
    assert_eq!(d["resource"], r#"ModelVersion::"fraud-detector/v3""#);
    assert_eq!(
        d["determining_policies"][0],
        "restricted-models-need-privileged-role"
    );
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
                           "headers": {"Authorization": format!("Bearer {token}")},
                           "body": {"features": ["great service"]}})
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
fn a_relative_signature_secret_file_is_read_next_to_the_config_from_another_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.key"), "k".repeat(32)).unwrap();
    let config = dir.path().join("portcullis.yaml");
    std::fs::write(
        &config,
        format!(
            "{}authentication:\n  signatures:\n    apps: [{{app: batch-scorer, secret_file: app.key}}]\n",
            support::server_yaml()
        ),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(elsewhere.path())
        .args([
            "check",
            "--request",
            &request_file(dir.path(), "/v1/models"),
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .expect("run portcullis");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(d["decision"].is_string(), "{d}");
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
    let dir = PolicyDir::bundled();
    dir.write(
        "x.cedar",
        "@id(\"x\")\nforbid (principal, action, resource) when { ;\n",
    );
    let out = portcullis(&[
        "serve",
        "--policies",
        dir.arg(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--http-listen",
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
    let dir = PolicyDir::bundled();
    let mut pdp = Portcullis::start(&["--policies", dir.arg()]);
    let _ = pdp.listener("admin");
    dir.write(
        "broken.cedar",
        "@id(\"broken\")\npermit (principal, action, resource) when { 1 + };\n",
    );
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

#[test]
fn policy_test_passes_on_the_bundled_policies_and_covers_every_policy() {
    let out = portcullis(&[
        "policy",
        "test",
        policies_dir().to_str().unwrap(),
        "--require-coverage",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(" 0 failed; 14 of 14 policies covered"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn policy_test_fails_when_a_policy_change_breaks_a_case() {
    let dir = PolicyDir::bundled().with_policy_tests();
    // Drop the privileged-role forbid: the case that pins it must fail.
    let models = dir.path().join("models.cedar");
    std::fs::write(&models, without_privileged_role_forbid(&models)).unwrap();

    let out = portcullis(&["policy", "test", dir.arg()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let case_line = dir
        .read("tests/models.yaml")
        .lines()
        .position(|l| l.contains("a restricted model needs the privileged role, even with MFA"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("tests/models.yaml:{case_line}: case 'a restricted model needs the privileged role, even with MFA': expected deny 403, got allow 200")),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("1 failed"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn policy_test_reports_a_malformed_case_file_with_its_line() {
    let dir = PolicyDir::bundled();
    dir.write(
        "tests/bad.yaml",
        "cases:\n  - name: x\n    request: { method: GET, path: / }\n    expect: { decision: maybe }\n",
    );
    let out = portcullis(&["policy", "test", dir.arg()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("tests/bad.yaml:4:") && err.contains("maybe"),
        "{err}"
    );
}

/// A git repository with the bundled policies (and their tests) committed
/// under `policies/`, as the first commit; returns (repo dir, commit id).
fn policy_repo() -> (tempfile::TempDir, String) {
    let repo = tempfile::tempdir().unwrap();
    let policies = repo.path().join("policies");
    support::copy_bundled_policies(&policies);
    support::copy_bundled_policy_tests(&policies);
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "v1"]);
    let head = git(repo.path(), &["rev-parse", "HEAD"]);
    (repo, head)
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git is installed");
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// models.cedar without the forbid that restricted models need the
/// privileged role.
fn without_privileged_role_forbid(models: &Path) -> String {
    let source = std::fs::read_to_string(models).unwrap();
    let start = source
        .find("// Restricted models need the privileged role on top of invoker.")
        .unwrap();
    let end = start
        + source[start..]
            .find("// Restricted models also need step-up")
            .unwrap();
    format!("{}{}", &source[..start], &source[end..])
}

/// Commits a change that removes the privileged-role forbid.
fn commit_without_privileged_role_forbid(repo: &Path) -> String {
    let models = repo.join("policies/models.cedar");
    std::fs::write(&models, without_privileged_role_forbid(&models)).unwrap();
    git(
        repo,
        &[
            "commit",
            "-q",
            "-am",
            "v2: restricted models without the privileged role",
        ],
    );
    git(repo, &["rev-parse", "HEAD"])
}

#[test]
fn policy_diff_lists_exactly_the_requests_whose_decision_changes() {
    let (repo, v1) = policy_repo();
    let v2 = commit_without_privileged_role_forbid(repo.path());
    let policies = repo.path().join("policies");
    let out = portcullis(&[
        "policy",
        "diff",
        "--from",
        &v1,
        "--to",
        &v2,
        "--policies",
        policies.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let impact: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(impact["from_version"], v1[..12]);
    assert_eq!(impact["to_version"], v2[..12]);
    let changed = impact["changed"].as_array().unwrap();
    // The privileged-role case appears once per revision's test set.
    assert!(!changed.is_empty());
    for c in changed {
        assert_eq!(
            c["summary"], "POST /v1/models/fraud-detector/versions/v3:predict as User::\"alice\"",
            "{c}"
        );
        assert_eq!(c["from"]["decision"], "deny");
        assert_eq!(c["to"]["decision"], "allow");
    }
    // Nothing else of the HTTP cases of each revision changes (both
    // revisions have the same cases).
    let cases = portcullis::adapters::offline::test::requests(&policies).len();
    assert!(cases >= 40, "{cases}");
    assert_eq!(impact["replayed"], 2 * cases);
}

#[test]
fn policy_diff_replays_a_request_file_against_the_working_tree() {
    let (repo, v1) = policy_repo();
    let policies = repo.path().join("policies");
    // Uncommitted edit in the working tree: carol loses the privileged role.
    let entities = policies.join("entities.json");
    let source = std::fs::read_to_string(&entities).unwrap();
    std::fs::write(
        &entities,
        source.replace(
            r#"{ "type": "Role", "id": "privileged" }, { "type": "Role", "id": "admin" }"#,
            r#"{ "type": "Role", "id": "admin" }"#,
        ),
    )
    .unwrap();
    let replay = repo.path().join("requests.jsonl");
    std::fs::write(
        &replay,
        concat!(
            "# recorded requests\n",
            r#"{"method":"POST","path":"/v1/models/fraud-detector/versions/v3:predict","identity":{"principal":"User::\"carol\""},"body":{"features":[120.5,5411,"DE",14]}}"#,
            "\n",
            r#"{"method":"POST","path":"/v1/models/sentiment/versions/v2:predict","identity":{"principal":"User::\"carol\"","parents":["Org::\"acme\""]},"body":{"features":["great service"]}}"#,
            "\n",
            r#"{"method":"POST","path":"/v1/models/fraud-detector/versions/v3:predict","identity":{"principal":"User::\"carol\"","parents":["Org::\"acme\""],"mfa":true},"body":{"features":[120.5,5411,"DE",14]}}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = portcullis(&[
        "policy",
        "diff",
        "--from",
        &v1,
        "--policies",
        policies.to_str().unwrap(),
        "--replay",
        replay.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let changed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("CHANGED"))
        .collect();
    assert_eq!(changed.len(), 1, "{stdout}");
    assert!(changed[0].contains("requests.jsonl:4"), "{stdout}");
    assert!(
        changed[0].contains("allow 200") && changed[0].contains("-> deny 403"),
        "{stdout}"
    );
    assert!(stdout.contains("3 request(s) replayed"), "{stdout}");
}

#[test]
fn policy_diff_names_an_unknown_revision() {
    let (repo, _) = policy_repo();
    let policies = repo.path().join("policies");
    let out = portcullis(&[
        "policy",
        "diff",
        "--from",
        "no-such-rev",
        "--policies",
        policies.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("revision 'no-such-rev' is not a commit"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_pinned_to_a_revision_decides_with_that_revision() {
    let (repo, v1) = policy_repo();
    let v2 = commit_without_privileged_role_forbid(repo.path());
    let policies = repo.path().join("policies");
    // The working tree (v2) drops the privileged-role forbid; pin v1
    // (rollback).
    let mut pdp = Portcullis::start(&[
        "--policies",
        policies.to_str().unwrap(),
        "--policy-rev",
        &v1,
    ]);
    let admin = pdp.listener("admin");
    let version = Command::new(support::tool("grpcurl"))
        .args(["-plaintext", "-max-time", "15", &admin.to_string()])
        .arg("portcullis.admin.v1.PolicyService/GetVersion")
        .output()
        .unwrap();
    let version: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    assert_eq!(version["version"], v1[..12], "{version}");
    assert_ne!(v1, v2);
    let status = pdp.terminate(Duration::from_secs(10));
    assert!(status.success());
}

#[test]
fn bench_baseline_runs_and_reports_a_ratio() {
    // A functional check of the load generator (bounded: 300 requests per
    // server), not a timing test: figures come from running it by hand.
    // On one server thread too: the servers in process need a runtime
    // that runs while the load is driven from another.
    for threads in ["2", "1"] {
        bench_baseline_on(threads);
    }
}

fn bench_baseline_on(server_threads: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis-bench"))
        .args([
            "--baseline",
            "--json",
            "--requests",
            "300",
            "--warmup",
            "0.1",
            "--concurrency",
            "8",
            "--server-threads",
            server_threads,
        ])
        .args(["--policies", policies_dir().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run portcullis-bench");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("portcullis-bench --server-threads {server_threads} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    assert_eq!(phases[0]["server"], "empty");
    assert_eq!(phases[1]["server"], "portcullis");
    for p in phases {
        assert_eq!(p["errors"], 0, "{p}");
        assert_eq!(p["requests"], 300, "{p}");
    }
    // The mix has allowed and denied requests: the real server decides.
    // 8 in 10 of the mix are allowed; scaled quotas never refuse them.
    let allowed = phases[1]["allowed"].as_u64().unwrap();
    let denied = phases[1]["denied"].as_u64().unwrap();
    assert!(denied > 0, "{report}");
    assert!(allowed > 3 * denied, "{report}");
    assert!(report["ratio_vs_empty"].as_f64().is_some_and(|r| r > 0.0));
}

#[test]
fn bench_open_loop_sends_at_the_intended_rate_and_reports_waits_and_pacer_lag() {
    // Functional, not a timing test: 200 calls a second for one second on
    // one RLS descriptor; the report carries the intended rate and the
    // count of late sends, and the achieved rate is near the intended one
    // (the schedule, not the server, sets it).
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-bench"))
        .args([
            "--json",
            "--rpc",
            "rls",
            "--rls-shape",
            "one",
            "--rate",
            "200",
        ])
        .args(["--duration", "1", "--warmup", "0.1", "--concurrency", "4"])
        .args(["--policies", policies_dir().to_str().unwrap()])
        .output()
        .expect("run portcullis-bench");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let phase = &report["phases"][0];
    assert_eq!(phase["target_rps"], 200.0, "{report}");
    assert!(phase["late"].as_u64().is_some(), "{report}");
    // The pacer's own lag is reported apart from the server's latency.
    let lag = &phase["pacing_lag_us"];
    assert!(lag["p99"].as_u64().is_some(), "{report}");
    assert!(lag["p50"].as_u64() <= lag["max"].as_u64(), "{report}");
    let requests = phase["requests"].as_u64().unwrap();
    assert!((150..=201).contains(&requests), "{report}");
    assert_eq!(phase["errors"], 0, "{report}");
}

/// `portcullis-bench --serve-empty` on a free port, and its address (from
/// its `listening on ADDR` line). Killed when dropped.
struct EmptyServer {
    child: std::process::Child,
    addr: String,
}

impl EmptyServer {
    fn start() -> Self {
        use std::io::BufRead as _;
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis-bench"))
            .args(["--serve-empty", "127.0.0.1:0", "--server-threads", "1"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run portcullis-bench --serve-empty");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the empty server said where it listens")
                .unwrap();
            if let Some((_, addr)) = line.split_once("listening on ") {
                break addr.trim().to_string();
            }
        };
        EmptyServer { child, addr }
    }
}

impl Drop for EmptyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `portcullis-bench` against `target` with `baseline` interleaved
/// (one-descriptor RLS, `args` added) and returns its JSON report.
fn interleaved_report(
    baseline: &EmptyServer,
    target: &EmptyServer,
    args: &[&str],
) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-bench"))
        .args(["--json", "--rpc", "rls", "--rls-shape", "one"])
        .args(["--target", &target.addr])
        .args(["--baseline-target", &baseline.addr])
        .args(args)
        .output()
        .expect("run portcullis-bench");
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_interleaved_slices_report_each_pair_and_their_median_as_the_ratio() {
    // Functional, not a timing test: two empty handlers, one as the
    // baseline and one as the target, 4 pairs of 0.1 s slices.
    let (baseline, target) = (EmptyServer::start(), EmptyServer::start());
    let report = interleaved_report(
        &baseline,
        &target,
        &[
            "--slices",
            "4",
            "--duration",
            "0.4",
            "--warmup",
            "0.1",
            "--concurrency",
            "4",
            "--connections",
            "2",
        ],
    );
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2, "{report}");
    assert_eq!(phases[0]["server"], "empty");
    assert_eq!(phases[1]["server"], "portcullis");
    for p in phases {
        assert_eq!(p["errors"], 0, "{p}");
        assert!(p["requests"].as_u64().unwrap() > 0, "{p}");
        // Each side's time is its own slices', about --duration.
        let seconds = p["seconds"].as_f64().unwrap();
        assert!((0.35..5.0).contains(&seconds), "{p}");
        assert!(p.get("server_cpu").is_none(), "no pid, no CPU: {p}");
    }
    let mut pairs: Vec<f64> = report["slice_ratios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_f64().unwrap())
        .collect();
    assert_eq!(pairs.len(), 4, "{report}");
    assert!(pairs.iter().all(|r| *r > 0.0), "{report}");
    pairs.sort_by(f64::total_cmp);
    let median = (pairs[1] + pairs[2]) / 2.0;
    let ratio = report["ratio_vs_empty"].as_f64().unwrap();
    assert!(
        (ratio - median).abs() < 1e-9,
        "{ratio} vs {median}: {report}"
    );
}

#[test]
fn bench_interleaved_slices_report_the_cpu_each_server_process_used_and_their_ratio() {
    let (baseline, target) = (EmptyServer::start(), EmptyServer::start());
    let (baseline_pid, target_pid) = (
        baseline.child.id().to_string(),
        target.child.id().to_string(),
    );
    let report = interleaved_report(
        &baseline,
        &target,
        &[
            "--baseline-pid",
            &baseline_pid,
            "--target-pid",
            &target_pid,
            "--slices",
            "2",
            "--duration",
            "0.6",
            "--warmup",
            "0.1",
            "--concurrency",
            "8",
            "--connections",
            "2",
        ],
    );
    let mut per_answer = Vec::new();
    for p in report["phases"].as_array().unwrap() {
        let cpu = &p["server_cpu"];
        // Each empty server is kept busy only by the load generator, on a
        // shared machine: some CPU, and not more than every core.
        let share = cpu["share_of_core"].as_f64().unwrap();
        let cores = std::thread::available_parallelism().unwrap().get() as f64;
        assert!(share > 0.0 && share <= cores + 0.1, "{p}");
        let us = cpu["us_per_request"].as_f64().unwrap();
        let seconds = p["seconds"].as_f64().unwrap();
        let requests = p["requests"].as_f64().unwrap();
        assert!(
            (us - share * seconds * 1e6 / requests).abs() < 1e-6 * us,
            "{p}"
        );
        per_answer.push(us);
    }
    let ratio = report["cpu_ratio_vs_empty"].as_f64().unwrap();
    assert!(
        (ratio - per_answer[0] / per_answer[1]).abs() < 1e-9,
        "{ratio}: {report}"
    );
}

#[test]
fn bench_server_pids_without_a_baseline_target_are_refused_not_ignored() {
    assert_bench_refuses(
        &["--target", "127.0.0.1:9", "--target-pid", "1"],
        "add --baseline-target",
    );
}

/// Runs `portcullis-bench` with `args` and asserts that it refuses them
/// with a message that contains `says`.
fn assert_bench_refuses(args: &[&str], says: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-bench"))
        .args(args)
        .output()
        .expect("run portcullis-bench");
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(
        text(&out.stderr).contains(says),
        "{args:?}: {}",
        text(&out.stderr)
    );
}

#[test]
fn bench_slices_without_a_baseline_target_are_refused_not_ignored() {
    assert_bench_refuses(
        &["--target", "127.0.0.1:9", "--slices", "4"],
        "add --baseline-target",
    );
}

#[test]
fn bench_interleaving_refuses_an_open_loop_with_a_clear_message() {
    assert_bench_refuses(
        &[
            "--target",
            "127.0.0.1:9",
            "--baseline-target",
            "127.0.0.1:9",
            "--rate",
            "100",
        ],
        "drop --rate",
    );
}

#[test]
fn bench_token_key_file_round_trips_so_a_separate_server_can_trust_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bench.p8");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-bench"))
        .arg("--write-token-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(text(&out.stdout).trim()).unwrap()).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "bench", "{jwks}");
    // The in-process server trusts the key read back: allowed calls pass.
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-bench"))
        .args([
            "--json",
            "--mix",
            "allowed",
            "--requests",
            "50",
            "--warmup",
            "0",
        ])
        .arg("--token-key-file")
        .arg(&key)
        .args(["--policies", policies_dir().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["phases"][0]["allowed"], 50, "{report}");
    // A file that is not a key is refused with its name.
    std::fs::write(&key, b"not a key").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-bench"))
        .arg("--token-key-file")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("bench.p8"),
        "{}",
        text(&out.stderr)
    );
}

/// A request file for `check`: `GET path` without credentials.
fn request_file(dir: &Path, path: &str) -> String {
    let file = dir.join("req.json");
    std::fs::write(
        &file,
        format!(r#"{{"method": "GET", "path": "{path}", "host": "api"}}"#),
    )
    .unwrap();
    file.to_str().unwrap().to_string()
}

#[test]
fn check_with_fail_exits_2_on_a_deny_and_0_on_an_allow() {
    let dir = tempfile::tempdir().unwrap();
    let policies = policies_dir();
    for (path, fail, code) in [
        ("/v1/status", true, 0),
        ("/v1/no-such-route", true, 2),
        ("/v1/no-such-route", false, 0),
    ] {
        let request = request_file(dir.path(), path);
        let mut args = vec![
            "check",
            "--request",
            &request,
            "--policies",
            policies.to_str().unwrap(),
        ];
        if fail {
            args.push("--fail");
        }
        let out = portcullis(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{path} --fail={fail}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn output_piped_into_a_closed_reader_ends_quietly_without_a_panic() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let request = request_file(dir.path(), "/v1/status");
    let policies = policies_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "check",
            "--request",
            &request,
            "--policies",
            policies.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before anything is written (as `| head -0`).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.status.success());
}

#[test]
fn a_missing_policy_directory_says_to_pass_policies() {
    let out = portcullis(&["serve", "--policies", "/nonexistent/policies"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("policy directory /nonexistent/policies does not exist; pass --policies DIR"),
        "{err}"
    );
}

#[test]
fn an_empty_config_path_is_refused_naming_the_flag_from_the_command_line_or_environment() {
    let out = portcullis(&["serve", "--config", ""]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: --config: empty; give the config file's path\n"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("serve")
        .env("PORTCULLIS_CONFIG", "")
        .output()
        .expect("run portcullis");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: --config: empty; give the config file's path\n"
    );
}

#[test]
fn an_audit_directory_that_cannot_be_created_says_to_set_audit_directory() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be: creating it fails whoever
    // runs the test, and the file is named as such (not `File exists`).
    let file = dir.path().join("audit");
    std::fs::write(&file, "").unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "policies: {}\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nhttp_listen: 127.0.0.1:0\n",
            policies_dir().display()
        ),
    )
    .unwrap();
    let out = portcullis(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "audit directory {} is a file, not a directory; move the file aside or set audit.directory to a directory this process may write",
            file.display()
        )),
        "{err}"
    );
    assert!(!err.contains("File exists"), "{err}");
}

#[test]
fn a_bind_error_names_its_cause_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "policies: {}\naudit: {{directory: {}}}\nadmin_listen: 127.0.0.1:0\nhttp_listen: 127.0.0.1:0\n",
            policies_dir().display(),
            dir.path().join("audit").display()
        ),
    )
    .unwrap();
    let out = portcullis(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &addr,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains(&format!("cannot listen on {addr}")), "{err}");
    assert_eq!(line.matches("in use").count(), 1, "{line}");
}

#[test]
fn replicas_above_one_on_a_local_quota_store_are_warned_about_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, "quotas: {store: local, replicas: 3}\n").unwrap();
    let mut pdp = Portcullis::start(&["--config", config.to_str().unwrap()]);
    let _ = pdp.listener("admin");
    pdp.terminate(Duration::from_secs(10));
    let err = pdp.stderr();
    assert!(
        err.contains("every replica enforces the full limit on its own"),
        "{err}"
    );
}

#[test]
fn server_worker_threads_sets_the_runtime_threads_the_server_runs() {
    // A loaded setting is enforced: the runtime has exactly the threads it
    // names, 1 and 3 alike, whatever the machine's CPU count; the
    // "serving" log line says how many, and on which scheduler (one thread:
    // tokio's current-thread one).
    for (threads, scheduler) in [(1, "current_thread"), (3, "multi_thread")] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config_with(
            dir.path(),
            &format!("server: {{ worker_threads: {threads} }}\n"),
        );
        let server = Portcullis::start(&["--config", config.to_str().unwrap()]);
        let needle = format!("\"worker_threads\":{threads}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.stderr().contains(&needle) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = server.stderr();
        let serving = log.lines().find(|l| l.contains("\"serving\""));
        assert!(
            serving.is_some_and(|l| l.contains(&needle)),
            "no {needle} in the serving line: {log}"
        );
        let scheduler = format!("\"scheduler\":\"{scheduler}\"");
        assert!(
            serving.is_some_and(|l| l.contains(&scheduler)),
            "no {scheduler} in the serving line: {log}"
        );
    }
}

#[test]
fn a_tokio_worker_threads_that_is_not_a_number_stops_the_start_naming_it() {
    // tokio itself would panic on it; we say what to change instead.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .args(["--policies", policies_dir().to_str().unwrap()])
        .env("TOKIO_WORKER_THREADS", "many")
        .output()
        .expect("run portcullis");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("TOKIO_WORKER_THREADS=\"many\"") && err.contains("server.worker_threads"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_every_listener_and_stops_gracefully() {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    use portcullis::proto::audit_service_client::AuditServiceClient;
    use portcullis::proto::VerifyRequest;

    // On the current-thread scheduler every task (the connections, the
    // audit writer, the quota store's worker, the policy watcher) shares
    // the one thread: concurrent calls on every listener are answered,
    // and SIGTERM still drains and exits 0.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "server: { worker_threads: 1 }\n");
    let mut pdp = Portcullis::start(&["--config", config.to_str().unwrap()]);
    let addr = pdp.addr();
    let admin = pdp.listener("admin");
    let http = pdp.listener("http");
    let bearer = format!("Bearer {}", support::token("alice"));
    let checks = (0..40).map(|_| {
        let request = support::Check::predict()
            .header("authorization", &bearer)
            .build();
        tokio::spawn(support::check_at(addr, request))
    });
    let rls = tokio::spawn(async move {
        let mut client = RateLimitServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let request = RateLimitRequest {
            domain: "ml_api".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "remote_address".into(),
                    value: "192.0.2.9".into(),
                }],
                ..Default::default()
            }],
            hits_addend: 1,
        };
        client
            .should_rate_limit(request)
            .await
            .unwrap()
            .into_inner()
    });
    for check in checks {
        assert_eq!(support::http_status(&check.await.unwrap()), 200);
    }
    assert_eq!(rls.await.unwrap().overall_code, Code::Ok as i32);
    let verified = AuditServiceClient::connect(format!("http://{admin}"))
        .await
        .unwrap()
        .verify(support::as_user(VerifyRequest::default(), "dave"))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    assert!(verified.records >= 41, "{verified:?}");
    let (status, body) = tokio::task::spawn_blocking(move || support::http_get(http, "/readyz"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let exit = tokio::task::spawn_blocking(move || pdp.terminate(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
