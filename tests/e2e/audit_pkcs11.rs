//! Checkpoints signed with a key in a PKCS#11 token (SoftHSM2, Debian's
//! `softhsm2`, with a token made in a temporary directory and keys made by
//! OpenSC's `pkcs11-tool`): the server signs through the token, `portcullis
//! audit public-key` exports the public key from it, and `portcullis audit
//! verify --public-key` verifies the chain with that key alone and names
//! an edited record. A token, PIN or key that is not there refuses the
//! start with what to fix.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::audit::{audit_verify, decisions, records_on_disk};
use crate::support::{tool, write_config_with, Portcullis};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "portcullis-audit";
const PIN: &str = "314159";

/// A SoftHSM2 token store of its own (`SOFTHSM2_CONF` points at it), one
/// token `TOKEN` with user PIN `PIN`.
struct SoftHsm {
    dir: TempDir,
}

impl SoftHsm {
    fn new() -> SoftHsm {
        assert!(
            Path::new(MODULE).exists(),
            "{MODULE} is missing: install Debian's softhsm2 (scripts/install-test-tools.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("pin"), format!("{PIN}\n")).unwrap();
        let hsm = SoftHsm { dir };
        hsm.run(
            "softhsm2-util",
            &[
                "--init-token",
                "--free",
                "--label",
                TOKEN,
                "--so-pin",
                "27182818",
                "--pin",
                PIN,
            ],
        );
        hsm
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    fn pin_file(&self) -> PathBuf {
        self.dir.path().join("pin")
    }

    fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![("SOFTHSM2_CONF", self.conf())]
    }

    fn run(&self, name: &str, args: &[&str]) -> String {
        let output = Command::new(tool(name))
            .args(args)
            .env("SOFTHSM2_CONF", self.conf())
            .output()
            .unwrap_or_else(|e| panic!("run {name}: {e}"));
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name} {args:?}: {text}");
        text
    }

    /// A key pair labelled `label` in the token: `key_type` as
    /// `pkcs11-tool --key-type` says it (`EC:edwards25519`, `EC:prime256v1`).
    fn keygen(&self, label: &str, key_type: &str) {
        self.run(
            "pkcs11-tool",
            &[
                "--module",
                MODULE,
                "--token-label",
                TOKEN,
                "--login",
                "--pin",
                PIN,
                "--keypairgen",
                "--key-type",
                key_type,
                "--label",
                label,
            ],
        );
    }

    /// `portcullis serve --config CONFIG` with the token's environment.
    fn serve(&self, config: &Path) -> Portcullis {
        let conf = self.conf();
        let env: [(&str, &OsStr); 1] = [("SOFTHSM2_CONF", conf.as_os_str())];
        Portcullis::start_with_env(&["--config", config.to_str().unwrap()], &env)
    }

    /// The `audit.signing_key_pkcs11` section for `token` and `key`.
    fn section(&self, token: &str, key: &str) -> String {
        format!(
            "  signing_key_pkcs11:\n    module: {MODULE}\n    token_label: {token}\n    key_label: {key}\n    pin_file: {}\n",
            self.pin_file().display()
        )
    }
}

/// A config dir whose audit trail signs with `section`; (dir, config).
fn config(section: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        &format!("audit:\n  directory: audit\n  checkpoint_every: 7\n{section}"),
    );
    (dir, config)
}

/// `portcullis audit public-key --config CONFIG` with the token's
/// environment: (exit ok, stdout, stderr).
fn public_key(hsm: &SoftHsm, config: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "public-key", "--config"])
        .arg(config)
        .envs(hsm.env())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_signed_in_softhsm2_verify_with_the_exported_public_key_and_an_edit_fails() {
    let hsm = SoftHsm::new();
    hsm.keygen("checkpoints", "EC:edwards25519");
    let (dir, config) = config(&hsm.section(TOKEN, "checkpoints"));
    let mut pdp = hsm.serve(&config);
    decisions(pdp.addr(), 30, 4).await;
    assert!(pdp.terminate(Duration::from_secs(20)).success());

    let audit = dir.path().join("audit");
    let records = records_on_disk(&audit);
    let signed = records
        .iter()
        .filter(|r| r["kind"] == "checkpoint" && r["checkpoint_sig"].is_string())
        .count();
    assert!(
        signed >= 4,
        "checkpoints every 7 records are signed: {signed}"
    );
    assert!(
        records
            .iter()
            .all(|r| r["kind"] != "checkpoint" || r["checkpoint_sig"].is_string()),
        "no checkpoint without its signature"
    );

    let (ok, pem, stderr) = public_key(&hsm, &config);
    assert!(ok, "{stderr}");
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let public = dir.path().join("audit-signing.pub.pem");
    std::fs::write(&public, &pem).unwrap();
    let announced = records.iter().find(|r| r["kind"] == "signing_key").unwrap();
    let flags = ["--public-key".as_ref(), public.as_os_str()];
    let (ok, out) = audit_verify(&audit, &flags);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("{signed} checkpoint signature(s) verified")),
        "{out}"
    );
    assert!(
        pem.contains(
            &portcullis::audit::signing::PublicKey::from_raw(
                &hex::decode(announced["public_key"].as_str().unwrap()).unwrap()
            )
            .unwrap()
            .to_pem()
            .lines()
            .nth(1)
            .unwrap()
            .to_string()
        ),
        "the chain announces the token's key"
    );

    // An edited record: its hash no longer matches.
    let file = portcullis::audit::writer::list_files(&audit)
        .unwrap()
        .remove(0)
        .1;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("load-5"));
    std::fs::write(&file, text.replacen("load-5", "load-X", 1)).unwrap();
    let (ok, out) = audit_verify(&audit, &flags);
    assert!(!ok, "{out}");
    assert!(
        out.contains("BROKEN") && out.contains("does not match its hash"),
        "{out}"
    );
}

