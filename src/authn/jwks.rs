//! Remote JSON Web Key Sets: fetched over HTTP(S) with a timeout (from a
//! configured URL or through OIDC discovery), refreshed in the background as
//! `Cache-Control: max-age` asks (within bounds), refetched on an unknown
//! `kid` at most once per interval, and trusted only up to a maximum
//! staleness. It does not verify tokens (that is `jwt`).
//!
//! Time is passed in (`now: Instant`) wherever a rule depends on it, so the
//! rules are tested without sleeping.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio_util::sync::CancellationToken;

use jsonwebtoken::Algorithm;

use super::jwt::{parse_key_set, report_skipped, Key};
use crate::authn::config::JwksConfig;

/// Largest JWKS or discovery document we read; a provider sending more is
/// broken or hostile.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// Checks that a configured URL is an absolute http(s) URL.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => Ok(()),
        other => Err(format!("'{url}': scheme {other} is not http or https")),
    }
}

/// Why fetching an issuer's keys failed (for logs, never for clients).
#[derive(Debug, thiserror::Error)]
pub enum JwksUnreachable {
    /// The HTTP exchange failed or timed out.
    #[error("issuer '{issuer}': fetching {url} failed: {message}")]
    Fetch {
        issuer: String,
        url: String,
        message: String,
    },
    /// The provider answered with something that is not a usable document.
    #[error("issuer '{issuer}': {url} returned an unusable document: {message}")]
    Document {
        issuer: String,
        url: String,
        message: String,
    },
}

/// The keys of an issuer as last fetched.
#[derive(Debug)]
pub struct Loaded {
    /// The keys.
    pub keys: Vec<Key>,
    /// When they were fetched.
    pub fetched_at: Instant,
}

/// Why an issuer's keys cannot be used right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysUnavailable {
    /// No fetch has succeeded yet.
    NotLoaded,
    /// The last successful fetch is older than the maximum staleness.
    Stale,
}

/// Where the key set is found.
#[derive(Debug, Clone)]
enum Source {
    Url(String),
    Discovery,
}

