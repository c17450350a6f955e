//! Service configuration: one YAML file where every field has a default,
//! loaded once, checked completely, then immutable. Each stage owns its
//! section (`authn::config`, `audit::config`, `quota::settings`,
//! `residency`, `anomaly`, `policy::reload`); this file holds the whole,
//! the listeners' own sections (server limits, TLS, logging) and the
//! checks that span sections. Command-line flags override the file (see
//! `cli`). Policies are not configuration: they live in the policy
//! directory and reload on their own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::audit::AuditConfig;
use crate::authn::AuthnConfig;
use crate::policy::reload::ReloadConfig;
use crate::quota::{QuotaSettings, QuotaStoreKind};
use crate::residency::ResidencyConfig;
use crate::shared_redis::SharedRedis;

pub mod forward_auth;
mod paths;

pub use forward_auth::ForwardAuthConfig;

/// The whole configuration of one Portcullis process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Decision gRPC listener (ext_authz `Check`, health, reflection).
    pub listen: SocketAddr,
    /// Admin gRPC listener (PolicyService, health, reflection).
    pub admin_listen: SocketAddr,
    /// Operations HTTP listener: `/metrics` (Prometheus), `/healthz`,
    /// `/readyz`.
    pub http_listen: SocketAddr,
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
    /// Serve the policy directory as it was at this git revision (commit,
    /// tag or branch, resolved once at start) instead of the files on disk.
    /// Rolling back is pinning the previous revision.
    pub policy_revision: Option<String>,
    /// The audit trail.
    pub audit: AuditConfig,
    /// TLS (and required client certificates) on the decision listener.
    pub tls: TlsConfig,
    /// Quota store and failure mode.
    pub quotas: QuotaSettings,
    /// Anomaly detection (surges, repeated failures, `context.risk`).
    pub anomaly: crate::anomaly::AnomalyConfig,
    /// Export of tracing spans over OTLP/gRPC; none: no export.
    pub otlp: Option<crate::otlp::OtlpConfig>,
    /// The region this gateway serves, for data residency.
    pub residency: ResidencyConfig,
    /// The forward-auth HTTP decision listener (nginx, Caddy, Traefik,
    /// Envoy's HTTP mode, Gateway API); off unless `forward_auth.listen`
    /// is set.
    pub forward_auth: ForwardAuthConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            policies: PathBuf::from("policies"),
            reload: ReloadConfig::default(),
            server: ServerConfig::default(),
            authentication: AuthnConfig::default(),
            log: LogConfig::default(),
            policy_revision: None,
            audit: AuditConfig::default(),
            tls: TlsConfig::default(),
            quotas: QuotaSettings::default(),
            anomaly: crate::anomaly::AnomalyConfig::default(),
            otlp: None,
            residency: ResidencyConfig::default(),
            forward_auth: ForwardAuthConfig::default(),
        }
    }
}

/// TLS on the decision listener. Without `cert_file` the listener speaks
/// plaintext gRPC (fine on loopback or inside a pod).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// The server's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// When set, clients must present a certificate issued by this CA
    /// (PEM): only the gateway may call the PDP.
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes, ms.
    pub reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            reload_interval_ms: 1_000,
        }
    }
}

