//! Service configuration: one YAML file where every field has a default,
//! loaded once, checked completely, then immutable. Command-line flags
//! override the file (see `main.rs`). Policies are not configuration: they
//! live in the policy directory and reload on their own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration of one Portcullis process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Decision gRPC listener (ext_authz `Check`, health, reflection).
    pub listen: SocketAddr,
    /// Admin gRPC listener (PolicyService, health, reflection).
    pub admin_listen: SocketAddr,
    /// The policy directory.
    pub policies: PathBuf,
    /// Policy reloading.
    pub reload: ReloadConfig,
    /// gRPC server limits.
    pub server: ServerConfig,
    /// Authentication: JWT issuers and mTLS peers.
    pub authentication: AuthnConfig,
    /// Logging.
    pub log: LogConfig,
    /// Quota store and failure mode.
    pub quotas: QuotaSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            policies: PathBuf::from("policies"),
            reload: ReloadConfig::default(),
            server: ServerConfig::default(),
            authentication: AuthnConfig::default(),
            log: LogConfig::default(),
            quotas: QuotaSettings::default(),
        }
    }
}

/// When the policy directory is reloaded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Watch the directory and reload on change.
    pub watch: bool,
    /// Wait this long after the last change before reloading, so that an
    /// editor's or `git checkout`'s burst of writes becomes one reload.
    pub debounce_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            debounce_ms: 250,
        }
    }
}

/// Limits of the gRPC listeners, so one misbehaving client cannot exhaust
/// the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Maximum size of a request's header list, bytes.
    pub max_header_list_size: u32,
    /// Maximum size of a decoded gRPC message, bytes (Check carries bodies).
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive ping interval, seconds (0 disables).
    pub keepalive_interval_seconds: u64,
    /// Close a connection whose keepalive ping is not answered in this time.
    pub keepalive_timeout_seconds: u64,
    /// Per-request deadline inside the server, milliseconds.
    pub request_timeout_ms: u64,
    /// Concurrent requests per connection.
    pub concurrency_limit_per_connection: usize,
    /// On SIGTERM/SIGINT, wait this long for in-flight requests.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_concurrent_streams: 1024,
            max_header_list_size: 64 * 1024,
            max_message_bytes: 4 * 1024 * 1024,
            keepalive_interval_seconds: 30,
            keepalive_timeout_seconds: 10,
            request_timeout_ms: 2_000,
            concurrency_limit_per_connection: 1024,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// Authentication methods.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthnConfig {
    /// Allowed clock skew for `exp`, `nbf` and `iat`, seconds.
    pub leeway_seconds: u64,
    /// Largest bearer token accepted, bytes.
    pub max_token_bytes: usize,
    /// Trusted JWT issuers.
    pub jwt: Vec<IssuerConfig>,
    /// Peers identified by the mTLS principal Envoy reports.
    pub mtls: MtlsConfig,
}

impl Default for AuthnConfig {
    fn default() -> Self {
        AuthnConfig {
            leeway_seconds: 30,
            max_token_bytes: 8 * 1024,
            jwt: Vec::new(),
            mtls: MtlsConfig::default(),
        }
    }
}

/// One trusted JWT issuer with static keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (the token must name at least one).
    pub audiences: Vec<String>,
    /// A JWKS file with this issuer's public keys.
    pub jwks_file: PathBuf,
    /// Accepted signature algorithms (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Cedar entity type of the principal (`User` by default).
    #[serde(default = "default_user_type")]
    pub principal_type: String,
    /// Claim that names the principal.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claim that names the principal's organisation (its parent `Org`).
    #[serde(default)]
    pub org_claim: Option<String>,
    /// Cedar entity type of the organisation.
    #[serde(default = "default_org_type")]
    pub org_type: String,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_user_type() -> String {
    "User".into()
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_org_type() -> String {
    "Org".into()
}

/// Service-to-service callers identified by their mTLS peer identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtlsConfig {
    /// Accept Envoy's `source.principal` as an identity.
    pub enabled: bool,
    /// Cedar entity type of such principals.
    pub principal_type: String,
    /// Only principals starting with one of these prefixes are accepted
    /// (e.g. a SPIFFE trust domain). Empty: any.
    pub trusted_prefixes: Vec<String>,
}

