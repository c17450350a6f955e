//! Service configuration: one YAML file where every field has a default,
//! loaded once, checked completely, then immutable. Command-line flags
//! override the file (see `main.rs`). Policies are not configuration: they
//! live in the policy directory and reload on their own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::shared_redis::SharedRedis;

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
}

/// Where the gateway's region comes from: fixed in this configuration, or
/// a header the gateway itself sets (and overwrites, so a client cannot
/// choose it; see deploy/envoy.yaml). With neither, orgs that restrict
/// their regions are refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResidencyConfig {
    /// The region, e.g. `eu-west-1`.
    pub region: Option<String>,
    /// A lower-case header the gateway sets to its region (overrides
    /// `region` when present).
    pub region_header: Option<String>,
}

impl ResidencyConfig {
    /// The gateway's region for a request with these headers.
    pub fn region_of(&self, headers: &std::collections::HashMap<String, String>) -> Option<String> {
        self.region_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .or_else(|| self.region.clone())
    }
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

/// When the policy directory is reloaded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Watch the directory and reload on change.
    pub watch: bool,
    /// Wait this long after the last change before reloading, so that an
    /// editor's or `git checkout`'s burst of writes becomes one reload.
    pub debounce_ms: u64,
    /// Also reload every this many seconds (0: off), for directories that
    /// change by a symlink swap (git-sync, ConfigMaps) which file watching
    /// does not follow.
    pub poll_seconds: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            debounce_ms: 250,
            poll_seconds: 0,
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
    /// Fetching remote key sets (issuers with `jwks_url` or `discovery`).
    pub jwks: JwksConfig,
    /// Verified tokens kept in memory until they expire (0 disables).
    pub token_cache_capacity: u64,
    /// API keys in a request header.
    pub api_keys: ApiKeyConfig,
    /// OAuth2 token introspection (RFC 7662) for opaque bearer tokens.
    pub introspection: Option<IntrospectionConfig>,
    /// Counting failed attempts and blocking sources that keep failing.
    pub failures: FailureConfig,
    /// A Redis of its own for authentication state (failure counts and
    /// blocks, API keys). Without it, authentication uses the quota store's
    /// Redis when `quotas.store` is `redis` or `redis_cluster`.
    pub redis: Option<AuthnRedisConfig>,
    /// Signed payloads (HMAC-SHA256 with a per-app secret).
    pub signatures: SignatureConfig,
}

/// The Redis authentication keeps shared state in.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthnRedisConfig {
    /// A single primary: `redis://host:port/db` (a password in it is never
    /// logged).
    pub url: Option<String>,
    /// Or a Redis Cluster: seed nodes, `redis://host:port` each.
    pub urls: Vec<String>,
    /// Bound on one Redis round trip (connect included), milliseconds.
    pub timeout_ms: u64,
}

impl Default for AuthnRedisConfig {
    fn default() -> Self {
        AuthnRedisConfig {
            url: None,
            urls: Vec::new(),
            timeout_ms: 50,
        }
    }
}

/// Signed payloads: `x-signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`
/// over `t`, method, path and body, with a secret per app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignatureConfig {
    /// The request header carrying the signature.
    pub header: String,
    /// How far the signature's timestamp may be from the request's time.
    pub window_seconds: u64,
    /// Signatures remembered to refuse replays (bounded; each is kept for
    /// twice the window).
    pub replay_cache_capacity: u64,
    /// Apps with a signing secret.
    pub apps: Vec<SignedAppConfig>,
}

impl Default for SignatureConfig {
    fn default() -> Self {
        SignatureConfig {
            header: "x-signature".into(),
            window_seconds: 300,
            replay_cache_capacity: 100_000,
            apps: Vec::new(),
        }
    }
}

impl std::fmt::Debug for AuthnRedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthnRedisConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("urls", &self.urls.len())
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// Where failed attempts are counted.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureStoreKind {
    /// Redis when authentication has one (`authentication.redis`, or the
    /// quota store's Redis), else in process.
    #[default]
    Auto,
    /// In this process only.
    Local,
    /// In the authentication Redis, shared by every replica.
    Redis,
}

/// One app's signing secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedAppConfig {
    /// The app's id (the `App` principal an API key maps to).
    pub app: String,
    /// A file holding the secret (at least 32 bytes; surrounding
    /// whitespace ignored).
    pub secret_file: PathBuf,
    /// Every request from this app must be signed, on every route.
    #[serde(default)]
    pub required: bool,
}

