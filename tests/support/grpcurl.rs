//! grpcurl 1.8.6 against a running Portcullis, through server reflection
//! only (no proto files), as an operator calls it.

use std::process::{Command, Output};

use super::process::tool;
use super::server::Portcullis;

/// Runs plaintext grpcurl with `args`, bounded by its own timeouts.
pub fn grpcurl_output(args: &[&str]) -> Output {
    Command::new(tool("grpcurl"))
        .args(["-plaintext", "-connect-timeout", "5", "-max-time", "15"])
        .args(args)
        .output()
        .expect("run grpcurl")
}

/// grpcurl that must succeed; returns stdout. On failure, panics with
/// grpcurl's output and `pdp`'s logs.
pub fn grpcurl(pdp: &Portcullis, args: &[&str]) -> String {
    let output = grpcurl_output(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}\nportcullis stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        pdp.stderr()
    );
    stdout
}
