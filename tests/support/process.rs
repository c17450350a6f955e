//! Child processes the tests run for real: finding the tool, tying its life
//! to the test's, stopping it and waiting for it with a bound, and reading
//! what it wrote. Which processes to run is the other modules' business.
//!
//! Tools come from `PORTCULLIS_<TOOL>`, then `<repo>/.tools/bin`, then `PATH`;
//! a missing tool is a test failure that says to run
//! `scripts/install-test-tools.sh`, never a silent skip.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use super::paths::repo;

/// Finds a tool the tests run for real: `envoy`, `grpcurl`, `redis-server`,
/// `nginx` or `caddy`.
///
/// Looks at `PORTCULLIS_<NAME>` (upper case, `-` as `_`), then
/// `<repo>/.tools/bin/<name>`, then `PATH`. Panics when it finds none.
pub fn tool(name: &str) -> PathBuf {
    let var = format!("PORTCULLIS_{}", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        let path = PathBuf::from(path);
        assert!(
            is_executable(&path),
            "{var}={} is not an executable file; unset it to use \
             .tools/bin/{name} from `scripts/install-test-tools.sh`",
            path.display()
        );
        return path;
    }
    let local = repo().join(".tools/bin").join(name);
    if is_executable(&local) {
        return local;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return candidate;
            }
        }
    }
    panic!(
        "`{name}` not found (looked at ${var}, {}, and PATH). \
         Run `scripts/install-test-tools.sh` (as root) to install the test tools, \
         or set {var} to the binary.",
        local.display()
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Makes a child die with the test process even when the test process is
/// killed without running destructors (Ctrl-C on cargo, a CI timeout), so
/// no Envoy or Portcullis outlives its test run on a shared machine.
pub(super) fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A file's text, lossily decoded; a placeholder saying why when it cannot
/// be read (logs of a process that never started).
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// The last `lines` lines of `text` (a process's log, for a failure message).
pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Kills `child` if it still runs and reaps it; while the test is
/// panicking, prints the last `lines` lines of its `log` under `what`, so
/// that a failure shows what the process said. For `Drop` impls.
pub(super) fn kill_on_drop(child: &mut Child, what: &str, log: &str, lines: usize) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
    if thread::panicking() {
        eprintln!(
            "--- {what} (last {lines} lines) ---\n{}\n--- end ---",
            tail(log, lines)
        );
    }
}

/// Sends SIGTERM to `child` and waits at most `timeout` for it to exit.
pub(super) fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: plain syscall on a pid we own and have not reaped yet.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    wait_timeout(child, timeout)
}

/// Waits at most `timeout` for `child` to exit.
pub(super) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("try_wait on child") {
            Some(status) => return Some(status),
            None if Instant::now() >= deadline => return None,
            None => thread::sleep(Duration::from_millis(20)),
        }
    }
}