impl Default for AuthnConfig {
    fn default() -> Self {
        AuthnConfig {
            leeway_seconds: 30,
            max_token_bytes: 8 * 1024,
            jwt: Vec::new(),
            mtls: MtlsConfig::default(),
            jwks: JwksConfig::default(),
            token_cache_capacity: 10_000,
            api_keys: ApiKeyConfig::default(),
            introspection: None,
            failures: FailureConfig::default(),
            redis: None,
            signatures: SignatureConfig::default(),
        }
    }
}

/// Failed authentication attempts: past `threshold` failures within
/// `window_seconds`, a source address is blocked for `block_seconds`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailureConfig {
    /// Count and block at all.
    pub enabled: bool,
    /// Failures within the window that block the source.
    pub threshold: u32,
    /// The counting window, seconds.
    pub window_seconds: u64,
    /// How long a source stays blocked, seconds.
    pub block_seconds: u64,
    /// Most sources and identities tracked at once in process (bounded
    /// memory); Redis keys expire with their window or block instead.
    pub max_tracked: usize,
    /// `auto` (Redis when authentication has one), `local` or `redis`.
    pub store: FailureStoreKind,
    /// With Redis: a source Redis called unblocked is taken as unblocked
    /// for this long without asking again, milliseconds (0: ask on every
    /// request). A block set through another replica may take this long to
    /// reach this one; it saves a round trip per request.
    pub unblocked_cache_ms: u64,
}

impl Default for FailureConfig {
    fn default() -> Self {
        FailureConfig {
            enabled: true,
            threshold: 20,
            window_seconds: 60,
            block_seconds: 300,
            max_tracked: 100_000,
            store: FailureStoreKind::Auto,
            unblocked_cache_ms: 1_000,
        }
    }
}

/// The introspection endpoint asked about opaque (non-JWT) bearer tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntrospectionConfig {
    /// The endpoint URL (http or https).
    pub endpoint: String,
    /// Our client id at the authorization server (HTTP Basic).
    pub client_id: String,
    /// A file holding our client secret.
    pub client_secret_file: Option<PathBuf>,
    /// The whole exchange must finish within this, ms; else 503.
    pub timeout_ms: u64,
    /// An active answer is cached for the token's remaining life, at most
    /// this long, seconds.
    pub max_cache_seconds: u64,
    /// An inactive answer is cached this long, seconds.
    pub negative_cache_seconds: u64,
    /// Most answers kept.
    pub cache_capacity: u64,
    /// When set, the answer's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, every `aud` in the answer must be one of these.
    pub audiences: Vec<String>,
    /// Cedar entity type of the principal.
    pub principal_type: String,
    /// Answer member naming the principal.
    pub subject_claim: String,
    /// Answer member naming the organisation.
    pub org_claim: Option<String>,
    /// Cedar entity type of the organisation.
    pub org_type: String,
}

impl Default for IntrospectionConfig {
    fn default() -> Self {
        IntrospectionConfig {
            endpoint: String::new(),
            client_id: String::new(),
            client_secret_file: None,
            timeout_ms: 100,
            max_cache_seconds: 300,
            negative_cache_seconds: 10,
            cache_capacity: 10_000,
            issuer: None,
            audiences: Vec::new(),
            principal_type: "User".into(),
            subject_claim: "sub".into(),
            org_claim: None,
            org_type: "Org".into(),
        }
    }
}

/// How remote JWKS are fetched and kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwksConfig {
    /// One fetch (discovery document or key set) may take this long, ms.
    pub fetch_timeout_ms: u64,
    /// Refresh at least this long after a fetch, even if the identity
    /// provider's `Cache-Control: max-age` asks for less, seconds.
    pub min_refresh_seconds: u64,
    /// Refresh at most this long after a fetch, whatever `max-age` says,
    /// seconds (also the interval when there is no `max-age`).
    pub max_refresh_seconds: u64,
    /// A token naming an unknown `kid` triggers a refetch at most once per
    /// this interval, so a flood of unknown kids cannot hammer the provider.
    pub unknown_kid_refetch_seconds: u64,
    /// After a failed refresh, retry after this long, seconds.
    pub retry_seconds: u64,
    /// Keys older than this (the provider unreachable since) are no longer
    /// trusted: the issuer's tokens are refused and readiness reports it.
    pub max_staleness_seconds: u64,
}

