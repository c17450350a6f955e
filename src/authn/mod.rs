//! Authentication: turns the credentials on a request into an `Identity`.
//! It does not decide what that identity may do (that is `authz`).

pub mod apikey;
pub mod apikey_redis;
pub mod config;
mod config_check;
pub mod failures;
pub mod failures_redis;
mod identity;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod secret;
pub mod signature;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::request::AccessRequest;
pub use config::{AuthnConfig, MtlsConfig};
pub use identity::{entity_uid, AuthMethod, Authentication, AuthnFailure, Identity, TokenFacts};

/// The Redis authentication keeps shared state in (failure counts and
/// blocks, API keys), and the bound on one round trip.
#[derive(Debug, Clone)]
pub struct AuthnRedis {
    /// The connection (possibly shared with the quota store).
    pub redis: Arc<crate::shared_redis::SharedRedis>,
    /// Bound on one call, connect included.
    pub timeout: Duration,
}

/// Where API keys are looked up.
#[derive(Debug)]
enum ApiKeys {
    /// The keys file, reloaded when it changes.
    File(Arc<apikey::ApiKeyVerifier>),
    /// Redis, asked on every lookup.
    Redis(apikey_redis::RedisKeys),
}

impl ApiKeys {
    fn header(&self) -> &str {
        match self {
            ApiKeys::File(f) => f.header(),
            ApiKeys::Redis(r) => r.header(),
        }
    }

    async fn verify(&self, presented: &str, now_epoch: u64) -> Result<Identity, AuthnFailure> {
        match self {
            ApiKeys::File(f) => f.verify(presented, now_epoch),
            ApiKeys::Redis(r) => r.verify(presented, now_epoch).await,
        }
    }
}

/// Authenticates requests with the configured methods.
#[derive(Debug)]
pub struct Authenticator {
    jwt: jwt::JwtVerifier,
    mtls: MtlsConfig,
    api_keys: Option<ApiKeys>,
    introspection: Option<introspect::Introspector>,
    max_token_bytes: usize,
    failures: Option<Arc<dyn failures::FailureStore>>,
    signatures: signature::Signatures,
}