impl Default for MtlsConfig {
    fn default() -> Self {
        MtlsConfig {
            enabled: true,
            principal_type: "ServiceAccount".into(),
            trusted_prefixes: vec!["spiffe://".into()],
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (structured, for production) or `text` (for a terminal).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `portcullis=debug,info`.
    /// `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}

/// A configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid YAML for our schema.
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
    /// Fields are individually well-formed but unusable.
    #[error("{path}: invalid configuration:\n  {}", problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads and checks a config file; relative paths in it resolve against
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.check(path)?;
        Ok(config)
    }

    /// Parses config YAML; `path` is for messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Malformed {
            path: path.to_path_buf(),
            message: yaml_message(&e),
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.policies.is_relative() {
            self.policies = base.join(&self.policies);
        }
        for issuer in &mut self.authentication.jwt {
            if issuer.jwks_file.is_relative() {
                issuer.jwks_file = base.join(&issuer.jwks_file);
            }
        }
    }

    /// Checks the whole configuration and reports every problem at once.
    pub fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let s = &self.server;
        if s.max_concurrent_streams == 0 {
            problems.push("server.max_concurrent_streams: must be at least 1".to_string());
        }
        if s.max_header_list_size < 1024 {
            problems.push("server.max_header_list_size: must be at least 1024 bytes".into());
        }
        if s.max_message_bytes < 1024 {
            problems.push("server.max_message_bytes: must be at least 1024 bytes".into());
        }
        if s.request_timeout_ms == 0 {
            problems.push("server.request_timeout_ms: must be at least 1".into());
        }
        if s.concurrency_limit_per_connection == 0 {
            problems.push("server.concurrency_limit_per_connection: must be at least 1".into());
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            problems.push(format!(
                "admin_listen: {} is also the decision listener (listen); give the admin API its own port",
                self.admin_listen
            ));
        }
        if self.authentication.leeway_seconds > 300 {
            problems.push(
                "authentication.leeway_seconds: at most 300 (RFC 8725 asks for a small leeway)"
                    .into(),
            );
        }
        if self.authentication.max_token_bytes < 256 {
            problems.push("authentication.max_token_bytes: at least 256".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, issuer) in self.authentication.jwt.iter().enumerate() {
            let at = format!("authentication.jwt[{i}]");
            if issuer.issuer.is_empty() {
                problems.push(format!("{at}.issuer: must not be empty"));
            } else if !seen.insert(issuer.issuer.as_str()) {
                problems.push(format!(
                    "{at}.issuer: '{}' is configured twice",
                    issuer.issuer
                ));
            }
            if issuer.audiences.is_empty() {
                problems.push(format!("{at}.audiences: name at least one audience"));
            }
            if issuer.algorithms.is_empty() {
                problems.push(format!("{at}.algorithms: name at least one algorithm"));
            }
            for alg in &issuer.algorithms {
                if let Err(e) = crate::authn::jwt::parse_algorithm(alg) {
                    problems.push(format!("{at}.algorithms: {e}"));
                }
            }
            for (field, ty) in [
                ("principal_type", &issuer.principal_type),
                ("org_type", &issuer.org_type),
            ] {
                if ty.parse::<cedar_policy::EntityTypeName>().is_err() {
                    problems.push(format!(
                        "{at}.{field}: '{ty}' is not a Cedar entity type name"
                    ));
                }
            }
        }
        let mtls = &self.authentication.mtls;
        if mtls
            .principal_type
            .parse::<cedar_policy::EntityTypeName>()
            .is_err()
        {
            problems.push(format!(
                "authentication.mtls.principal_type: '{}' is not a Cedar entity type name",
                mtls.principal_type
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!(
                "log.level: '{}' is not a valid filter: {e}",
                self.log.level
            ));
        }
        problems.extend(self.quotas.problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// The request deadline as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
    }
}

/// Where quota counters live and what happens when that store fails.
/// The limits themselves are policy (`quotas.yaml`), not configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaSettings {
    /// `local` (in-process, the default) or `redis` (shared by replicas).
    pub store: QuotaStoreKind,
    /// For `store: redis`: `redis://host:port/db` (a password in it is never
    /// logged).
    pub redis_url: Option<String>,
    /// For `store: redis_cluster`: seed nodes, `redis://host:port` each.
    pub redis_urls: Vec<String>,
    /// Bound on one store round trip (connect included), in milliseconds.
    /// Well under Envoy's 20 ms ratelimit timeout.
    pub timeout_ms: u64,
    /// `deny` (503), `allow` (uncounted) or `local` (in-process limits
    /// divided by `replicas`) while the store fails.
    pub on_store_error: crate::quota::OnStoreError,
    /// Replicas sharing the store: in `local` failure mode each enforces
    /// 1/replicas of every limit.
    pub replicas: u64,
    /// Most keys the in-process store holds (memory bound).
    pub max_local_keys: usize,
}

impl std::fmt::Debug for QuotaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaSettings")
            .field("store", &self.store)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_urls", &self.redis_urls.len())
            .field("timeout_ms", &self.timeout_ms)
            .field("on_store_error", &self.on_store_error)
            .field("replicas", &self.replicas)
            .field("max_local_keys", &self.max_local_keys)
            .finish()
    }
}