/// One issuer's remote key set.
#[derive(Debug)]
pub struct RemoteJwks {
    issuer: String,
    source: Source,
    client: reqwest::Client,
    config: JwksConfig,
    loaded: ArcSwapOption<Loaded>,
    /// When an unknown `kid` last triggered a refetch. A std mutex is fine:
    /// it is held for a comparison, never across an await.
    last_unknown_kid_refetch: Mutex<Option<Instant>>,
    /// One fetch at a time: concurrent unknown-kid refetches and the
    /// background refresh wait for each other instead of piling up.
    fetching: tokio::sync::Mutex<()>,
    fetches: std::sync::atomic::AtomicU64,
    /// The issuer's algorithms: keys for none of them are not used.
    algorithms: Vec<Algorithm>,
    /// Fingerprints of the skipped keys of the last document taken, so that
    /// each is logged and counted once, not at every refresh.
    reported: Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl RemoteJwks {
    /// A key set read from `url`, or from the issuer's OIDC discovery
    /// document when `url` is None, for an issuer accepting `algorithms`.
    /// Nothing is fetched yet.
    pub fn new(
        issuer: &str,
        url: Option<&str>,
        config: &JwksConfig,
        algorithms: Vec<Algorithm>,
    ) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.fetch_timeout_ms))
            .connect_timeout(Duration::from_millis(config.fetch_timeout_ms))
            // A redirect could point the fetch anywhere; providers publish
            // their final URL.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS backend is compiled in");
        RemoteJwks {
            issuer: issuer.to_string(),
            source: match url {
                Some(u) => Source::Url(u.to_string()),
                None => Source::Discovery,
            },
            client,
            config: config.clone(),
            loaded: ArcSwapOption::empty(),
            last_unknown_kid_refetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fetches: std::sync::atomic::AtomicU64::new(0),
            algorithms,
            reported: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The issuer these keys belong to.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// How many fetches of the key set were attempted (for tests/metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The keys, if they were fetched and are not older than the maximum
    /// staleness at `now`.
    pub fn current(&self, now: Instant) -> Result<Arc<Loaded>, KeysUnavailable> {
        let loaded = self.loaded.load_full().ok_or(KeysUnavailable::NotLoaded)?;
        let age = now.saturating_duration_since(loaded.fetched_at);
        if age > Duration::from_secs(self.config.max_staleness_seconds) {
            return Err(KeysUnavailable::Stale);
        }
        Ok(loaded)
    }

    /// True when tokens of this issuer can be verified at `now`.
    pub fn is_ready(&self, now: Instant) -> bool {
        self.current(now).is_ok()
    }

    /// Fetches the key set now and swaps it in. Returns how long to wait
    /// before the next refresh (the provider's `max-age`, within bounds).
    /// On failure the previous keys stay.
    pub async fn refresh(&self) -> Result<Duration, JwksUnreachable> {
        let _one_at_a_time = self.fetching.lock().await;
        self.fetch_and_store().await
    }

    /// Refetches because a token named a `kid` we do not know, unless that
    /// happened less than `unknown_kid_refetch_seconds` before `now`.
    /// Returns true when a refetch succeeded.
    pub async fn refetch_for_unknown_kid(&self, now: Instant) -> bool {
        {
            let mut last = self
                .last_unknown_kid_refetch
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let interval = Duration::from_secs(self.config.unknown_kid_refetch_seconds);
            if let Some(at) = *last {
                if now.saturating_duration_since(at) < interval {
                    return false;
                }
            }
            *last = Some(now);
        }
        let _one_at_a_time = self.fetching.lock().await;
        match self.fetch_and_store().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refetch for an unknown kid failed");
                false
            }
        }
    }

    /// Refreshes until `cancel`: at the interval the provider asks for, and
    /// after `retry_seconds` when a fetch fails (cached keys keep working up
    /// to the maximum staleness meanwhile).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let wait = match self.refresh().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the cached keys");
                    Duration::from_secs(self.config.retry_seconds)
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn fetch_and_store(&self) -> Result<Duration, JwksUnreachable> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = match &self.source {
            Source::Url(u) => u.clone(),
            Source::Discovery => self.discover().await?,
        };
        let (body, max_age) = self.get(&url).await?;
        // A key this issuer cannot use is skipped, not a reason to refuse
        // the document: its other keys (a newly published signing key, say)
        // are taken. Only a document without one usable key is refused, and
        // the cached keys stay.
        let set = parse_key_set(&body, &self.algorithms).map_err(|problem| {
            JwksUnreachable::Document {
                issuer: self.issuer.clone(),
                url: url.clone(),
                message: problem.to_string(),
            }
        })?;
        {
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            let new: Vec<_> = set
                .skipped
                .iter()
                .filter(|s| !reported.contains(&s.fingerprint))
                .cloned()
                .collect();
            report_skipped(&self.issuer, &url, &new);
            *reported = set.skipped.iter().map(|s| s.fingerprint).collect();
        }
        let count = set.keys.len();
        self.loaded.store(Some(Arc::new(Loaded {
            keys: set.keys,
            fetched_at: Instant::now(),
        })));
        tracing::info!(issuer = %self.issuer, keys = count, skipped = set.skipped.len(), "JWKS fetched");
        Ok(refresh_interval(max_age, &self.config))
    }

    /// Reads `jwks_uri` from `<issuer>/.well-known/openid-configuration`;
    /// the document must name the same issuer (OIDC Discovery 4.3).
    async fn discover(&self) -> Result<String, JwksUnreachable> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let (body, _) = self.get(&url).await?;
        let bad = |message: &str| JwksUnreachable::Document {
            issuer: self.issuer.clone(),
            url: url.clone(),
            message: message.to_string(),
        };
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| bad("not a JSON document"))?;
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
            return Err(bad("its 'issuer' is not the configured issuer"));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("it has no 'jwks_uri'"))?;
        check_url(jwks_uri).map_err(|e| bad(&format!("jwks_uri: {e}")))?;
        Ok(jwks_uri.to_string())
    }

    /// GETs `url`, bounded in time and size; returns the body and the
    /// response's `Cache-Control: max-age`.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), JwksUnreachable> {
        let fetch_error = |message: String| JwksUnreachable::Fetch {
            issuer: self.issuer.clone(),
            url: url.to_string(),
            message,
        };
        let mut response = self
            .client
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| fetch_error(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fetch_error(format!("HTTP status {}", response.status())));
        }
        let max_age = response
            .headers()
            .get_all("cache-control")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fetch_error(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(fetch_error(format!(
                    "the document is larger than {MAX_DOCUMENT_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }
}

/// `max-age=N` from a Cache-Control value; `no-cache`/`no-store` count as 0.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|d| {
        let lower = d.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        let n = lower.strip_prefix("max-age=")?;
        n.trim_matches('"')
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    })
}