#[test]
fn a_missing_token_at_start_up_refuses_to_serve_and_says_which_tokens_exist() {
    let hsm = SoftHsm::new();
    hsm.keygen("checkpoints", "EC:edwards25519");
    let (dir, config) = config(&hsm.section("no-such-token", "checkpoints"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .arg("--policies")
        .arg(crate::support::policies_dir())
        .envs(hsm.env())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve with a missing token did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("no token labelled \"no-such-token\"")
            && stderr.contains(&format!("{TOKEN:?}")),
        "{stderr}"
    );
    assert!(!stderr.contains(PIN), "the PIN is never shown: {stderr}");
}

#[test]
fn a_wrong_pin_a_missing_key_or_a_key_that_is_not_ed25519_is_named_at_start_up() {
    let hsm = SoftHsm::new();
    hsm.keygen("p256", "EC:prime256v1");
    let cases = [
        ("missing", "no private key labelled \"missing\""),
        ("p256", "is not an Ed25519 key"),
    ];
    for (key, want) in cases {
        let (_dir, config) = config(&hsm.section(TOKEN, key));
        let (ok, _, stderr) = public_key(&hsm, &config);
        assert!(!ok && stderr.contains(want), "{key}: {stderr}");
    }
    hsm.keygen("checkpoints", "EC:edwards25519");
    std::fs::write(hsm.pin_file(), "000000\n").unwrap();
    let (_dir, config) = config(&hsm.section(TOKEN, "checkpoints"));
    let (ok, _, stderr) = public_key(&hsm, &config);
    assert!(
        !ok && stderr.contains("cannot log in to the token"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("000000"),
        "the PIN is never shown: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lost_at_run_time_writes_no_unsigned_checkpoint_and_is_counted() {
    let hsm = SoftHsm::new();
    hsm.keygen("checkpoints", "EC:edwards25519");
    let (dir, config) = config(&hsm.section(TOKEN, "checkpoints"));
    let (ok, pem, stderr) = public_key(&hsm, &config);
    assert!(ok, "{stderr}");
    let public = dir.path().join("audit-signing.pub.pem");
    std::fs::write(&public, &pem).unwrap();
    let mut pdp = hsm.serve(&config);
    decisions(pdp.addr(), 10, 2).await;
    // The token goes away under the running server.
    hsm.run("softhsm2-util", &["--delete-token", "--token", TOKEN]);
    let ids = decisions(pdp.addr(), 30, 2).await;
    assert_eq!(ids.len(), 30, "decisions are still answered and recorded");
    let (_, metrics) = pdp.http_get("/metrics");
    let errors = crate::support::metric(
        &crate::support::parse_metrics(&metrics),
        "portcullis_audit_checkpoint_sign_errors_total",
        &[],
    );
    assert!(errors >= 1.0, "{metrics}\nstderr:\n{}", pdp.stderr());
    assert!(
        pdp.stderr().contains("AUDIT CHECKPOINT NOT WRITTEN"),
        "{}",
        pdp.stderr()
    );
    assert!(pdp.terminate(Duration::from_secs(20)).success());

    let audit = dir.path().join("audit");
    let records = records_on_disk(&audit);
    assert_eq!(
        records.iter().filter(|r| r["kind"] == "decision").count(),
        40,
        "every decision is recorded while the token is gone"
    );
    assert!(
        records
            .iter()
            .all(|r| r["kind"] != "checkpoint" || r["checkpoint_sig"].is_string()),
        "no checkpoint without its signature"
    );
    // What was signed before the loss verifies with the public key; the
    // records after the last signed checkpoint are not covered by one.
    let (ok, out) = audit_verify(&audit, &["--public-key".as_ref(), public.as_os_str()]);
    assert!(ok, "{out}");
}
