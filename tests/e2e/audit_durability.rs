//! Audit durability against the real binary: in `written` mode no answered
//! decision is missing from the files after `kill -9` under load (the run
//! count comes from `PORTCULLIS_KILL9_RUNS`, default 3; scripts/audit-kill9.sh
//! runs 20), and on a full disk (a real `EFBIG` from the process's file
//! size limit, as `ulimit -f` sets it) `fail_closed` lets no allowed answer
//! out without its record while `drop` logs its one line a second.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde_json::Value;

use crate::audit::{
    audit_verify, check_request, decision_id, decision_ids_on_disk, decisions, verify_offline,
    Setup,
};
use crate::support::{http_status, kill_9};

/// Small enough that the bundled policy's reload record and a few dozen
/// decisions fill it; large enough for the server's start-up log lines.
const FULL_DISK_BYTES: u64 = 24 * 1024;

/// One answer: its decision id, and the HTTP status the client got (200:
/// let through).
type Answer = (String, u16);

/// Sends Checks, half allowed, on `streams` streams, `per_stream`
/// each, and collects every answer received.
async fn mixed_load(
    addr: std::net::SocketAddr,
    streams: usize,
    per_stream: usize,
    answers: Arc<Mutex<Vec<Answer>>>,
) {
    let Ok(client) = AuthorizationClient::connect(format!("http://{addr}")).await else {
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..streams {
        let mut client = client.clone();
        let answers = Arc::clone(&answers);
        tasks.spawn(async move {
            for i in 0..per_stream {
                // Every other call is denied (no route), so both kinds of
                // answer wait for their records.
                let path = if i % 2 == 0 { "/v1/status" } else { "/nope" };
                let Ok(reply) = client
                    .check(check_request(path, &format!("d-{s}-{i}")))
                    .await
                else {
                    return;
                };
                let reply = reply.into_inner();
                let status = http_status(&reply);
                let id = decision_id(reply.http_response.as_ref().expect("an http_response"));
                answers.lock().unwrap().push((id, status));
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn kill9_runs() -> usize {
    match std::env::var("PORTCULLIS_KILL9_RUNS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("PORTCULLIS_KILL9_RUNS={v:?} is not a count")),
        Err(_) => 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_in_written_mode_loses_no_answered_decision() {
    let runs = kill9_runs();
    let mut answered_total = 0;
    for run in 0..runs {
        let setup = Setup::with_extra(25, "  durability: written\n");
        let mut pdp = setup.start();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let load = tokio::spawn(mixed_load(pdp.addr(), 8, 5_000, Arc::clone(&answers)));
        // Kill at a different point in each run.
        let threshold = 200 + 97 * (run % 7);
        let deadline = Instant::now() + Duration::from_secs(30);
        while answers.lock().unwrap().len() < threshold {
            assert!(
                Instant::now() < deadline,
                "run {run}: the load did not start"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!load.is_finished(), "run {run}: the kill must land mid-run");
        kill_9(&mut pdp);
        let answered: Vec<Answer> = answers.lock().unwrap().clone();
        load.abort();
        let _ = load.await;

        let recorded: BTreeSet<String> = decision_ids_on_disk(&setup.audit_dir())
            .into_iter()
            .collect();
        let missing: Vec<&Answer> = answered
            .iter()
            .filter(|(id, _)| !recorded.contains(id))
            .collect();
        let (ok, out) = verify_offline(&setup);
        eprintln!(
            "kill -9 run {}/{runs}: {} answered, {} decision records on disk, {} answered without a record, chain verifies after kill: {ok}, last write cut short: {}",
            run + 1,
            answered.len(),
            recorded.len(),
            missing.len(),
            out.contains("incomplete last line")
        );
        assert!(
            missing.is_empty(),
            "run {run}: answered without a record: {missing:?}"
        );
        assert!(ok, "run {run}: after kill -9 the records verify: {out}");

        // Restart on the same directory; the chain continues and verifies.
        let mut pdp = setup.start();
        let ids = decisions(pdp.addr(), 10, 2).await;
        assert!(pdp.terminate(Duration::from_secs(10)).success());
        let (ok, out) = verify_offline(&setup);
        assert!(ok, "run {run}: after the restart the chain verifies: {out}");
        let recorded: BTreeSet<String> = decision_ids_on_disk(&setup.audit_dir())
            .into_iter()
            .collect();
        assert!(ids.iter().all(|id| recorded.contains(id)), "run {run}");
        answered_total += answered.len();
    }
    eprintln!("kill -9: {runs} runs, {answered_total} answered decisions, 0 without a record");
}

/// Runs 1,200 Checks (half allowed, half denied) on 4 streams against a
/// server whose files cannot grow past [`FULL_DISK_BYTES`]; returns the
/// answers, the seconds the load took, and the server's log after a
/// SIGTERM stop.
async fn on_a_full_disk(setup: &Setup) -> (Vec<Answer>, f64, String) {
    let mut pdp = setup.start_with_file_size_limit(FULL_DISK_BYTES);
    let answers = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let load = mixed_load(pdp.addr(), 4, 300, Arc::clone(&answers));
    tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("1,200 Checks within 60 s");
    let seconds = started.elapsed().as_secs_f64();
    pdp.terminate(Duration::from_secs(10));
    let answers = answers.lock().unwrap().clone();
    (answers, seconds, pdp.stderr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_on_a_full_disk_lets_no_allowed_answer_out_without_its_record() {
    let setup = Setup::with_extra(1000, "  on_full: fail_closed\n");
    let (answers, _, log) = on_a_full_disk(&setup).await;

    let allowed: Vec<&String> = answers
        .iter()
        .filter(|a| a.1 == 200)
        .map(|a| &a.0)
        .collect();
    let unavailable = answers.iter().filter(|a| a.1 == 503).count();
    assert!(
        allowed.len() > 10,
        "some calls pass before the disk is full"
    );
    assert!(
        unavailable > 100,
        "the full disk refuses calls: {unavailable} 503s"
    );
    assert!(
        log.contains("AUDIT RECORD NOT WRITTEN: cannot write"),
        "the disk was full: {log}"
    );
    let recorded: BTreeSet<String> = decision_ids_on_disk(&setup.audit_dir())
        .into_iter()
        .collect();
    let missing: Vec<&&String> = allowed
        .iter()
        .filter(|id| !recorded.contains(**id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} allowed answers have no record: {missing:?}",
        missing.len(),
        allowed.len()
    );
    let (ok, out) = verify_offline(&setup);
    assert!(ok, "the records that made it verify (no gap): {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_mode_on_a_full_disk_logs_the_documented_line_at_most_once_a_second() {
    let setup = Setup::with_extra(1000, "  on_full: drop\n");
    let (answers, seconds, log) = on_a_full_disk(&setup).await;
    assert_eq!(answers.len(), 1200, "every call is answered");
    assert!(
        answers.iter().all(|a| a.1 != 503),
        "drop mode never refuses for the audit trail"
    );

    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.contains("AUDIT RECORD NOT WRITTEN"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // The limit is one line per full second, plus the first line.
    let most = seconds.ceil() as usize + 1;
    assert!(
        !lines.is_empty() && lines.len() <= most,
        "{} loss lines in {seconds:.1} s (at most {most}):\n{log}",
        lines.len()
    );
    let mut counted = 0;
    for line in &lines {
        let message = line["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("AUDIT RECORD NOT WRITTEN: cannot write "),
            "{line}"
        );
        counted += line["dropped_since_last_line"]
            .as_u64()
            .unwrap_or_else(|| panic!("a count of lost records: {line}"));
    }
    let recorded = decision_ids_on_disk(&setup.audit_dir()).len();
    assert!(recorded < 1200, "the disk filled up ({recorded} recorded)");
    assert!(counted > 0, "{lines:?}");
}

/// Runs `openssl` with `args` in `dir`; panics with its stderr on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let output = std::process::Command::new(crate::support::tool("openssl"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `portcullis audit verify DIR --public-key KEY`: (exit ok, stdout).
fn verify_with_public_key(dir: &std::path::Path, public_key: &std::path::Path) -> (bool, String) {
    audit_verify(dir, &["--public-key".as_ref(), public_key.as_os_str()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_verifies_with_the_public_key_alone_and_an_edit_fails() {
    let setup = Setup::with_extra(10, "  signing_key_file: signing.pem\n");
    let home = setup.audit_dir().parent().unwrap().to_path_buf();
    // The commands docs/configuration.md gives.
    openssl(
        &home,
        &["genpkey", "-algorithm", "ed25519", "-out", "signing.pem"],
    );
    openssl(
        &home,
        &[
            "pkey",
            "-in",
            "signing.pem",
            "-pubout",
            "-out",
            "signing.pub.pem",
        ],
    );
    let public = home.join("signing.pub.pem");
    let mut pdp = setup.start();
    decisions(pdp.addr(), 40, 4).await;
    assert!(pdp.terminate(Duration::from_secs(10)).success());

    let (ok, out) = verify_with_public_key(&setup.audit_dir(), &public);
    assert!(ok, "{out}");
    assert!(out.contains("checkpoint signature(s) verified"), "{out}");
    assert!(!out.contains(" 0 checkpoint signature(s)"), "{out}");

    // Another key does not verify the trail.
    openssl(
        &home,
        &["genpkey", "-algorithm", "ed25519", "-out", "other.pem"],
    );
    openssl(
        &home,
        &[
            "pkey",
            "-in",
            "other.pem",
            "-pubout",
            "-out",
            "other.pub.pem",
        ],
    );
    let (ok, out) = verify_with_public_key(&setup.audit_dir(), &home.join("other.pub.pem"));
    assert!(
        !ok && out.contains("not among the given public keys"),
        "{out}"
    );

    // An edited record breaks the chain.
    let file = std::fs::read_dir(setup.audit_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = text.replacen("\"decision\":\"deny\"", "\"decision\":\"allow\"", 1);
    assert_ne!(text, edited);
    std::fs::write(&file, edited).unwrap();
    let (ok, out) = verify_with_public_key(&setup.audit_dir(), &public);
    assert!(!ok && out.contains("BROKEN"), "{out}");
}
