//! `scripts/profile-stages.py`: the server's sampled CPU per request by
//! stage, from the collapsed stacks and load report `scripts/profile.sh`
//! writes. Fed small hand-written profiles whose answer is known.

use std::path::Path;
use std::process::{Command, Output};

use crate::support;

/// Writes NAME.folded (the stacks, `frames weight_ns` per line) and
/// NAME.load.txt (the load generator's table, REQUESTS sent) under DIR.
fn profile(dir: &Path, name: &str, stacks: &[(&str, u64)], requests: u64) -> String {
    let folded: String = stacks.iter().map(|(s, w)| format!("{s} {w}\n")).collect();
    std::fs::write(dir.join(format!("{name}.folded")), folded).unwrap();
    std::fs::write(
        dir.join(format!("{name}.load.txt")),
        format!(
            "Check, mix Allowed, concurrency 64, connections 4\n\
             server       requests  errors       req/s   p50 us   p90 us   p99 us p99.9 us   max us\n\
             portcullis   {requests:>8}       0       20618     2549     5135     8247    18479    28847\n"
        ),
    )
    .unwrap();
    dir.join(name).to_str().unwrap().to_string()
}

fn stages(names: &[&str]) -> Output {
    Command::new("python3")
        .arg(support::repo().join("scripts/profile-stages.py"))
        .args(names)
        .output()
        .expect("python3 runs (scripts/install-test-tools.sh needs it too)")
}

/// The error message of a run that must fail.
fn refusal(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("Traceback"), "{err}");
    err
}

/// The row LABEL's numbers.
fn row(out: &Output, label: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row {label:?} in:\n{text}"));
    line[label.len()..]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

const DECIDE: &str = "tokio::runtime::task::raw::poll;h2::proto::streams::Streams::poll;\
     portcullis::pipeline::access::{{closure}}";

#[test]
fn profile_stages_gives_each_sample_to_the_first_stage_naming_a_frame_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let name = profile(
        dir.path(),
        "check",
        &[
            // 2 ms in the quota stage, under the decision and HTTP/2.
            (
                &format!(
                    "{DECIDE};portcullis::pipeline::stages::charge_descriptors::{{{{closure}}}}"
                ),
                2_000_000,
            ),
            // The audit file's write(2): a system call first, though the
            // audit task is on the stack too.
            (
                "portcullis::audit::writer::Chain::run_task::{{closure}};__libc_write;\
                 entry_SYSCALL_64;do_syscall_64;ksys_write;vfs_write",
                500_000,
            ),
            (DECIDE, 1_000_000),
            ("h2::codec::framed_read::FrameDecoder::decode", 250_000),
            ("h2::proto::connection::Connection::poll", 750_000),
            ("main;unknown", 10_000),
        ],
        1_000,
    );
    let out = stages(&[&name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // µs per request: ns / 1,000 requests / 1,000.
    assert_eq!(row(&out, "decision: quota charge"), ["2.00"]);
    assert_eq!(row(&out, "syscall: write"), ["0.50"]);
    assert_eq!(row(&out, "decision: other stages"), ["1.00"]);
    assert_eq!(row(&out, "HTTP/2 frames read"), ["0.25"]);
    assert_eq!(row(&out, "HTTP/2 and tonic, other"), ["0.75"]);
    assert_eq!(row(&out, "other"), ["0.01"]);
    assert_eq!(row(&out, "total"), ["4.51"]);
    // Stages no sample reached are left out, and one profile has no ratio.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("audit writer task"), "{text}");
    assert!(!text.contains("2nd/1st"), "{text}");
}

#[test]
fn profile_stages_puts_two_profiles_side_by_side_with_the_second_over_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let burst = profile(dir.path(), "check", &[(DECIDE, 3_000_000)], 1_000);
    let alone = profile(
        dir.path(),
        "check@3000",
        &[(DECIDE, 1_800_000), ("x;do_epoll_wait", 300_000)],
        300,
    );
    let out = stages(&[&burst, &alone]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        row(&out, "decision: other stages"),
        ["3.00", "6.00", "2.00"]
    );
    // A stage only the second profile has: no ratio to give.
    assert_eq!(row(&out, "syscall: epoll_wait"), ["0.00", "1.00", "-"]);
    assert_eq!(row(&out, "total"), ["3.00", "7.00", "2.33"]);
}

#[test]
fn profile_stages_refuses_a_missing_profile_or_a_load_report_without_requests() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("rls").to_str().unwrap().to_string();
    let err = refusal(&stages(&[&missing]));
    assert!(
        err.contains("rls.load.txt: No such file or directory (run scripts/profile.sh first)"),
        "{err}"
    );

    let name = profile(dir.path(), "check", &[(DECIDE, 1)], 0);
    let err = refusal(&stages(&[&name]));
    assert!(
        err.contains("check.load.txt: the load sent no request"),
        "{err}"
    );

    std::fs::write(dir.path().join("check.load.txt"), "nothing here\n").unwrap();
    let err = refusal(&stages(&[&name]));
    assert!(
        err.contains("has no server line with a request count"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("check.folded"),
        "a stack without a weight\n",
    )
    .unwrap();
    profile(dir.path(), "other", &[], 10);
    std::fs::copy(
        dir.path().join("other.load.txt"),
        dir.path().join("check.load.txt"),
    )
    .unwrap();
    let err = refusal(&stages(&[&name]));
    assert!(
        err.contains("check.folded: not a collapsed stack line"),
        "{err}"
    );
}
