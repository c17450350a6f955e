//! Portcullis configurations for the tests: files for the binary, and
//! `Config` values for servers started in the test process. Every listener
//! is on `127.0.0.1:0`, so that tests run in parallel; the fixture issuer
//! and the bundled policies unless a test says otherwise.

use std::path::{Path, PathBuf};

use portcullis::authn::config::IssuerConfig;
use portcullis::config::Config;

use super::jwt::{AUDIENCE, ISSUER};
use super::paths::{fixture, policies_dir};

/// Every listener on port 0; the ports are learnt once bound (from the
/// binary's `listening <kind> <addr>` lines, or from `Running`).
const LOOPBACK_LISTENERS: &str = r#"listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
http_listen: "127.0.0.1:0"
"#;

/// `path` as a YAML (JSON) string.
fn quoted(path: PathBuf) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap()
}

/// Writes a Portcullis config into `dir` that trusts the fixture issuer and
/// uses the bundled policies, all paths absolute; returns its path.
pub fn write_config(dir: &Path) -> PathBuf {
    let text = format!(
        r#"# Written by tests/support/config.rs
{LOOPBACK_LISTENERS}policies: {policies}
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
        policies = quoted(policies_dir()),
        jwks = quoted(fixture("keys/test-issuer.jwks.json")),
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

/// The head of a config a test assembles as YAML: every listener on
/// `127.0.0.1:0`, the bundled policies, no file watching. The test appends
/// the sections it is about (`authentication:`, `tls:`).
pub fn server_yaml() -> String {
    format!(
        "{LOOPBACK_LISTENERS}policies: {}\nreload: {{ watch: false }}\n",
        quoted(policies_dir())
    )
}

/// Parses `yaml` and checks it completely, as the loader does a file named
/// `name`; panics with every problem.
pub fn parse_config(yaml: &str, name: &str) -> Config {
    let path = Path::new(name);
    let config = Config::parse(yaml, path).unwrap_or_else(|e| panic!("{name}: {e}"));
    config.check(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    config
}

/// A config for a server in the test process: every listener on
/// `127.0.0.1:0`, the policy directory `policies`, the rest as
/// `Config::default()` (a test sets what it is about with `..`).
/// [`super::TestServer::start`] gives it an audit trail of its own.
pub fn in_process_config(policies: &Path) -> Config {
    let loopback = "127.0.0.1:0".parse().unwrap();
    Config {
        listen: loopback,
        admin_listen: loopback,
        http_listen: loopback,
        policies: policies.to_path_buf(),
        ..Config::default()
    }
}

/// The fixture issuer ([`ISSUER`], key set `tests/fixtures/keys`), as an
/// `authentication.jwt` entry with the `org` claim naming the caller's
/// organisation.
pub fn fixture_issuer() -> IssuerConfig {
    serde_yaml_ng::from_str(&format!(
        "issuer: \"{ISSUER}\"\naudiences: [\"{AUDIENCE}\"]\njwks_file: {}\norg_claim: org\n",
        quoted(fixture("keys/test-issuer.jwks.json"))
    ))
    .expect("the fixture issuer parses")
}