/// The provider's `max-age` clamped to the configured bounds; the maximum
/// when it gave none.
fn refresh_interval(max_age: Option<Duration>, config: &JwksConfig) -> Duration {
    let min = Duration::from_secs(config.min_refresh_seconds);
    let max = Duration::from_secs(config.max_refresh_seconds);
    max_age.unwrap_or(max).clamp(min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JwksConfig {
        JwksConfig {
            min_refresh_seconds: 60,
            max_refresh_seconds: 3600,
            unknown_kid_refetch_seconds: 30,
            max_staleness_seconds: 7200,
            ..JwksConfig::default()
        }
    }

    #[test]
    fn max_age_is_read_and_clamped() {
        let c = config();
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(
            refresh_interval(Some(Duration::from_secs(300)), &c),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_interval(Some(Duration::from_secs(1)), &c),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_interval(Some(Duration::from_secs(999_999)), &c),
            Duration::from_secs(3600)
        );
        assert_eq!(refresh_interval(None, &c), Duration::from_secs(3600));
    }

    #[test]
    fn keys_expire_after_max_staleness() {
        let jwks = RemoteJwks::new(
            "i",
            Some("http://127.0.0.1:1/jwks"),
            &config(),
            vec![Algorithm::ES256],
        );
        let t0 = Instant::now();
        assert_eq!(jwks.current(t0).unwrap_err(), KeysUnavailable::NotLoaded);
        jwks.loaded.store(Some(Arc::new(Loaded {
            keys: Vec::new(),
            fetched_at: t0,
        })));
        assert!(jwks.is_ready(t0 + Duration::from_secs(7200)));
        assert_eq!(
            jwks.current(t0 + Duration::from_secs(7201)).unwrap_err(),
            KeysUnavailable::Stale
        );
    }

    #[tokio::test]
    async fn unknown_kid_triggers_at_most_one_refetch_per_interval() {
        // Port 1 refuses connections: every attempted fetch fails fast, and
        // the counter shows how many were attempted.
        let jwks = RemoteJwks::new(
            "i",
            Some("http://127.0.0.1:1/jwks"),
            &config(),
            vec![Algorithm::ES256],
        );
        let t0 = Instant::now();
        for i in 0..100 {
            jwks.refetch_for_unknown_kid(t0 + Duration::from_millis(i))
                .await;
        }
        assert_eq!(jwks.fetch_count(), 1);
        jwks.refetch_for_unknown_kid(t0 + Duration::from_secs(31))
            .await;
        assert_eq!(jwks.fetch_count(), 2);
    }

    #[tokio::test]
    async fn a_provider_that_never_answers_fails_the_fetch_within_the_timeout() {
        // A listener that is never accepted from: connections complete (the
        // kernel queues them) and no byte ever comes back.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks", silent.local_addr().unwrap());
        let jwks = RemoteJwks::new(
            "i",
            Some(&url),
            &JwksConfig {
                fetch_timeout_ms: 200,
                ..config()
            },
            vec![Algorithm::ES256],
        );
        let result = tokio::time::timeout(Duration::from_secs(10), jwks.refresh())
            .await
            .expect("the fetch gives up by itself, it does not hang");
        assert!(
            matches!(result, Err(JwksUnreachable::Fetch { .. })),
            "{result:?}"
        );
        assert!(!jwks.is_ready(Instant::now()));
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(check_url("https://idp.example/jwks").is_ok());
        assert!(check_url("file:///etc/passwd").is_err());
        assert!(check_url("not a url").is_err());
    }
}
