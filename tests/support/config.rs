//! Portcullis configuration files for the tests: the fixture issuer and the
//! bundled policies, every listener on port 0, written where a test asks.

use std::path::{Path, PathBuf};

use super::jwt::{AUDIENCE, ISSUER};
use super::paths::{fixture, policies_dir};

/// Writes a Portcullis config into `dir` that trusts the fixture issuer and
/// uses the bundled policies, all paths absolute; returns its path.
///
/// Both listeners are on port 0 so that tests can run in parallel; the
/// ports are learnt from the `listening <kind> <addr>` lines on stdout.
pub fn write_config(dir: &Path) -> PathBuf {
    let q = |p: PathBuf| serde_json::to_string(&p.display().to_string()).unwrap();
    let text = format!(
        r#"# Written by tests/support/config.rs
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
http_listen: "127.0.0.1:0"
policies: {policies}
authentication:
  leeway_seconds: 30
  jwt:
    - issuer: "{ISSUER}"
      audiences: ["{AUDIENCE}"]
      jwks_file: {jwks}
      algorithms: ["ES256", "RS256"]
      principal_type: "User"
      org_claim: "org"
"#,
        policies = q(policies_dir()),
        jwks = q(fixture("keys/test-issuer.jwks.json")),
    );
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, text).expect("write portcullis config");
    path
}

/// Writes the config of [`write_config`] into `dir` with `extra` YAML
/// (top-level keys such as `audit:`) appended; returns its path.
pub fn write_config_with(dir: &Path, extra: &str) -> PathBuf {
    let path = write_config(dir);
    let mut text = std::fs::read_to_string(&path).expect("read written config");
    text.push_str(extra);
    std::fs::write(&path, text).expect("write portcullis config");
    path
}