impl Default for JwksConfig {
    fn default() -> Self {
        JwksConfig {
            fetch_timeout_ms: 2_000,
            min_refresh_seconds: 60,
            max_refresh_seconds: 3_600,
            unknown_kid_refetch_seconds: 30,
            retry_seconds: 10,
            max_staleness_seconds: 86_400,
        }
    }
}

/// API keys: a header carrying a secret that maps to an App.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeyConfig {
    /// The keys file (hashes only; see `portcullis apikey new`). Neither
    /// this nor `redis`: API keys are not accepted.
    pub file: Option<PathBuf>,
    /// Look keys up in the authentication Redis instead (written by
    /// `portcullis apikey new --redis`); a revocation applies at once.
    pub redis: bool,
    /// The request header that carries the key.
    pub header: String,
    /// Cedar entity type of the principal a key names.
    pub principal_type: String,
    /// Cedar entity type of the key's organisation.
    pub org_type: String,
}

impl Default for ApiKeyConfig {
    fn default() -> Self {
        ApiKeyConfig {
            file: None,
            redis: false,
            header: "x-api-key".into(),
            principal_type: "App".into(),
            org_type: "Org".into(),
        }
    }
}

/// One trusted JWT issuer. Its keys come from exactly one of `jwks_file`,
/// `jwks_url`, `discovery` or `hmac_secret_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (the token must name at least one).
    pub audiences: Vec<String>,
    /// A JWKS file with this issuer's public keys (static).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
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
    /// The issuer's JWKS URL (http or https), fetched and refreshed.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Find the JWKS URL through OIDC discovery
    /// (`<issuer>/.well-known/openid-configuration`).
    #[serde(default)]
    pub discovery: bool,
    /// A file holding an HMAC secret (at least 32 bytes); only then may the
    /// issuer's algorithms include HS256/HS384/HS512.
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// Refuse tokens whose `exp - iat` exceeds this, seconds (short-lived
    /// token policies); such tokens must carry `iat`.
    #[serde(default)]
    pub max_lifetime_seconds: Option<u64>,
    /// Claim listing the principal's roles or groups (string or array);
    /// each becomes a parent entity of type `role_type`.
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// Cedar entity type of roles.
    #[serde(default = "default_role_type")]
    pub role_type: String,
    /// Claims copied into `context.token.claims` (as strings); each must be
    /// declared in the schema's `token.claims` record.
    #[serde(default)]
    pub context_claims: Vec<String>,
    /// `amr` values that mean the user passed multi-factor authentication.
    #[serde(default = "default_mfa_amr")]
    pub mfa_amr_values: Vec<String>,
    /// `acr` values that mean multi-factor authentication.
    #[serde(default)]
    pub mfa_acr_values: Vec<String>,
}

fn default_role_type() -> String {
    "Role".into()
}
fn default_mfa_amr() -> Vec<String> {
    vec!["mfa".into(), "hwk".into(), "otp".into()]
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
    /// SPIFFE trust domains accepted (exact, e.g. `acme.example`); a
    /// `spiffe://` principal from any other domain is refused. Empty: any.
    pub trust_domains: Vec<String>,
}

