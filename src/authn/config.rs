//! The `authentication:` section of the configuration: JWT issuers, mTLS
//! peers, API keys, introspection, failure counting, signatures, and its
//! checks.

use std::path::PathBuf;

use serde::Deserialize;

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
    /// A file holding the secret (at least 32 bytes, read by the one
    /// secret-file rule: `crate::authn::secret`).
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
    /// Values that may stand in the token's audience next to one of
    /// `audiences` without making the token ours on their own (Auth0 adds
    /// `<tenant>/userinfo`, Keycloak `account`).
    #[serde(default)]
    pub tolerated_audiences: Vec<String>,
    /// The claim holding the audience: `aud`, or another (AWS Cognito access
    /// tokens carry `client_id` and no `aud`). An `aud` the token carries
    /// as well is still checked.
    #[serde(default = "default_audience_claim")]
    pub audience_claim: String,
    /// A JWKS file with this issuer's public keys (static).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Accepted signature algorithms (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Cedar entity type of the principal (`User` by default).
    #[serde(default = "default_user_type")]
    pub principal_type: String,
    /// Claim that names the principal: a top-level claim name, or a JSON
    /// Pointer (RFC 6901, starting with `/`) into nested claims.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claim that names the principal's organisation (its parent `Org`; a
    /// list makes one parent per value). A name or a JSON Pointer.
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
    /// A file holding an HMAC secret (at least 32 bytes, read by the one
    /// secret-file rule: `crate::authn::secret`); only then may the
    /// issuer's algorithms include HS256/HS384/HS512.
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// Refuse tokens whose `exp - iat` exceeds this, seconds (short-lived
    /// token policies); such tokens must carry `iat`.
    #[serde(default)]
    pub max_lifetime_seconds: Option<u64>,
    /// Claims listing the principal's roles or groups (each a string or an
    /// array of strings); every value becomes a parent entity of type
    /// `role_type`. One claim or a list of them, each a name or a JSON
    /// Pointer (`/realm_access/roles`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub roles_claim: Vec<String>,
    /// Claims holding OAuth scopes, each a space-separated string or an
    /// array of strings (`scope`, `scp`, Auth0's `permissions`), into
    /// `context.token.scopes`. Names or JSON Pointers.
    #[serde(default = "default_scope_claims")]
    pub scope_claims: Vec<String>,
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

/// One string or a list of strings, as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a claim name or a list of claim names")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(one)) => vec![one],
        Some(OneOrMany::Many(many)) => many,
    })
}

fn default_audience_claim() -> String {
    "aud".into()
}
fn default_scope_claims() -> Vec<String> {
    vec!["scope".into(), "scp".into()]
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