/// Authentication configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthnSetupError {
    /// An issuer's keys could not be loaded.
    #[error(transparent)]
    Jwks(#[from] jwt::JwksError),
    /// The API keys file could not be loaded.
    #[error(transparent)]
    ApiKeys(#[from] apikey::KeysFileError),
    /// The introspection client secret could not be read.
    #[error(transparent)]
    Introspection(#[from] introspect::SecretUnreadable),
    /// A feature keeps its state in Redis, and no Redis was given.
    #[error("{0} needs a Redis: configure authentication.redis or a Redis quota store")]
    NoRedis(&'static str),
    /// A payload-signing secret could not be used.
    #[error(transparent)]
    Signature(#[from] signature::SecretUnusable),
}

impl Authenticator {
    /// Builds the authenticator without Redis, loading every issuer's keys.
    pub fn new(config: &AuthnConfig) -> Result<Self, Vec<AuthnSetupError>> {
        Self::with_redis(config, None)
    }

    /// Builds the authenticator, loading every issuer's keys; `redis` is
    /// where failure counts (`failures.store` `auto` or `redis`) and, with
    /// `api_keys.redis`, API keys live.
    pub fn with_redis(
        config: &AuthnConfig,
        redis: Option<AuthnRedis>,
    ) -> Result<Self, Vec<AuthnSetupError>> {
        use crate::authn::config::FailureStoreKind;
        let mut errors = Vec::new();
        let jwt = jwt::JwtVerifier::new(config)
            .map_err(|errs| errors.extend(errs.into_iter().map(AuthnSetupError::from)));
        let api_keys = match (&config.api_keys.file, config.api_keys.redis, &redis) {
            (Some(path), _, _) => apikey::ApiKeyVerifier::new(&config.api_keys, path)
                .map(|v| Some(ApiKeys::File(Arc::new(v))))
                .map_err(|e| errors.push(e.into())),
            (None, true, Some(r)) => Ok(Some(ApiKeys::Redis(apikey_redis::RedisKeys::new(
                &config.api_keys,
                Arc::clone(&r.redis),
                r.timeout,
            )))),
            (None, true, None) => {
                errors.push(AuthnSetupError::NoRedis("authentication.api_keys.redis"));
                Err(())
            }
            (None, false, _) => Ok(None),
        };
        let introspection = match &config.introspection {
            None => Ok(None),
            Some(c) => introspect::Introspector::new(c)
                .map(Some)
                .map_err(|e| errors.push(e.into())),
        };
        let f = &config.failures;
        let failures: Result<Option<Arc<dyn failures::FailureStore>>, ()> =
            match (f.enabled, f.store, &redis) {
                (false, _, _) => Ok(None),
                (true, FailureStoreKind::Local, _) | (true, FailureStoreKind::Auto, None) => {
                    Ok(Some(Arc::new(failures::InProcessFailures::new(f))))
                }
                (true, FailureStoreKind::Auto | FailureStoreKind::Redis, Some(r)) => {
                    Ok(Some(Arc::new(failures_redis::RedisFailures::new(
                        f,
                        Arc::clone(&r.redis),
                        r.timeout,
                    ))))
                }
                (true, FailureStoreKind::Redis, None) => {
                    errors.push(AuthnSetupError::NoRedis(
                        "authentication.failures.store: redis",
                    ));
                    Err(())
                }
            };
        let signatures = signature::Signatures::new(&config.signatures)
            .map(|s| match &redis {
                // Seen signatures shared by every replica.
                Some(r) => s.shared_through(Arc::clone(&r.redis), r.timeout),
                None => s,
            })
            .map_err(|errs| errors.extend(errs.into_iter().map(AuthnSetupError::from)));
        match (jwt, api_keys, introspection, failures, signatures) {
            (Ok(jwt), Ok(api_keys), Ok(introspection), Ok(failures), Ok(signatures)) => {
                Ok(Authenticator {
                    signatures,
                    jwt,
                    mtls: config.mtls.clone(),
                    api_keys,
                    introspection,
                    max_token_bytes: config.max_token_bytes,
                    failures,
                })
            }
            _ => Err(errors),
        }
    }

    /// Where failed attempts are counted (`local`, `redis`), if anywhere.
    pub fn failure_store(&self) -> Option<&'static str> {
        self.failures.as_ref().map(|f| f.name())
    }

    /// Fetches every remote key set once (for offline use such as the
    /// `check` command); failures are logged and leave the issuer not ready.
    pub async fn prefetch(&self) {
        for jwks in self.jwt.remote_key_sets() {
            if let Err(e) = jwks.refresh().await {
                tracing::warn!(error = %e, "JWKS fetch failed");
            }
        }
    }

    /// Starts the background refresh of every remote key set; each task
    /// stops when `cancel` is cancelled.
    pub fn spawn_refresh(&self, tasks: &tokio_util::task::TaskTracker, cancel: &CancellationToken) {
        for jwks in self.jwt.remote_key_sets() {
            tasks.spawn(Arc::clone(&jwks).run(cancel.clone()));
        }
        if let Some(ApiKeys::File(keys)) = &self.api_keys {
            tasks.spawn(Arc::clone(keys).watch(API_KEYS_POLL, cancel.clone()));
        }
    }

    /// Issuers whose tokens cannot be verified now (keys never fetched, or
    /// older than the maximum staleness). Empty when ready.
    pub fn unready_issuers(&self) -> Vec<String> {
        let now = Instant::now();
        self.jwt
            .remote_key_sets()
            .iter()
            .filter(|j| !j.is_ready(now))
            .map(|j| j.issuer().to_string())
            .collect()
    }

    /// Remote key sets, for tests and metrics.
    pub fn remote_key_sets(&self) -> Vec<Arc<jwks::RemoteJwks>> {
        self.jwt.remote_key_sets()
    }

    /// Uses `store` for failure counting (e.g. a shared Redis store)
    /// instead of the in-process one.
    pub fn with_failure_store(mut self, store: Arc<dyn failures::FailureStore>) -> Self {
        self.failures = Some(store);
        self
    }

    /// Checks the payload signature of an authenticated request (when the
    /// route or the app requires one, or one is sent); `now` in seconds
    /// since the epoch. With a Redis, a replay through another replica is
    /// refused too.
    pub async fn verify_signature(
        &self,
        req: &AccessRequest,
        identity: &Identity,
        route_requires: bool,
        now: u64,
    ) -> Result<(), signature::Refused> {
        self.signatures
            .verify_shared(req, identity, route_requires, now)
            .await
    }

    /// Establishes who is calling, unless the source is blocked for failing
    /// too often; counts refused credentials per source and per presented
    /// identity.
    pub async fn authenticate(&self, req: &AccessRequest, now_epoch: u64) -> Authentication {
        self.authenticate_at(req, now_epoch, Instant::now()).await
    }

    /// [`Authenticator::authenticate`] with the monotonic clock given.
    pub async fn authenticate_at(
        &self,
        req: &AccessRequest,
        now_epoch: u64,
        now: Instant,
    ) -> Authentication {
        let source = req.source_ip.map(failures::FailureKey::Source);
        if let (Some(store), Some(source)) = (&self.failures, &source) {
            if let Some(retry_after) = store.blocked_for(source, now).await {
                crate::metrics::global().authn_failure(self.credential_kind(req), "source_blocked");
                let result = Authentication::Blocked { retry_after };
                log_outcome(req, &result);
                return result;
            }
        }
        let result = self.authenticate_credentials(req, now_epoch).await;
        log_outcome(req, &result);
        if let Authentication::Rejected(failure) = &result {
            crate::metrics::global().authn_failure(self.credential_kind(req), failure.reason);
        }
        if let (Some(store), Authentication::Rejected(failure)) = (&self.failures, &result) {
            // An endpoint we could not reach is our trouble, not the
            // caller's failed attempt.
            if !failure.unavailable {
                if let Some(source) = &source {
                    if store.record_failure(source, now, true).await {
                        tracing::warn!(
                            target: "portcullis::authn",
                            source_ip = ?req.source_ip,
                            "source blocked after repeated authentication failures"
                        );
                    }
                }
                if let Some(identity) = self.presented_identity(req) {
                    let key = failures::FailureKey::Identity(identity.clone());
                    if store.record_failure(&key, now, false).await {
                        tracing::warn!(
                            target: "portcullis::authn",
                            presented_identity = %identity,
                            "repeated authentication failures for one identity"
                        );
                    }
                }
            }
        }
        result
    }

    /// The kind of credential a request presents, in the order they are
    /// tried (a bounded label for metrics): `bearer`, `apikey`, `mtls`, or
    /// `none`.
    fn credential_kind(&self, req: &AccessRequest) -> &'static str {
        if req.header("authorization").is_some() {
            "bearer"
        } else if self
            .api_keys
            .as_ref()
            .is_some_and(|k| req.header(k.header()).is_some())
        {
            "apikey"
        } else if req.source_principal.is_some() {
            "mtls"
        } else {
            "none"
        }
    }

    /// The identity a refused credential claimed, for counting only: an API
    /// key's public id, or a JWT's unverified issuer and subject.
    fn presented_identity(&self, req: &AccessRequest) -> Option<String> {
        use base64::Engine;
        let Some(authorization) = req.header("authorization") else {
            let keys = self.api_keys.as_ref()?;
            return req
                .header(keys.header())?
                .strip_prefix("pck_")
                .and_then(|r| r.get(..12))
                .map(|id| format!("apikey:{id}"));
        };
        let token = bearer_token(authorization).ok()?;
        if token.len() > self.max_token_bytes {
            return None;
        }
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let iss = claims.get("iss")?.as_str()?;
        let sub = claims.get("sub")?.as_str()?;
        let mut id = format!("jwt:{iss}#{sub}");
        id.truncate(256);
        Some(id)
    }

    /// Establishes who is calling. A bearer token wins over an API key, and
    /// both over the mTLS peer: the token names the end user, the
    /// certificate often only the client software.
    async fn authenticate_credentials(
        &self,
        req: &AccessRequest,
        now_epoch: u64,
    ) -> Authentication {
        if let Some(value) = req.header("authorization") {
            let token = match bearer_token(value) {
                Ok(token) => token,
                Err(failure) => return Authentication::Rejected(failure),
            };
            // A compact JWS has exactly two dots; anything else is an
            // opaque token when an introspection endpoint is configured.
            let verified = match &self.introspection {
                _ if token.len() > self.max_token_bytes => Err(AuthnFailure::new(
                    "token_too_large",
                    format!(
                        "the bearer token is larger than {} bytes",
                        self.max_token_bytes
                    ),
                )),
                Some(introspector) if token.matches('.').count() != 2 => {
                    introspector.introspect(token, now_epoch).await
                }
                _ => self.jwt.verify(token, now_epoch, Instant::now()).await,
            };
            return match verified {
                Ok(identity) => Authentication::Authenticated(identity),
                Err(failure) => Authentication::Rejected(failure),
            };
        }
        if let Some(keys) = &self.api_keys {
            if let Some(value) = req.header(keys.header()) {
                if value.contains(',') {
                    // Envoy comma-merges repeated headers.
                    return Authentication::Rejected(AuthnFailure::new(
                        "malformed_api_key",
                        "send exactly one API key",
                    ));
                }
                return match keys.verify(value.trim(), now_epoch).await {
                    Ok(identity) => Authentication::Authenticated(identity),
                    Err(failure) => Authentication::Rejected(failure),
                };
            }
        }
        if let Some(principal) = req.source_principal.as_deref() {
            if let Some(identity) = self.mtls_identity(principal) {
                return identity;
            }
        }
        Authentication::NoCredentials
    }

    fn mtls_identity(&self, principal: &str) -> Option<Authentication> {
        if !self.mtls.enabled || principal.is_empty() {
            return None;
        }
        let trusted = (self.mtls.trusted_prefixes.is_empty()
            || self
                .mtls
                .trusted_prefixes
                .iter()
                .any(|p| principal.starts_with(p.as_str())))
            && (self.mtls.trust_domains.is_empty()
                || spiffe_trust_domain(principal)
                    .is_some_and(|d| self.mtls.trust_domains.iter().any(|t| t == d)));
        if !trusted {
            return Some(Authentication::Rejected(AuthnFailure::new(
                "mtls_untrusted_peer",
                "the client certificate's identity is not from a trusted domain",
            )));
        }
        Some(match entity_uid(&self.mtls.principal_type, principal) {
            Some(uid) => {
                Authentication::Authenticated(Identity::new(uid, Vec::new(), AuthMethod::Mtls))
            }
            None => Authentication::Rejected(AuthnFailure::new(
                "mtls_bad_principal",
                "the client certificate's identity cannot be used",
            )),
        })
    }
}

/// How often the API keys file is checked for changes.
const API_KEYS_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Logs one authentication attempt's outcome as a structured event (an
/// audit record once the audit trail exists). Never the credential.
fn log_outcome(req: &AccessRequest, result: &Authentication) {
    let (outcome, method, principal, reason) = match result {
        // Logged at debug: the principal is formatted only when debug is on.
        Authentication::Authenticated(_) if !tracing::enabled!(target: "portcullis::authn", tracing::Level::DEBUG) => {
            return
        }
        Authentication::Authenticated(id) => (
            "authenticated",
            Some(id.method.as_str()),
            Some(id.principal.to_string()),
            None,
        ),
        Authentication::NoCredentials => return,
        Authentication::Rejected(f) if f.unavailable => ("unavailable", None, None, Some(f.reason)),
        Authentication::Rejected(f) => ("rejected", None, None, Some(f.reason)),
        Authentication::Blocked { .. } => ("blocked", None, None, Some("source_blocked")),
    };
    // Successes are routine (every decision's audit record names the
    // principal and method): debug. Refusals stay visible at info.
    macro_rules! event {
        ($level:ident) => {
            tracing::$level!(
                target: "portcullis::authn",
                request_id = %req.request_id,
                source_ip = req.source_ip.map(|ip| ip.to_string()),
                outcome,
                method,
                principal,
                reason,
                "authentication"
            )
        };
    }
    if outcome == "authenticated" {
        event!(debug);
    } else {
        event!(info);
    }
}

/// The trust domain of a SPIFFE id (`spiffe://<domain>/<path>`).
fn spiffe_trust_domain(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let domain = rest.split('/').next()?;
    (!domain.is_empty()).then_some(domain)
}

/// Extracts the token from an `Authorization: Bearer <token>` header value.
fn bearer_token(value: &str) -> Result<&str, AuthnFailure> {
    let (scheme, rest) = value.trim().split_once(' ').ok_or_else(|| {
        AuthnFailure::new(
            "malformed_authorization",
            "the Authorization header must be 'Bearer <token>'",
        )
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnFailure::new(
            "unsupported_scheme",
            "only the Bearer authorization scheme is accepted",
        ));
    }
    let token = rest.trim();
    // One vectorised pass for both separators (tokens run to kilobytes).
    if token.is_empty() || memchr::memchr2(b',', b' ', token.as_bytes()).is_some() {
        // Envoy comma-merges repeated headers: two Authorization headers
        // must not smuggle a second token past us.
        return Err(AuthnFailure::new(
            "malformed_authorization",
            "send exactly one bearer token in one Authorization header",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::config::AuthnConfig;

    fn request(headers: &[(&str, &str)], principal: Option<&str>) -> AccessRequest {
        let mut r = AccessRequest::for_test("GET", "/");
        for (k, v) in headers {
            r.headers.insert(k.to_string(), v.to_string());
        }
        r.source_principal = principal.map(str::to_string);
        r
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(&AuthnConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn no_credentials_is_not_a_failure() {
        let a = authenticator();
        assert!(matches!(
            a.authenticate(&request(&[], None), 0).await,
            Authentication::NoCredentials
        ));
    }

    #[tokio::test]
    async fn non_bearer_scheme_is_rejected() {
        let a = authenticator();
        match a
            .authenticate(
                &request(&[("authorization", "Basic YWxhZGRpbjpvcGVu")], None),
                0,
            )
            .await
        {
            Authentication::Rejected(f) => assert_eq!(f.reason, "unsupported_scheme"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn comma_merged_or_space_separated_tokens_are_rejected() {
        let a = authenticator();
        let long = "x".repeat(2_000);
        for value in [
            "Bearer a.b.c,Bearer d.e.f".to_string(),
            "Bearer a.b.c d.e.f".to_string(),
            format!("Bearer {long}.{long},{long}"),
            format!("Bearer {long}.{long} {long}"),
        ] {
            match a
                .authenticate(&request(&[("authorization", &value)], None), 0)
                .await
            {
                Authentication::Rejected(f) => assert_eq!(f.reason, "malformed_authorization"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn trusted_spiffe_peer_is_a_service_account() {
        let a = authenticator();
        let id = "spiffe://acme.example/ns/ml/sa/batch-scorer";
        match a.authenticate(&request(&[], Some(id)), 0).await {
            Authentication::Authenticated(identity) => {
                assert_eq!(identity.method, AuthMethod::Mtls);
                assert_eq!(
                    identity.principal.to_string(),
                    format!("ServiceAccount::\"{id}\"")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn spiffe_id_outside_the_trust_domains_is_rejected() {
        let a = Authenticator::new(&AuthnConfig {
            mtls: crate::authn::config::MtlsConfig {
                trust_domains: vec!["acme.example".into()],
                ..Default::default()
            },
            ..AuthnConfig::default()
        })
        .unwrap();
        let ok = "spiffe://acme.example/ns/ml/sa/batch-scorer";
        assert!(matches!(
            a.authenticate(&request(&[], Some(ok)), 0).await,
            Authentication::Authenticated(_)
        ));
        for bad in [
            "spiffe://evil.example/ns/ml/sa/batch-scorer",
            "spiffe://acme.example.evil.example/sa/x",
            "spiffe:///sa/x",
        ] {
            match a.authenticate(&request(&[], Some(bad)), 0).await {
                Authentication::Rejected(f) => assert_eq!(f.reason, "mtls_untrusted_peer"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    /// Remembers what was counted.
    #[derive(Debug, Default)]
    struct Recorder(std::sync::Mutex<Vec<(failures::FailureKey, bool)>>);

    #[tonic::async_trait]
    impl failures::FailureStore for Recorder {
        async fn blocked_for(&self, _: &failures::FailureKey, _: Instant) -> Option<Duration> {
            None
        }
        async fn record_failure(
            &self,
            key: &failures::FailureKey,
            _: Instant,
            block: bool,
        ) -> bool {
            self.0.lock().unwrap().push((key.clone(), block));
            false
        }
        fn name(&self) -> &'static str {
            "recorder"
        }
    }

    /// An authenticator whose API keys come in `x-portcullis-key` from an
    /// empty keys file, counting failures in a [`Recorder`].
    fn counting() -> (tempfile::TempDir, Arc<Recorder>, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.yaml");
        std::fs::write(&keys, "keys: []\n").unwrap();
        let recorder = Arc::new(Recorder::default());
        let a = Authenticator::new(&AuthnConfig {
            api_keys: crate::authn::config::ApiKeyConfig {
                file: Some(keys),
                header: "X-Portcullis-Key".into(),
                ..Default::default()
            },
            ..AuthnConfig::default()
        })
        .unwrap()
        .with_failure_store(Arc::clone(&recorder) as Arc<dyn failures::FailureStore>);
        (dir, recorder, a)
    }

    fn unsigned_token(iss: &str, sub: &str) -> String {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.c2ln",
            b64(serde_json::json!({"alg": "ES256"})),
            b64(serde_json::json!({"iss": iss, "sub": sub}))
        )
    }

    #[tokio::test]
    async fn refused_credentials_count_against_the_source_and_the_presented_identity() {
        let (_dir, recorder, a) = counting();
        let from = |headers: &[(&str, &str)]| {
            let mut r = request(headers, None);
            r.source_ip = Some([192, 0, 2, 1].into());
            r
        };
        let token = format!("Bearer {}", unsigned_token("https://idp.example/", "alice"));
        let key = "pck_0123456789ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for headers in [
            [("authorization", token.as_str())],
            [("x-portcullis-key", key)],
        ] {
            assert!(matches!(
                a.authenticate(&from(&headers), 0).await,
                Authentication::Rejected(_)
            ));
        }
        let source = failures::FailureKey::Source([192, 0, 2, 1].into());
        let id = |s: &str| failures::FailureKey::Identity(s.into());
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                (source.clone(), true),
                (id("jwt:https://idp.example/#alice"), false),
                (source, true),
                (id("apikey:0123456789ab"), false),
            ],
            "sources are blocked, identities only reported"
        );
    }

    #[tokio::test]
    async fn the_api_key_header_is_configurable() {
        let (_dir, recorder, a) = counting();
        let key = "pck_0123456789ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        // The default header is not looked at when another is configured.
        assert!(matches!(
            a.authenticate(&request(&[("x-api-key", key)], None), 0)
                .await,
            Authentication::NoCredentials
        ));
        match a
            .authenticate(&request(&[("x-portcullis-key", key)], None), 0)
            .await
        {
            Authentication::Rejected(f) => assert_eq!(f.reason, "unknown_api_key"),
            other => panic!("{other:?}"),
        }
        // No source address: only the presented identity is counted.
        assert_eq!(recorder.0.lock().unwrap().len(), 1);
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_attempt_is_one_structured_event_without_the_credential() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let (_dir, _recorder, a) = counting();
        // Other tests on other threads (no subscriber) may register these
        // callsites for the first time while this subscriber registers, and
        // leave them cached as disabled: recompute every callsite's
        // interest now that this thread's subscriber exists.
        tracing::callsite::rebuild_interest_cache();
        let token = unsigned_token("https://idp.example/", "alice");
        let mut r = request(&[("authorization", &format!("Bearer {token}"))], None);
        r.request_id = "req-1".into();
        r.source_ip = Some([192, 0, 2, 1].into());
        a.authenticate(&r, 0).await;
        let spiffe = "spiffe://acme.example/ns/ml/sa/batch-scorer";
        a.authenticate(&request(&[], Some(spiffe)), 0).await;

        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|e: &serde_json::Value| e["fields"]["message"] == "authentication")
            .collect();
        assert_eq!(events.len(), 2, "{text}");
        let f = &events[0]["fields"];
        assert_eq!(events[0]["target"], "portcullis::authn");
        assert_eq!(f["outcome"], "rejected");
        assert_eq!(f["reason"], "unknown_issuer");
        assert_eq!(f["request_id"], "req-1");
        assert_eq!(f["source_ip"], "192.0.2.1");
        assert_eq!(events[1]["fields"]["outcome"], "authenticated");
        assert_eq!(events[1]["fields"]["method"], "mtls");
        assert!(!text.contains(&token), "the credential is never logged");
    }

    #[tokio::test]
    async fn untrusted_peer_is_rejected() {
        let a = authenticator();
        match a.authenticate(&request(&[], Some("CN=evil")), 0).await {
            Authentication::Rejected(f) => assert_eq!(f.reason, "mtls_untrusted_peer"),
            other => panic!("{other:?}"),
        }
    }
}