impl Default for MtlsConfig {
    fn default() -> Self {
        MtlsConfig {
            enabled: true,
            principal_type: "ServiceAccount".into(),
            trusted_prefixes: vec!["spiffe://".into()],
            trust_domains: Vec::new(),
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
        if self.audit.directory.is_relative() {
            self.audit.directory = base.join(&self.audit.directory);
        }
        if let Some(key) = &mut self.audit.hmac_key_file {
            if key.is_relative() {
                *key = base.join(&*key);
            }
        }
        for issuer in &mut self.authentication.jwt {
            for path in [&mut issuer.jwks_file, &mut issuer.hmac_secret_file]
                .into_iter()
                .flatten()
            {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        for path in [
            &mut self.tls.cert_file,
            &mut self.tls.key_file,
            &mut self.tls.client_ca_file,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if let Some(file) = self
            .authentication
            .introspection
            .as_mut()
            .and_then(|i| i.client_secret_file.as_mut())
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        if let Some(file) = &mut self.authentication.api_keys.file {
            if file.is_relative() {
                *file = base.join(&*file);
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
        for (name, addr) in [("listen", self.listen), ("admin_listen", self.admin_listen)] {
            if self.http_listen == addr && addr.port() != 0 {
                problems.push(format!(
                    "http_listen: {} is also the {name} listener; give the HTTP listener its own port",
                    self.http_listen
                ));
            }
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
            let symmetric = issuer.hmac_secret_file.is_some();
            for alg in &issuer.algorithms {
                if let Err(e) = crate::authn::jwt::parse_algorithm(alg, symmetric) {
                    problems.push(format!("{at}.algorithms: {e}"));
                }
            }
            let sources = [
                issuer.jwks_file.is_some(),
                issuer.jwks_url.is_some(),
                issuer.discovery,
                symmetric,
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if sources != 1 {
                problems.push(format!(
                    "{at}: set exactly one of jwks_file, jwks_url, discovery: true or hmac_secret_file"
                ));
            }
            if let Some(url) = &issuer.jwks_url {
                if let Err(e) = crate::authn::jwks::check_url(url) {
                    problems.push(format!("{at}.jwks_url: {e}"));
                }
            }
            if issuer.discovery {
                if let Err(e) = crate::authn::jwks::check_url(&issuer.issuer) {
                    problems.push(format!(
                        "{at}.issuer: discovery needs an http(s) issuer URL: {e}"
                    ));
                }
            }
            if issuer.max_lifetime_seconds == Some(0) {
                problems.push(format!("{at}.max_lifetime_seconds: must be at least 1"));
            }
            for (field, ty) in [
                ("principal_type", &issuer.principal_type),
                ("org_type", &issuer.org_type),
                ("role_type", &issuer.role_type),
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
        let jwks = &self.authentication.jwks;
        if jwks.fetch_timeout_ms == 0 {
            problems.push("authentication.jwks.fetch_timeout_ms: must be at least 1".into());
        }
        if jwks.min_refresh_seconds == 0 || jwks.min_refresh_seconds > jwks.max_refresh_seconds {
            problems.push(
                "authentication.jwks.min_refresh_seconds: must be at least 1 and at most max_refresh_seconds".into(),
            );
        }
        if jwks.retry_seconds == 0 {
            problems.push("authentication.jwks.retry_seconds: must be at least 1".into());
        }
        if jwks.max_staleness_seconds < jwks.max_refresh_seconds {
            problems.push(
                "authentication.jwks.max_staleness_seconds: must be at least max_refresh_seconds"
                    .into(),
            );
        }
        let keys = &self.authentication.api_keys;
        if keys.header.is_empty()
            || keys
                .header
                .bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            problems.push(format!(
                "authentication.api_keys.header: '{}' is not a header name",
                keys.header
            ));
        } else if keys.header.eq_ignore_ascii_case("authorization") {
            problems.push(
                "authentication.api_keys.header: must not be Authorization (bearer tokens use it)"
                    .into(),
            );
        }
        if keys
            .file
            .as_ref()
            .is_some_and(|f| f.starts_with(&self.policies))
        {
            problems.push(
                "authentication.api_keys.file: keep the keys file outside the policy directory"
                    .into(),
            );
        }
        for (field, ty) in [
            ("principal_type", &keys.principal_type),
            ("org_type", &keys.org_type),
        ] {
            if ty.parse::<cedar_policy::EntityTypeName>().is_err() {
                problems.push(format!(
                    "authentication.api_keys.{field}: '{ty}' is not a Cedar entity type name"
                ));
            }
        }
        if let Some(i) = &self.authentication.introspection {
            if let Err(e) = crate::authn::jwks::check_url(&i.endpoint) {
                problems.push(format!("authentication.introspection.endpoint: {e}"));
            }
            if i.client_id.is_empty() {
                problems.push("authentication.introspection.client_id: must not be empty".into());
            }
            if i.timeout_ms == 0 || i.timeout_ms > 10_000 {
                problems
                    .push("authentication.introspection.timeout_ms: between 1 and 10000".into());
            }
            for (field, ty) in [
                ("principal_type", &i.principal_type),
                ("org_type", &i.org_type),
            ] {
                if ty.parse::<cedar_policy::EntityTypeName>().is_err() {
                    problems.push(format!(
                        "authentication.introspection.{field}: '{ty}' is not a Cedar entity type name"
                    ));
                }
            }
        }
        if self.authentication.failures.unblocked_cache_ms > 60_000 {
            problems.push(
                "authentication.failures.unblocked_cache_ms: at most 60000 (a block must reach every replica soon)"
                    .into(),
            );
        }
        if keys.file.is_some() && keys.redis {
            problems
                .push("authentication.api_keys: set either file or redis: true, not both".into());
        }
        problems.extend(self.authn_redis_problems());
        let f = &self.authentication.failures;
        if f.enabled
            && (f.threshold == 0
                || f.window_seconds == 0
                || f.block_seconds == 0
                || f.max_tracked == 0)
        {
            problems.push("authentication.failures: threshold, window_seconds, block_seconds and max_tracked must be at least 1".into());
        }
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
        problems.extend(self.audit.problems());
        problems.extend(self.quotas.problems());
        problems.extend(self.anomaly.problems());
        if let Some(otlp) = &self.otlp {
            problems.extend(otlp.problems());
        }
        let sig = &self.authentication.signatures;
        if sig.window_seconds == 0 || sig.replay_cache_capacity == 0 {
            problems.push("authentication.signatures: window_seconds and replay_cache_capacity must be at least 1".into());
        }
        if sig.header.is_empty()
            || sig
                .header
                .bytes()
                .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        {
            problems.push(
                "authentication.signatures.header: a lower-case header name, e.g. x-signature"
                    .into(),
            );
        }
        for (i, app) in sig.apps.iter().enumerate() {
            if sig.apps[..i].iter().any(|a| a.app == app.app) {
                problems.push(format!(
                    "authentication.signatures.apps: app '{}' is listed twice",
                    app.app
                ));
            }
        }
        if let Some(h) = &self.residency.region_header {
            if h.is_empty()
                || h.bytes()
                    .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
            {
                problems.push(
                    "residency.region_header: a lower-case header name, e.g. x-gateway-region"
                        .into(),
                );
            }
            if h.starts_with("x-portcullis-") {
                problems.push("residency.region_header: x-portcullis-* headers are Portcullis's own; use another name".into());
            }
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

    fn authn_redis_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let a = &self.authentication;
        if let Some(r) = &a.redis {
            match (&r.url, r.urls.is_empty()) {
                (None, true) => p.push(
                    "authentication.redis: set url (one primary) or urls (Redis Cluster seeds)"
                        .into(),
                ),
                (Some(_), false) => {
                    p.push("authentication.redis: set url or urls, not both".into())
                }
                (Some(url), true) => {
                    if redis::Client::open(url.as_str()).is_err() {
                        p.push(
                            "authentication.redis.url: not a Redis URL (redis://host:port/db)"
                                .into(),
                        );
                    }
                }
                (None, false) => {
                    if redis::cluster::ClusterClient::new(r.urls.iter().map(String::as_str))
                        .is_err()
                    {
                        p.push(
                            "authentication.redis.urls: not Redis URLs (redis://host:port)".into(),
                        );
                    }
                }
            }
            if r.timeout_ms == 0 || r.timeout_ms > 1000 {
                p.push("authentication.redis.timeout_ms: between 1 and 1000".into());
            }
        }
        let has_redis = a.redis.is_some() || self.quotas.store != QuotaStoreKind::Local;
        if !has_redis {
            let hint = "configure authentication.redis or a Redis quota store (quotas.store)";
            if a.failures.enabled && a.failures.store == FailureStoreKind::Redis {
                p.push(format!(
                    "authentication.failures.store: redis needs a Redis; {hint}"
                ));
            }
            if a.api_keys.redis {
                p.push(format!(
                    "authentication.api_keys.redis: needs a Redis; {hint}"
                ));
            }
        }
        p
    }

    /// The Redis connections this configuration names: the quota store's
    /// and authentication's. Authentication shares the quota store's
    /// connection (and its timeout) unless `authentication.redis` names one
    /// of its own. Connections are made lazily, on first use.
    pub fn redis_connections(
        &self,
    ) -> Result<(Option<Arc<SharedRedis>>, Option<crate::authn::AuthnRedis>), String> {
        let quotas = self.quotas.redis()?;
        let authn = match &self.authentication.redis {
            Some(r) => {
                let timeout = Duration::from_millis(r.timeout_ms);
                let redis = match &r.url {
                    Some(url) => SharedRedis::single(url, timeout, "authentication.redis.url")?,
                    None => SharedRedis::cluster(&r.urls, timeout, "authentication.redis.urls")?,
                };
                Some(crate::authn::AuthnRedis {
                    redis: Arc::new(redis),
                    timeout,
                })
            }
            None => quotas.clone().map(|redis| crate::authn::AuthnRedis {
                redis,
                timeout: Duration::from_millis(self.quotas.timeout_ms),
            }),
        };
        Ok((quotas, authn))
    }

    /// The request deadline as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
    }
}

/// The audit trail: where and how records are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Directory of the audit files (created if missing). One process per
    /// directory.
    pub directory: PathBuf,
    /// Start a new file once the current one reaches this many bytes.
    pub rotate_bytes: u64,
    /// Sign a checkpoint after this many records (and at rotation and stop).
    pub checkpoint_every: u64,
    /// File holding the HMAC key that signs checkpoints (at least 32 bytes).
    /// Without it checkpoints are not written. The key itself is never
    /// logged.
    pub hmac_key_file: Option<PathBuf>,
    /// Records that may wait for the writer.
    pub queue_size: usize,
    /// When a record cannot be queued: `drop` (serve, count, log) or
    /// `fail_closed` (deny the request with 503).
    pub on_full: crate::audit::OnFull,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            directory: PathBuf::from("audit"),
            rotate_bytes: 64 * 1024 * 1024,
            checkpoint_every: 1000,
            hmac_key_file: None,
            queue_size: 16_384,
            on_full: crate::audit::OnFull::Drop,
        }
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

impl AuditConfig {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.rotate_bytes < 4096 {
            problems.push("audit.rotate_bytes: at least 4096".to_string());
        }
        if self.checkpoint_every == 0 {
            problems.push("audit.checkpoint_every: at least 1".to_string());
        }
        if self.queue_size == 0 || self.queue_size > 1 << 24 {
            problems.push("audit.queue_size: between 1 and 16777216".to_string());
        }
        if self.directory.as_os_str().is_empty() {
            problems.push("audit.directory: must not be empty".to_string());
        }
        problems
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

    /// The Redis these settings name (not yet connected), if any.
    pub fn redis(&self) -> Result<Option<Arc<SharedRedis>>, String> {
        let timeout = Duration::from_millis(self.timeout_ms);
        Ok(match self.store {
            QuotaStoreKind::Local => None,
            QuotaStoreKind::Redis => Some(Arc::new(SharedRedis::single(
                self.redis_url.as_deref().unwrap_or_default(),
                timeout,
                "quotas.redis_url",
            )?)),
            QuotaStoreKind::RedisCluster => Some(Arc::new(SharedRedis::cluster(
                &self.redis_urls,
                timeout,
                "quotas.redis_urls",
            )?)),
        })
    }

    /// The enforcement these settings describe, on a Redis of its own.
    pub fn build(&self) -> Result<crate::quota::Quotas, String> {
        Ok(self.build_on(self.redis()?))
    }

    /// The enforcement these settings describe; `redis` is the connection
    /// from [`QuotaSettings::redis`] (possibly shared with authentication).
    pub fn build_on(&self, redis: Option<Arc<SharedRedis>>) -> crate::quota::Quotas {
        let timeout = Duration::from_millis(self.timeout_ms);
        let store: Arc<dyn crate::quota::QuotaStore> = match redis {
            None => Arc::new(crate::quota::local::LocalStore::new(
                self.max_local_keys,
                Arc::new(crate::quota::SystemClock),
            )),
            Some(redis) => Arc::new(crate::quota::redis::RedisStore::on(redis)),
        };
        crate::quota::Quotas::new(
            store,
            timeout,
            self.on_store_error,
            self.replicas,
            self.max_local_keys,
        )
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
        let (quotas, authn) = quota_only.redis_connections().unwrap();
        let (quotas, authn) = (quotas.unwrap(), authn.unwrap());
        assert!(Arc::ptr_eq(&quotas, &authn.redis), "one shared connection");
        assert_eq!(authn.timeout, Duration::from_millis(7));

        let own = Config::parse(
            "quotas: {store: redis, redis_url: 'redis://127.0.0.1:6379'}\nauthentication:\n  redis: {urls: ['redis://127.0.0.1:7000'], timeout_ms: 40}\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        let (quotas, authn) = own.redis_connections().unwrap();
        let authn = authn.unwrap();
        assert!(!Arc::ptr_eq(&quotas.unwrap(), &authn.redis));
        assert!(authn.redis.is_cluster());
        assert_eq!(authn.timeout, Duration::from_millis(40));

        let (quotas, authn) = Config::default().redis_connections().unwrap();
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