/// Limits of the gRPC listeners, so one misbehaving client cannot exhaust
/// the server. What clients can hold open is bounded twice: per connection
/// (`max_concurrent_streams`, HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`,
/// RFC 9113 section 6.5.2) and per listener (`max_pending_requests`); a
/// stream that sends its headers but not its body is ended after
/// `request_timeout_ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP/2 concurrent streams per connection (RFC 9113 recommends no
    /// less than 100); a client over it waits for one of its streams to end.
    pub max_concurrent_streams: u32,
    /// Requests in progress at once on one listener, over all its
    /// connections; one more is refused at once with `RESOURCE_EXHAUSTED`
    /// (metric `portcullis_requests_over_budget_total`).
    pub max_pending_requests: usize,
    /// Maximum size of a request's header list, bytes.
    pub max_header_list_size: u32,
    /// Maximum size of a decoded gRPC message, bytes (Check carries bodies).
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive ping interval, seconds (0 disables).
    pub keepalive_interval_seconds: u64,
    /// Close a connection whose keepalive ping is not answered in this time.
    pub keepalive_timeout_seconds: u64,
    /// Per-request deadline inside the server, milliseconds, from the
    /// request's headers to its answer (so also the longest a request may
    /// take to send its body).
    pub request_timeout_ms: u64,
    /// Concurrent requests per connection.
    pub concurrency_limit_per_connection: usize,
    /// On SIGTERM/SIGINT, wait this long for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// Threads of the async runtime that serves every listener, 1 to
    /// [`MAX_WORKER_THREADS`]; 0 (the default): tokio's choice, one per CPU
    /// this process may use (its affinity mask and cgroup CPU quota), or
    /// `TOKIO_WORKER_THREADS` when set. One thread (given or resolved)
    /// runs tokio's current-thread scheduler (`server::runtime`): no
    /// thread wakes another and no two contend for an HTTP/2 connection's
    /// lock (Envoy sends a worker's calls over one connection); the rest of
    /// the node's CPUs stay for Envoy. More run the multi-thread scheduler.
    pub worker_threads: usize,
}

/// The most runtime threads `server.worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_concurrent_streams: 100,
            max_pending_requests: 8_192,
            max_header_list_size: 64 * 1024,
            max_message_bytes: 4 * 1024 * 1024,
            keepalive_interval_seconds: 30,
            keepalive_timeout_seconds: 10,
            request_timeout_ms: 2_000,
            concurrency_limit_per_connection: 1024,
            shutdown_grace_ms: 10_000,
            worker_threads: 0,
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

/// The longest duration a setting may give: one year, in seconds. Timers
/// add durations to the current instant, and a sum past what the clock can
/// represent panics the task that holds the timer (a keepalive of
/// `u64::MAX` seconds broke every gRPC connection while `/healthz` still
/// answered); no interval, timeout, window or lifetime an operator means is
/// longer.
pub const MAX_DURATION_SECONDS: u64 = 365 * 24 * 60 * 60;