/// The quota store kind.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QuotaStoreKind {
    /// In-process counters.
    Local,
    /// Redis.
    Redis,
    /// Redis Cluster (seed nodes in `redis_urls`).
    #[serde(rename = "redis_cluster")]
    RedisCluster,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            store: QuotaStoreKind::Local,
            redis_url: None,
            redis_urls: Vec::new(),
            timeout_ms: 10,
            on_store_error: crate::quota::OnStoreError::Local,
            replicas: 1,
            max_local_keys: 1_000_000,
        }
    }
}

impl QuotaSettings {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.store == QuotaStoreKind::Redis && self.redis_url.is_none() {
            p.push(
                "quotas.redis_url: required with store: redis (e.g. redis://127.0.0.1:6379)".into(),
            );
        }
        if let Some(url) = &self.redis_url {
            if redis::Client::open(url.as_str()).is_err() {
                p.push("quotas.redis_url: not a Redis URL (redis://host:port/db)".into());
            }
        }
        if self.store == QuotaStoreKind::RedisCluster {
            if self.redis_urls.is_empty() {
                p.push("quotas.redis_urls: required with store: redis_cluster (seed nodes, e.g. [redis://127.0.0.1:7000])".into());
            }
            if redis::cluster::ClusterClient::new(self.redis_urls.iter().map(String::as_str))
                .is_err()
            {
                p.push("quotas.redis_urls: not Redis URLs (redis://host:port)".into());
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > 1000 {
            p.push("quotas.timeout_ms: between 1 and 1000".into());
        }
        if self.replicas == 0 {
            p.push("quotas.replicas: at least 1".into());
        }
        if self.max_local_keys < 1024 {
            p.push("quotas.max_local_keys: at least 1024".into());
        }
        p
    }

    /// The enforcement these settings describe.
    pub fn build(&self) -> Result<crate::quota::Quotas, String> {
        use std::sync::Arc;
        let timeout = Duration::from_millis(self.timeout_ms);
        let store: Arc<dyn crate::quota::QuotaStore> = match self.store {
            QuotaStoreKind::Local => Arc::new(crate::quota::local::LocalStore::new(
                self.max_local_keys,
                Arc::new(crate::quota::SystemClock),
            )),
            QuotaStoreKind::Redis => Arc::new(crate::quota::redis::RedisStore::new(
                self.redis_url.as_deref().unwrap_or_default(),
                timeout,
            )?),
            QuotaStoreKind::RedisCluster => Arc::new(crate::quota::redis::RedisStore::cluster(
                &self.redis_urls,
                timeout,
            )?),
        };
        Ok(crate::quota::Quotas::new(
            store,
            timeout,
            self.on_store_error,
            self.replicas,
            self.max_local_keys,
        ))
    }
}

/// A serde_yaml_ng error as `line L column C: message`.
pub(crate) fn yaml_message(e: &serde_yaml_ng::Error) -> String {
    match e.location() {
        Some(loc) => format!("line {} column {}: {e}", loc.line(), loc.column()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("", Path::new("c.yaml")).unwrap();
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 50051)));
        assert!(c.authentication.jwt.is_empty());
        c.check(Path::new("c.yaml")).unwrap();
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::parse("listne: 1.2.3.4:5\n", Path::new("c.yaml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("listne"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn bad_address_is_reported_with_line() {
        let err = Config::parse("\nlisten: nowhere\n", Path::new("c.yaml")).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = r#"
server:
  max_concurrent_streams: 0
authentication:
  jwt:
    - issuer: ""
      audiences: []
      jwks_file: k.json
      algorithms: [HS256, XX1]
log:
  level: "=bad=["
"#;
        let c = Config::parse(text, Path::new("c.yaml")).unwrap();
        let err = c.check(Path::new("c.yaml")).unwrap_err().to_string();
        for needle in [
            "server.max_concurrent_streams",
            "authentication.jwt[0].issuer",
            "authentication.jwt[0].audiences",
            "HS256",
            "XX1",
            "log.level",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(
            &path,
            "policies: pol\nauthentication:\n  jwt:\n    - issuer: i\n      audiences: [a]\n      jwks_file: keys/j.json\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.policies, dir.path().join("pol"));
        assert_eq!(
            c.authentication.jwt[0].jwks_file,
            dir.path().join("keys/j.json")
        );
    }
}
