//! The audit trail and the admin API end to end, against the real binary:
//! grpcurl through reflection (list, describe, Query, Verify, Explain),
//! refusal of unauthenticated and unauthorized admin callers, exactly one
//! decision record per decision under load, a `kill -9` mid-run, and
//! tampering named by `Verify` and by `portcullis audit verify`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::{
    self, as_user, grpcurl, grpcurl_output, kill_9, token, write_config_with, Check, Portcullis,
};

const ADMIN: &str = "portcullis.admin.v1";

/// A config dir with an audit section: directory `<dir>/audit`, a key,
/// checkpoints every `checkpoint_every` records.
pub(crate) struct Setup {
    dir: TempDir,
    config: PathBuf,
}

impl Setup {
    pub(crate) fn new(checkpoint_every: u64) -> Setup {
        Self::with_extra(checkpoint_every, "")
    }

    /// As `new`, with more top-level config YAML.
    pub(crate) fn with_extra(checkpoint_every: u64, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("audit.key"), [0x5au8; 32]).unwrap();
        let config = write_config_with(
            dir.path(),
            &format!(
                "audit:\n  directory: audit\n  hmac_key_file: audit.key\n  checkpoint_every: {checkpoint_every}\n{extra}"
            ),
        );
        Setup { dir, config }
    }

    pub(crate) fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("audit.key")
    }

    pub(crate) fn start(&self) -> Portcullis {
        self.start_with(&[])
    }

    /// Starts on this config with every file the process writes limited
    /// to `bytes` (see `Portcullis::start_with_file_size_limit`).
    pub(crate) fn start_with_file_size_limit(&self, bytes: u64) -> Portcullis {
        let args = ["--config", self.config.to_str().unwrap()];
        Portcullis::start_with_file_size_limit(&args, bytes)
    }

    fn start_with(&self, args: &[&str]) -> Portcullis {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut pdp = Portcullis::start(&all);
        pdp.listener("admin");
        pdp
    }
}