/// Adds a problem for every `*_seconds` or `*_ms` setting in `value` (the
/// config file as YAML, `at` its dotted path so far) whose integer is more
/// than [`MAX_DURATION_SECONDS`]: every duration setting is named so, in
/// every section, so a new one is bounded without a line of its own.
fn durations_past_bound(value: &serde_yaml_ng::Value, at: &mut String, problems: &mut Vec<String>) {
    use serde_yaml_ng::Value;
    let len = at.len();
    match value {
        Value::Mapping(map) => {
            for (key, v) in map {
                let Some(key) = key.as_str() else { continue };
                if !at.is_empty() {
                    at.push('.');
                }
                at.push_str(key);
                let bound = if key.ends_with("_seconds") {
                    Some((MAX_DURATION_SECONDS, "seconds"))
                } else if key.ends_with("_ms") {
                    Some((MAX_DURATION_SECONDS * 1000, "milliseconds"))
                } else {
                    None
                };
                match (bound, v.as_u64()) {
                    (Some((max, unit)), Some(n)) if n > max => problems.push(format!(
                        "{at}: {n} is longer than a year; at most {max} {unit}"
                    )),
                    _ => durations_past_bound(v, at, problems),
                }
                at.truncate(len);
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                at.push_str(&format!("[{i}]"));
                durations_past_bound(v, at, problems);
                at.truncate(len);
            }
        }
        Value::Tagged(tagged) => durations_past_bound(&tagged.value, at, problems),
        _ => {}
    }
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
        let mut config: Config =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Malformed {
                path: path.to_path_buf(),
                message: crate::yaml::message_in(&e, text),
            })?;
        // It parsed as a `Config`, so it parses as a YAML value too.
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap_or_default();
        let mut problems = Vec::new();
        durations_past_bound(&value, &mut String::new(), &mut problems);
        problems.extend(config.empty_paths());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
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
        if s.max_pending_requests == 0 {
            problems.push("server.max_pending_requests: must be at least 1".into());
        }
        if s.concurrency_limit_per_connection == 0 {
            problems.push("server.concurrency_limit_per_connection: must be at least 1".into());
        }
        if s.worker_threads > MAX_WORKER_THREADS {
            problems.push(format!(
                "server.worker_threads: {} is more than {MAX_WORKER_THREADS}; give the number of runtime threads (0: one per CPU)",
                s.worker_threads
            ));
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            problems.push(format!(
                "admin_listen: {} is also the decision listener (listen); give the admin API its own port",
                self.admin_listen
            ));
        }
        for (name, addr) in [("listen", self.listen), ("admin_listen", self.admin_listen)] {
            if self.http_listen == addr && addr.port() != 0 {
                problems.push(format!(
                    "http_listen: {} is also the {name} listener; give the HTTP listener its own port",
                    self.http_listen
                ));
            }
        }
        if let Some(fa) = self.forward_auth.listen.filter(|a| a.port() != 0) {
            for (name, addr) in [
                ("listen", self.listen),
                ("admin_listen", self.admin_listen),
                ("http_listen", self.http_listen),
            ] {
                if fa == addr {
                    problems.push(format!(
                        "forward_auth.listen: {fa} is also the {name} listener; give the forward-auth listener its own port"
                    ));
                }
            }
        }
        problems.extend(self.forward_auth.problems());
        let tls = &self.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            problems.push("tls: set both cert_file and key_file (or neither)".into());
        }
        if tls.client_ca_file.is_some() && tls.cert_file.is_none() {
            problems.push("tls.client_ca_file: requires cert_file and key_file".into());
        }
        if tls.reload_interval_ms == 0 {
            problems.push("tls.reload_interval_ms: must be at least 1".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!(
                "log.level: '{}' is not a valid filter: {e}",
                self.log.level
            ));
        }
        problems.extend(
            self.authentication
                .problems(&self.policies, self.quotas.store != QuotaStoreKind::Local),
        );
        problems.extend(self.residency.problems());
        problems.extend(self.audit.problems());
        problems.extend(self.quotas.problems());
        problems.extend(self.anomaly.problems());
        if let Some(otlp) = &self.otlp {
            problems.extend(otlp.problems());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// The Redis connections this configuration names: the quota store's
    /// and authentication's. Authentication shares the quota store's
    /// connection (and its timeout) unless `authentication.redis` names one
    /// of its own. Connections are made lazily, on first use.
    pub fn redis_connections(
        &self,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Result<(Option<Arc<SharedRedis>>, Option<crate::authn::AuthnRedis>), String> {
        let quotas = self.quotas.redis(tasks)?;
        let authn = match &self.authentication.redis {
            Some(r) => {
                let timeout = Duration::from_millis(r.timeout_ms);
                let redis = match &r.url {
                    Some(url) => SharedRedis::single(url, timeout, "authentication.redis.url")?,
                    None => SharedRedis::cluster(&r.urls, timeout, "authentication.redis.urls")?,
                }
                .owned_by(tasks);
                Some(crate::authn::AuthnRedis {
                    redis: Arc::new(redis),
                    timeout,
                })
            }
            // Sharing the quota store's connection: authentication keeps
            // its own, shorter bound (its default), since a quota call may
            // wait longer for a busy store (slow is not down) than a
            // credential check should.
            None => quotas.clone().map(|redis| crate::authn::AuthnRedis {
                redis,
                timeout: Duration::from_millis(
                    self.quotas
                        .timeout_ms
                        .min(crate::authn::config::AuthnRedisConfig::default().timeout_ms),
                ),
            }),
        };
        Ok((quotas, authn))
    }

    /// The request deadline as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
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
    fn forward_auth_is_off_by_default_and_checked_when_set() {
        let c = Config::parse("", Path::new("c.yaml")).unwrap();
        assert!(c.forward_auth.listen.is_none());
        let c = Config::parse(
            "forward_auth:\n  listen: 127.0.0.1:9090\n  trusted_proxies: [10.0.0.0/8, '::1']\n  path_prefix: /\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(c.forward_auth.trusted_proxies.len(), 2);
        let err = c.check(Path::new("c.yaml")).unwrap_err().to_string();
        for needle in [
            "forward_auth.listen: 127.0.0.1:9090 is also the http_listen listener",
            "forward_auth.path_prefix: '/'",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
        let err = Config::parse(
            "forward_auth:\n  trusted_proxies: [10.0.0.0/40]\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("prefix length must be 0 to 32"), "{err}");
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::parse("listne: 1.2.3.4:5\n", Path::new("c.yaml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("listne"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn a_repeated_setting_is_reported_at_its_repetition_not_at_line_1() {
        let text = "listen: 127.0.0.1:1\nadmin_listen: 127.0.0.1:2\n\nlisten: 127.0.0.1:3\n";
        let err = Config::parse(text, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 4 column 1: duplicate field `listen`"),
            "{err}"
        );
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
  max_pending_requests: 0
  worker_threads: 5000
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
            "server.max_pending_requests",
            "server.worker_threads: 5000 is more than 1024",
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
    fn a_duration_longer_than_a_year_is_refused_naming_its_setting() {
        // u64::MAX seconds of keepalive loaded, then panicked every gRPC
        // connection's timer; of polling, the reload poller's.
        let text = r#"
server:
  keepalive_interval_seconds: 18446744073709551615
  request_timeout_ms: 31536000001
reload:
  poll_seconds: 9223372036854775807
authentication:
  jwt:
    - issuer: "https://idp.example/"
      audiences: [api]
      jwks_file: k.json
      max_lifetime_seconds: 31536001
"#;
        let err = Config::parse(text, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        for needle in [
            "server.keepalive_interval_seconds: 18446744073709551615 is longer than a year; at most 31536000 seconds",
            "server.request_timeout_ms: 31536000001 is longer than a year; at most 31536000000 milliseconds",
            "reload.poll_seconds: 9223372036854775807",
            "authentication.jwt[0].max_lifetime_seconds: 31536001",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
        let a_year =
            "server:\n  keepalive_interval_seconds: 31536000\n  request_timeout_ms: 31536000000\n";
        let c = Config::parse(a_year, Path::new("c.yaml")).unwrap();
        assert_eq!(c.server.keepalive_interval_seconds, MAX_DURATION_SECONDS);
    }

    #[test]
    fn authentication_redis_settings_are_checked() {
        let check = |text: &str| {
            Config::parse(text, Path::new("c.yaml"))
                .unwrap()
                .check(Path::new("c.yaml"))
                .map_err(|e| e.to_string())
        };
        // Redis features without a Redis.
        let err = check(
            "authentication:\n  failures: {store: redis}\n  api_keys: {redis: true, file: /k.yaml}\n",
        )
        .unwrap_err();
        for needle in [
            "authentication.failures.store: redis needs a Redis; configure authentication.redis or a Redis quota store",
            "authentication.api_keys.redis: needs a Redis",
            "authentication.api_keys: set either file or redis: true, not both",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
        let err = check("authentication:\n  redis: {timeout_ms: 0}\n").unwrap_err();
        assert!(err.contains("authentication.redis: set url"), "{err}");
        assert!(err.contains("authentication.redis.timeout_ms"), "{err}");
        let err = check("authentication:\n  redis: {url: 'http://x', urls: [redis://a:1]}\n")
            .unwrap_err();
        assert!(err.contains("set url or urls, not both"), "{err}");
        let err = check("authentication:\n  redis: {url: 'http://x'}\n").unwrap_err();
        assert!(
            err.contains("authentication.redis.url: not a Redis URL"),
            "{err}"
        );
        // A Redis of its own, or the quota store's, will do.
        check("authentication:\n  redis: {url: 'redis://127.0.0.1:6379'}\n  api_keys: {redis: true}\n  failures: {store: redis}\n").unwrap();
        check("quotas: {store: redis, redis_url: 'redis://127.0.0.1:6379'}\nauthentication:\n  api_keys: {redis: true}\n").unwrap();
    }

    #[test]
    fn authentication_shares_the_quota_redis_unless_it_has_its_own() {
        let quota_only = Config::parse(
            "quotas: {store: redis, redis_url: 'redis://127.0.0.1:6379', timeout_ms: 7}\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        let (quotas, authn) = quota_only
            .redis_connections(&tokio_util::task::TaskTracker::new())
            .unwrap();
        let (quotas, authn) = (quotas.unwrap(), authn.unwrap());
        assert!(Arc::ptr_eq(&quotas, &authn.redis), "one shared connection");
        assert_eq!(authn.timeout, Duration::from_millis(7));

        let own = Config::parse(
            "quotas: {store: redis, redis_url: 'redis://127.0.0.1:6379'}\nauthentication:\n  redis: {urls: ['redis://127.0.0.1:7000'], timeout_ms: 40}\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        let (quotas, authn) = own
            .redis_connections(&tokio_util::task::TaskTracker::new())
            .unwrap();
        let authn = authn.unwrap();
        assert!(!Arc::ptr_eq(&quotas.unwrap(), &authn.redis));
        assert!(authn.redis.is_cluster());
        assert_eq!(authn.timeout, Duration::from_millis(40));

        let (quotas, authn) = Config::default()
            .redis_connections(&tokio_util::task::TaskTracker::new())
            .unwrap();
        assert!(quotas.is_none() && authn.is_none());
    }

    #[test]
    fn authentication_sources_secrets_and_tls_are_checked() {
        let text = r#"
policies: /srv/policies
authentication:
  jwt:
    - issuer: a
      audiences: [x]
      jwks_file: k.json
      jwks_url: "https://idp.example/jwks"
    - issuer: b
      audiences: [x]
      algorithms: [HS256]
    - issuer: c
      audiences: [x]
      jwks_url: "file:///etc/passwd"
  api_keys:
    file: /srv/policies/keys.yaml
  introspection:
    endpoint: "not a url"
tls:
  cert_file: server.pem
"#;
        let c = Config::parse(text, Path::new("c.yaml")).unwrap();
        let err = c.check(Path::new("c.yaml")).unwrap_err().to_string();
        for needle in [
            "authentication.jwt[0]: set exactly one of",
            "authentication.jwt[1]: set exactly one of",
            "authentication.jwt[1].algorithms: 'HS256' is symmetric",
            "authentication.jwt[2].jwks_url",
            "authentication.api_keys.file: keep the keys file outside",
            "authentication.introspection.endpoint",
            "authentication.introspection.client_id",
            "tls: set both cert_file and key_file",
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
            Some(dir.path().join("keys/j.json"))
        );
    }

    #[test]
    fn audit_settings_are_checked_and_resolved() {
        let err = Config::parse("audit:\n  on_full: sometimes\n", Path::new("c.yaml")).unwrap_err();
        assert!(
            err.to_string().contains("on_full") || err.to_string().contains("sometimes"),
            "{err}"
        );
        let c = Config::parse(
            "audit:\n  rotate_bytes: 10\n  checkpoint_every: 0\n  queue_size: 0\n  on_full: fail_closed\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(c.audit.on_full, crate::audit::OnFull::FailClosed);
        let err = c.check(Path::new("c.yaml")).unwrap_err().to_string();
        for field in [
            "audit.rotate_bytes",
            "audit.checkpoint_every",
            "audit.queue_size",
        ] {
            assert!(err.contains(field), "missing {field} in {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, "audit:\n  hmac_key_file: keys/audit.key\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.audit.directory, dir.path().join("audit"));
        assert_eq!(
            c.audit.hmac_key_file,
            Some(dir.path().join("keys/audit.key"))
        );
    }
}