/// Calls an admin method as `who` (None: no credentials) and parses the
/// JSON reply.
pub(crate) fn admin(pdp: &mut Portcullis, who: Option<&str>, method: &str, body: &Value) -> Value {
    let addr = pdp.listener("admin").to_string();
    let header = who.map(|w| format!("authorization: Bearer {}", token(w)));
    let mut args: Vec<&str> = Vec::new();
    if let Some(h) = &header {
        args.extend(["-H", h]);
    }
    let body = body.to_string();
    let method = format!("{ADMIN}.{method}");
    args.extend(["-d", &body, &addr, &method]);
    let out = grpcurl(pdp, &args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The error grpcurl prints for a refused admin call.
fn admin_refused(pdp: &mut Portcullis, header: Option<String>, method: &str) -> String {
    let addr = pdp.listener("admin").to_string();
    let method = format!("{ADMIN}.{method}");
    let mut args: Vec<&str> = Vec::new();
    if let Some(h) = &header {
        args.extend(["-H", h]);
    }
    args.extend(["-d", "{}", &addr, &method]);
    let output = grpcurl_output(&args);
    assert!(
        !output.status.success(),
        "{method} should be refused; it answered {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub(crate) fn check_request(path: &str, request_id: &str) -> CheckRequest {
    Check::get(path).id(request_id).build()
}

/// Sends `n` Check calls, at most `concurrency` at a time; returns the
/// decision ids the responses carry.
pub(crate) async fn decisions(
    addr: std::net::SocketAddr,
    n: usize,
    concurrency: usize,
) -> Vec<String> {
    let client = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the decision listener");
    let mut ids = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        if tasks.len() >= concurrency {
            ids.push(tasks.join_next().await.unwrap().unwrap());
        }
        let mut client = client.clone();
        // Alternate an allowed and a denied request.
        let path = if i % 2 == 0 { "/v1/status" } else { "/nope" };
        tasks.spawn(async move {
            let reply = client
                .check(check_request(path, &format!("load-{i}")))
                .await
                .expect("Check answers")
                .into_inner();
            decision_id(&reply.http_response.expect("an http_response"))
        });
    }
    while let Some(id) = tasks.join_next().await {
        ids.push(id.unwrap());
    }
    ids
}

pub(crate) fn decision_id(response: &HttpResponse) -> String {
    let headers = match response {
        HttpResponse::OkResponse(ok) => &ok.headers,
        HttpResponse::DeniedResponse(denied) => &denied.headers,
        other => panic!("unexpected response {other:?}"),
    };
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-portcullis-decision-id")
        .map(|h| h.value.clone())
        .expect("every response carries its decision id")
}

/// The trail's files in `dir`, in chain order (their names sort so).
fn records_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

/// Every complete record in the directory's files, parsed, in file order.
pub(crate) fn records_on_disk(dir: &Path) -> Vec<Value> {
    records_files(dir)
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            // While the server runs, the last line may be half written.
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            complete
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub(crate) fn decision_ids_on_disk(dir: &Path) -> Vec<String> {
    records_on_disk(dir)
        .iter()
        .filter(|r| r["kind"] == "decision")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// `portcullis audit verify DIR --key-file KEY`: (exit ok, stdout).
pub(crate) fn verify_offline(setup: &Setup) -> (bool, String) {
    audit_verify(
        &setup.audit_dir(),
        &["--key-file".as_ref(), setup.key().as_os_str()],
    )
}

/// `portcullis audit verify DIR FLAGS...`: (exit ok, stdout and stderr).
pub(crate) fn audit_verify(dir: &Path, flags: &[&std::ffi::OsStr]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "verify"])
        .arg(dir)
        .args(flags)
        .output()
        .expect("run portcullis audit verify");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[test]
fn auditor_workflow_with_grpcurl_and_reflection() {
    let setup = Setup::new(1000);
    let mut pdp = setup.start();
    let admin_addr = pdp.listener("admin").to_string();

    let listed = grpcurl(&pdp, &[&admin_addr, "list"]);
    for service in [
        "portcullis.admin.v1.AuditService",
        "portcullis.admin.v1.PolicyService",
    ] {
        assert!(listed.lines().any(|l| l.trim() == service), "{listed}");
    }
    let described = grpcurl(
        &pdp,
        &[&admin_addr, "describe", "portcullis.admin.v1.AuditService"],
    );
    for rpc in ["Query", "Get", "Verify", "Tail", "Status"] {
        assert!(described.contains(&format!("rpc {rpc}")), "{described}");
    }
    let record = grpcurl(
        &pdp,
        &[&admin_addr, "describe", "portcullis.admin.v1.AuditRecord"],
    );
    assert!(record.contains("determining_policies"), "{record}");

    // Decisions to audit: one allowed, one denied (bob may not invoke a
    // restricted model).
    let decision_addr = pdp.addr().to_string();
    let check = |path: &str, method: &str, who: &str| {
        let body = json!({"attributes": {"request": {"http": {
            "method": method, "path": path, "host": "api.test",
            "headers": {"authorization": format!("Bearer {}", token(who)), "x-request-id": "grpcurl-1"}
        }}}});
        grpcurl(
            &pdp,
            &[
                "-d",
                &body.to_string(),
                &decision_addr,
                "envoy.service.auth.v3.Authorization/Check",
            ],
        )
    };
    check("/v1/models/sentiment/versions/v2:predict", "POST", "alice");
    check(
        "/v1/models/fraud-detector/versions/v3:predict",
        "POST",
        "bob",
    );

    // A principal's denials in the last hour.
    let page = admin(
        &mut pdp,
        Some("carol"),
        "AuditService/Query",
        &json!({"principal": "User::\"bob\"", "decision": "deny", "kind": "decision", "within_seconds": 3600}),
    );
    let records = page["records"].as_array().expect("records");
    assert_eq!(records.len(), 1, "{page}");
    let denial = &records[0];
    assert_eq!(denial["resource"], "ModelVersion::\"fraud-detector/v3\"");
    assert_eq!(denial["status"], 403);
    assert_eq!(denial["reason"], "forbidden");
    assert_eq!(denial["authMethod"], "jwt");
    assert!(denial["policyVersion"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    assert!(
        !denial.to_string().contains("eyJ"),
        "no token in a record: {denial}"
    );

    // The same through the thin client, in the shape of the audit files.
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "audit",
            "query",
            "--admin",
            &admin_addr,
            "--principal",
            "User::\"bob\"",
            "--decision",
            "deny",
            "--kind",
            "decision",
        ])
        .env("PORTCULLIS_ADMIN_TOKEN", token("dave"))
        .output()
        .expect("run portcullis audit query");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["hash"], denial["hash"]);
    assert_eq!(
        portcullis::audit::chain::leaf_hash(&lines[0]),
        lines[0]["hash"].as_str().unwrap(),
        "a queried record still matches its hash"
    );

    // Get by id.
    let got = admin(
        &mut pdp,
        Some("carol"),
        "AuditService/Get",
        &json!({"id": denial["id"]}),
    );
    assert_eq!(got["hash"], denial["hash"]);

    // The admin calls themselves are audited.
    let calls = admin(
        &mut pdp,
        Some("dave"),
        "AuditService/Query",
        &json!({"kind": "admin_call", "principal": "User::\"carol\""}),
    );
    assert!(
        calls["records"].as_array().is_some_and(|r| r.len() >= 2),
        "{calls}"
    );

    // Verify the chain.
    let verified = admin(&mut pdp, Some("dave"), "AuditService/Verify", &json!({}));
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["checkpointKeyConfigured"], true, "{verified}");

    // Explain a hypothetical request, in the `portcullis check` format.
    let explained = admin(
        &mut pdp,
        Some("carol"),
        "PolicyService/Explain",
        &json!({"request": {"method": "POST", "path": "/v1/models/fraud-detector/versions/v3:predict",
                            "identity": {"principal": "User::\"alice\"", "parents": ["Org::\"acme\""], "mfa": true}}}),
    );
    assert_eq!(explained["decision"], "deny", "{explained}");
    assert_eq!(
        explained["determiningPolicies"],
        json!(["restricted-models-need-privileged-role"])
    );
    // ... and it is not recorded as a decision.
    let alice = admin(
        &mut pdp,
        Some("carol"),
        "AuditService/Query",
        &json!({"principal": "User::\"alice\"", "kind": "decision"}),
    );
    assert_eq!(
        alice["records"].as_array().map(Vec::len),
        Some(1),
        "{alice}"
    );

    let policies = admin(
        &mut pdp,
        Some("dave"),
        "PolicyService/ListPolicies",
        &json!({}),
    );
    let ids: Vec<&str> = policies["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"restricted-models-need-privileged-role"),
        "{policies}"
    );
    let reload = admin(&mut pdp, Some("carol"), "PolicyService/Reload", &json!({}));
    assert_eq!(reload["outcome"], "unchanged", "{reload}");
}

#[test]
fn unauthenticated_and_unauthorized_admin_callers_are_refused() {
    let setup = Setup::new(1000);
    let mut pdp = setup.start();
    // Without credentials: only GetVersion (policy `public-policy-version`).
    admin(&mut pdp, None, "PolicyService/GetVersion", &json!({}));
    for method in [
        "AuditService/Query",
        "AuditService/Verify",
        "AuditService/Status",
        "PolicyService/Explain",
        "PolicyService/Reload",
        "PolicyService/ListPolicies",
    ] {
        let err = admin_refused(&mut pdp, None, method);
        assert!(err.contains("Unauthenticated"), "{method}: {err}");
    }
    // An invalid token is refused even for GetVersion.
    let forged = support::mint(
        support::claims("carol", "acme"),
        support::Key::UntrustedEs256,
    );
    let err = admin_refused(
        &mut pdp,
        Some(format!("authorization: Bearer {forged}")),
        "PolicyService/GetVersion",
    );
    assert!(err.contains("Unauthenticated"), "{err}");
    // Authenticated but not allowed: bob is a viewer; dave (auditor) may
    // read the trail but not reload.
    let bob = Some(format!("authorization: Bearer {}", token("bob")));
    let err = admin_refused(&mut pdp, bob, "AuditService/Query");
    assert!(err.contains("PermissionDenied"), "{err}");
    let dave = Some(format!("authorization: Bearer {}", token("dave")));
    let err = admin_refused(&mut pdp, dave, "PolicyService/Reload");
    assert!(err.contains("PermissionDenied"), "{err}");

    // Every refusal is on the record.
    let refused = admin(
        &mut pdp,
        Some("carol"),
        "AuditService/Query",
        &json!({"kind": "admin_call", "decision": "deny", "limit": 1000}),
    );
    assert_eq!(
        refused["records"].as_array().map(Vec::len),
        Some(9),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_under_load_has_exactly_one_record() {
    const N: usize = 1_000;
    let setup = Setup::new(50);
    let mut pdp = setup.start();
    let ids = decisions(pdp.addr(), N, 16).await;
    let status = pdp.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");

    let on_disk = decision_ids_on_disk(&setup.audit_dir());
    assert_eq!(on_disk.len(), N, "one decision record per decision");
    let answered: BTreeSet<&String> = ids.iter().collect();
    let recorded: BTreeSet<&String> = on_disk.iter().collect();
    assert_eq!(answered.len(), N, "decision ids are unique");
    assert_eq!(answered, recorded, "the records are exactly the decisions");
    let (ok, out) = verify_offline(&setup);
    assert!(ok, "{out}");
    assert!(out.contains("signature(s) verified"), "{out}");
    assert!(!pdp.stderr().contains("AUDIT RECORD NOT WRITTEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_every_record_verifies_and_the_chain_continues() {
    let setup = Setup::new(25);
    let mut pdp = setup.start();
    let addr = pdp.addr();
    // Load in the background (4 streams, bounded); killed mid-run.
    let load = tokio::spawn(async move {
        let Ok(client) = AuthorizationClient::connect(format!("http://{addr}")).await else {
            return;
        };
        let mut streams = tokio::task::JoinSet::new();
        for s in 0..4 {
            let mut c = client.clone();
            streams.spawn(async move {
                for i in 0..2_000 {
                    let req = check_request("/v1/status", &format!("k-{s}-{i}"));
                    if c.check(req).await.is_err() {
                        return;
                    }
                }
            });
        }
        while streams.join_next().await.is_some() {}
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while decision_ids_on_disk(&setup.audit_dir()).len() < 300 {
        assert!(Instant::now() < deadline, "no decisions reached the disk");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!load.is_finished(), "the kill must land mid-run");
    kill_9(&mut pdp);
    load.abort();
    let _ = load.await;

    let (ok, out) = verify_offline(&setup);
    assert!(ok, "after kill -9 the records on disk verify: {out}");
    let before = records_on_disk(&setup.audit_dir());
    let last = before.last().unwrap().clone();

    // Restart on the same directory: the chain continues from the last record.
    let mut pdp = setup.start();
    let ids = decisions(pdp.addr(), 20, 4).await;
    assert!(pdp.terminate(Duration::from_secs(10)).success());
    let after = records_on_disk(&setup.audit_dir());
    let next = &after[before.len()];
    assert_eq!(next["seq"], last["seq"].as_u64().unwrap() + 1);
    assert_eq!(next["prev"], last["hash"]);
    let recorded: BTreeSet<String> = decision_ids_on_disk(&setup.audit_dir())
        .into_iter()
        .collect();
    assert!(ids.iter().all(|id| recorded.contains(id)));
    let (ok, out) = verify_offline(&setup);
    assert!(ok, "{out}");
}

/// Runs the server on a tampered copy of `setup`'s trail and returns what
/// `Verify` says, next to the offline verdict.
fn verify_tampered(setup: &Setup, tamper: impl Fn(&mut Vec<String>)) -> (Value, String) {
    let copy = Setup::new(1000);
    std::fs::copy(setup.key(), copy.key()).unwrap();
    std::fs::create_dir_all(copy.audit_dir()).unwrap();
    for entry in std::fs::read_dir(setup.audit_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let mut lines: Vec<String> = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            tamper(&mut lines);
            std::fs::write(
                copy.audit_dir().join(path.file_name().unwrap()),
                lines.join("\n") + "\n",
            )
            .unwrap();
        }
    }
    let (ok, offline) = verify_offline(&copy);
    assert!(!ok, "offline verify must fail: {offline}");
    let mut pdp = copy.start();
    let reply = admin(&mut pdp, Some("carol"), "AuditService/Verify", &json!({}));
    (reply, offline)
}

#[test]
fn editing_deleting_or_swapping_a_line_is_named_by_verify() {
    let setup = Setup::new(1000);
    {
        let mut pdp = setup.start();
        let decision_addr = pdp.addr().to_string();
        for i in 0..8 {
            let body = json!({"attributes": {"request": {"http": {
                "method": "GET", "path": if i % 2 == 0 { "/v1/status" } else { "/nope" }, "host": "api.test"}}}});
            grpcurl(
                &pdp,
                &[
                    "-d",
                    &body.to_string(),
                    &decision_addr,
                    "envoy.service.auth.v3.Authorization/Check",
                ],
            );
        }
        assert!(pdp.terminate(Duration::from_secs(10)).success());
    }
    assert!(verify_offline(&setup).0);
    let broken = |reply: &Value| reply["broken"].clone();

    // Edit line 4 (seq 3): change the decision.
    let (reply, offline) = verify_tampered(&setup, |lines| {
        assert!(lines[3].contains("\"decision\":\"allow\""), "{}", lines[3]);
        lines[3] = lines[3].replace("\"decision\":\"allow\"", "\"decision\":\"deny\"");
    });
    // proto3 JSON leaves out `false`.
    assert_ne!(reply["ok"], true, "{reply}");
    assert_eq!(broken(&reply)["seq"], "3", "{reply}");
    assert_eq!(broken(&reply)["line"], "4", "{reply}");
    assert!(
        broken(&reply)["reason"]
            .as_str()
            .unwrap()
            .contains("edited"),
        "{reply}"
    );
    assert!(offline.contains(":4: record seq 3"), "{offline}");

    // Delete line 4 (seq 3): the gap is named at the record after it.
    let (reply, offline) = verify_tampered(&setup, |lines| {
        lines.remove(3);
    });
    assert_eq!(broken(&reply)["seq"], "4", "{reply}");
    assert!(
        broken(&reply)["message"]
            .as_str()
            .unwrap()
            .contains("expected seq 3"),
        "{reply}"
    );
    assert!(
        offline.contains("record seq 4") && offline.contains("missing"),
        "{offline}"
    );

    // Swap lines 4 and 5 (seq 3 and 4).
    let (reply, offline) = verify_tampered(&setup, |lines| lines.swap(3, 4));
    assert_eq!(broken(&reply)["seq"], "4", "{reply}");
    assert_eq!(broken(&reply)["line"], "4", "{reply}");
    assert!(offline.contains(":4: record seq 4"), "{offline}");

    // A write cut short by `kill -9` (no newline at the end of the newest
    // file) is not a break: the records before it verify, the line is named.
    let newest = records_files(&setup.audit_dir()).pop().unwrap();
    let lines = std::fs::read_to_string(&newest).unwrap().lines().count();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"seq\":99,\"kind\":\"deci").unwrap();
    let (ok, offline) = verify_offline(&setup);
    assert!(ok, "{offline}");
    let named = format!(
        "{}:{} is an incomplete last line",
        newest.display(),
        lines + 1
    );
    assert!(offline.contains(&named), "{offline}");
}

/// An `AuditService` client on `pdp`'s admin listener.
async fn audit_client(
    pdp: &mut Portcullis,
) -> portcullis::proto::audit_service_client::AuditServiceClient<tonic::transport::Channel> {
    let admin_addr = pdp.listener("admin");
    portcullis::proto::audit_service_client::AuditServiceClient::connect(format!(
        "http://{admin_addr}"
    ))
    .await
    .unwrap()
}

/// A `Verify` from `from_seq` to the head, as the auditor dave.
fn verify_from(from_seq: u64) -> tonic::Request<portcullis::proto::VerifyRequest> {
    as_user(
        portcullis::proto::VerifyRequest {
            from_seq,
            to_seq: None,
        },
        "dave",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_streams_new_decision_records() {
    use portcullis::proto::TailRequest;

    let setup = Setup::new(1000);
    let mut pdp = setup.start();
    let mut client = audit_client(&mut pdp).await;
    let request = as_user(
        TailRequest {
            kind: "decision".into(),
            ..Default::default()
        },
        "dave",
    );
    let mut stream = client.tail(request).await.expect("Tail opens").into_inner();

    let ids = decisions(pdp.addr(), 3, 1).await;
    for id in &ids {
        let record = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a tailed record within 10 s")
            .expect("the stream is healthy")
            .expect("the stream is open");
        assert_eq!(&record.id, id);
        assert_eq!(record.kind, "decision");
    }

    // Without credentials, no tail.
    let refused = client
        .tail(TailRequest::default())
        .await
        .expect_err("anonymous Tail is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // A filter nothing can match is refused as `Query` refuses it, not
    // held open forever.
    let refused = client
        .tail(as_user(
            TailRequest {
                decision: "maybe".into(),
                ..Default::default()
            },
            "dave",
        ))
        .await
        .expect_err("a Tail with a decision filter other than allow or deny is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(refused.message(), "decision: 'allow' or 'deny'");
    // The server stops with an open tail.
    assert!(pdp.terminate(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_from_past_the_head_is_refused_naming_the_head() {
    let setup = Setup::new(1000);
    let mut pdp = setup.start();
    decisions(pdp.addr(), 4, 1).await;
    let mut client = audit_client(&mut pdp).await;
    // Every admin call is recorded too, so the head moves under the test:
    // the chain holds the 4 decisions, far short of seq 500.
    let refused = client
        .verify(verify_from(500))
        .await
        .expect_err("Verify past the head is refused, not ok having checked nothing");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let head: u64 = refused
        .message()
        .strip_prefix("from_seq 500 is past the chain's head (seq ")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|seq| seq.parse().ok())
        .unwrap_or_else(|| panic!("{}", refused.message()));
    assert!((3..500).contains(&head), "{}", refused.message());
    // The head itself is still a range with a record in it.
    let verified = client.verify(verify_from(head)).await.unwrap().into_inner();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.first_seq, head, "{verified:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_audit_files_cut_short_below_the_writers_head_naming_both() {
    let setup = Setup::new(1000);
    let mut pdp = setup.start();
    decisions(pdp.addr(), 40, 4).await;
    let mut client = audit_client(&mut pdp).await;
    let whole = client.verify(verify_from(0)).await.unwrap().into_inner();
    assert!(whole.ok && whole.last_seq >= 40, "{whole:?}");

    // The file cut to its first 31 records (seq 0..=30), as a restore from
    // a short copy does: the server's open file is no longer the one on
    // disk, so nothing it writes after follows seq 30 there.
    let file = whole.files.last().unwrap().clone();
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: String = text.split_inclusive('\n').take(31).collect();
    let copy = setup.audit_dir().join("short.copy");
    std::fs::write(&copy, kept).unwrap();
    std::fs::rename(&copy, &file).unwrap();

    for from_seq in [0, 35] {
        let cut = client
            .verify(verify_from(from_seq))
            .await
            .unwrap()
            .into_inner();
        assert!(!cut.ok, "{cut:?}");
        let broken = cut.broken.expect("the cut is named");
        let missing = from_seq.max(31);
        assert_eq!(
            (broken.file.as_str(), broken.line, broken.seq),
            (file.as_str(), 32, missing),
            "{broken:?}"
        );
        // Every admin call is recorded too: the head moves under the test.
        let head: u64 = broken
            .reason
            .strip_prefix("the files end at seq 30, but the writer's head is seq ")
            .and_then(|rest| rest.split_once(':'))
            .and_then(|(seq, _)| seq.parse().ok())
            .unwrap_or_else(|| panic!("{broken:?}"));
        assert!(head >= whole.last_seq, "{broken:?}");
        assert!(
            broken.message.ends_with(&format!(
                "records {missing}..{head} are missing (the files were cut short or removed)"
            )),
            "{broken:?}"
        );
    }
}

#[test]
fn policy_reloads_and_rejections_are_recorded() {
    let setup = Setup::with_extra(1000, "reload:\n  watch: false\n");
    let policies = setup.dir.path().join("policies");
    support::copy_bundled_policies(&policies);
    let mut pdp = setup.start_with(&["--policies", policies.to_str().unwrap()]);

    let platform = policies.join("platform.cedar");
    let text = std::fs::read_to_string(&platform).unwrap();
    std::fs::write(&platform, format!("{text}\n// reviewed\n")).unwrap();
    let swapped = admin(&mut pdp, Some("carol"), "PolicyService/Reload", &json!({}));
    assert_eq!(swapped["outcome"], "swapped", "{swapped}");

    std::fs::write(
        policies.join("broken.cedar"),
        "permit (principal, action, resource) when { x };\n",
    )
    .unwrap();
    let rejected = admin(&mut pdp, Some("carol"), "PolicyService/Reload", &json!({}));
    assert_eq!(rejected["outcome"], "rejected", "{rejected}");
    assert!(
        rejected["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("broken.cedar:1"),
        "{rejected}"
    );

    let reloads = admin(
        &mut pdp,
        Some("dave"),
        "AuditService/Query",
        &json!({"kind": "policy_reload"}),
    );
    let reloads = reloads["records"].as_array().unwrap().clone();
    assert_eq!(reloads.len(), 2, "the start and the swap: {reloads:?}");
    assert_eq!(reloads[1]["filesChanged"], json!(["platform.cedar"]));
    assert_eq!(reloads[1]["previousVersion"], reloads[0]["policyVersion"]);
    assert_eq!(reloads[1]["policyVersion"], swapped["version"]);

    let rejections = admin(
        &mut pdp,
        Some("dave"),
        "AuditService/Query",
        &json!({"kind": "policy_rejected"}),
    );
    let rejection = &rejections["records"][0];
    assert_eq!(
        rejection["policyVersion"], swapped["version"],
        "{rejections}"
    );
    assert!(
        rejection["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("broken.cedar:1"),
        "{rejections}"
    );
}

/// A token from `scripts/dev-token.sh`, as the README tells a newcomer.
fn dev_token(sub: &str) -> String {
    let openssl = Command::new("openssl").arg("version").output();
    assert!(
        openssl.is_ok_and(|o| o.status.success()),
        "openssl not found: scripts/dev-token.sh needs it; run scripts/install-test-tools.sh (as root)"
    );
    let output = Command::new("bash")
        .arg(support::repo().join("scripts/dev-token.sh"))
        .arg(sub)
        .output()
        .expect("run scripts/dev-token.sh");
    assert!(
        output.status.success(),
        "dev-token.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn readme_dev_tokens_open_the_admin_api_for_the_test_issuer() {
    let setup = Setup::new(1000);
    let mut pdp = setup.start();
    let addr = pdp.listener("admin").to_string();
    let carol = format!("authorization: Bearer {}", dev_token("carol"));
    let status = grpcurl(
        &pdp,
        &[
            "-H",
            &carol,
            &addr,
            "portcullis.admin.v1.AuditService/Status",
        ],
    );
    assert!(status.contains("\"onFull\": \"drop\""), "{status}");
    let bob = format!("authorization: Bearer {}", dev_token("bob"));
    let err = admin_refused(&mut pdp, Some(bob), "AuditService/Status");
    assert!(err.contains("PermissionDenied"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_that_falls_behind_ends_with_data_loss_never_silently() {
    use portcullis::proto::audit_service_client::AuditServiceClient;
    use portcullis::proto::TailRequest;

    let setup = Setup::new(1000);
    let mut pdp = setup.start();
    let admin_addr = pdp.listener("admin");
    // Small HTTP/2 windows, so that the client does not absorb the backlog.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin_addr}"))
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let mut client = AuditServiceClient::new(channel);
    let request = as_user(TailRequest::default(), "dave");
    let mut stream = client.tail(request).await.expect("Tail opens").into_inner();
    // Not reading while far more records than the tail buffers are written.
    decisions(pdp.addr(), 2_000, 16).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut received = 0u64;
    let mut last_seq = None;
    loop {
        assert!(Instant::now() < deadline, "no end of the lagging tail");
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(record))) => {
                if let Some(prev) = last_seq {
                    assert_eq!(record.seq, prev + 1, "a tail never skips silently");
                }
                last_seq = Some(record.seq);
                received += 1;
            }
            Ok(Err(status)) => {
                assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
                assert!(status.message().contains("Query"), "{status:?}");
                break;
            }
            other => panic!("expected records then DATA_LOSS, got {other:?} after {received}"),
        }
    }
    assert!(received < 2_000, "{received}");
}
