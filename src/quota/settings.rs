//! The `quotas:` section of the configuration: where counters live, what
//! happens when that store fails, and building the enforcement from it.
//! The limits themselves are policy (`quotas.yaml`, see `config.rs` in
//! this folder).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::shared_redis::SharedRedis;

/// Where quota counters live and what happens when that store fails.
/// The limits themselves are policy (`quotas.yaml`), not configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaSettings {
    /// `local` (in-process, the default), `redis` (one primary, shared by
    /// replicas), `redis_sentinel` (the primary that Redis Sentinel names)
    /// or `redis_cluster`.
    pub store: QuotaStoreKind,
    /// For `store: redis`: `redis://host:port/db` (a password in it is never
    /// logged).
    pub redis_url: Option<String>,
    /// For `store: redis_cluster`: seed nodes, `redis://host:port` each.
    pub redis_urls: Vec<String>,
    /// For `store: redis_sentinel`: the Sentinels to ask for the primary,
    /// `redis://[user:password@]host:port` each (no database), asked in
    /// order. The primary is reached with the first URL's username and
    /// password, database 0.
    pub redis_sentinels: Vec<String>,
    /// For `store: redis_sentinel`: the master name the Sentinels monitor
    /// (`sentinel monitor <master name> ...` in sentinel.conf).
    pub redis_master_name: Option<String>,
    /// The per-call deadline, in milliseconds: the most one call waits for
    /// the store. A call that reaches it is decided in the degraded mode
    /// (what the store charged for it is refunded) and counts as one
    /// failure; the store counts as down only by the circuit breaker
    /// (connection lost, a stall, or half the calls of a window failing).
    /// Slow is not down: a queue on a busy, healthy store must fit in it,
    /// or the burst spills into the degraded mode. See docs/rate-limits.md.
    pub timeout_ms: u64,
    /// The stall threshold, in milliseconds (1..=1000, default 10): a
    /// failure domain (the primary, or a Cluster slot) with calls
    /// outstanding and no reply to any of them for this long is down, and
    /// the calls waiting on it are answered in the degraded mode at once.
    /// Under Envoy's default RLS deadline (20 ms) so that a paused Redis
    /// is answered within it; a healthy Redis under a burst replies every
    /// few milliseconds. Past `timeout_ms` the per-call deadline comes
    /// first. See docs/rate-limits.md.
    pub stall_ms: u64,
    /// `deny` (503), `allow` (uncounted) or `local` (in-process limits
    /// divided by `replicas`) while the store fails.
    pub on_store_error: crate::quota::OnStoreError,
    /// Replicas sharing the store: in `local` failure mode each enforces
    /// 1/replicas of every limit.
    pub replicas: u64,
    /// Most keys the in-process store holds (memory bound).
    pub max_local_keys: usize,
    /// How limits count: `gcra` (the default) or `fixed_window`
    /// (envoyproxy/ratelimit's counting, for a drop-in migration).
    pub counting: Counting,
    /// The rate-limit headers of RLS answers: when, and their names.
    pub rls_headers: RlsHeaders,
}

/// How limits count.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Counting {
    /// GCRA: a token bucket as one timestamp per key; no window boundary,
    /// refused requests consume nothing, reset = until the bucket is full.
    #[default]
    Gcra,
    /// envoyproxy/ratelimit's fixed windows aligned to the unit (a minute
    /// limit resets at every whole minute), every hit counted (refused ones
    /// too), reset = until the window ends. Limits with our `burst`
    /// extension stay GCRA (a fixed window has no burst).
    FixedWindow,
}

/// When an RLS answer carries rate-limit headers
/// (`response_headers_to_add`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HeadersSent {
    /// Only on `OVER_LIMIT` (the default: on an `OK` the request goes on to
    /// `Check`, whose quotas describe the caller).
    #[default]
    OverLimit,
    /// On every answer with a limit (envoyproxy/ratelimit's
    /// `LIMIT_RESPONSE_HEADERS_ENABLED=true`): the limit closest to refusing.
    Always,
    /// Never (envoyproxy/ratelimit's default).
    Never,
}

/// The rate-limit headers of RLS answers (envoyproxy/ratelimit's
/// `LIMIT_RESPONSE_HEADERS_ENABLED`, `LIMIT_LIMIT_HEADER`,
/// `LIMIT_REMAINING_HEADER`, `LIMIT_RESET_HEADER`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RlsHeaders {
    /// `over_limit` (default), `always` or `never`.
    pub send: HeadersSent,
    /// The limit header's name (default `ratelimit-limit`).
    pub limit: String,
    /// The remaining header's name (default `ratelimit-remaining`).
    pub remaining: String,
    /// The reset header's name, seconds (default `ratelimit-reset`).
    pub reset: String,
}

impl Default for RlsHeaders {
    fn default() -> Self {
        RlsHeaders {
            send: HeadersSent::OverLimit,
            limit: "ratelimit-limit".into(),
            remaining: "ratelimit-remaining".into(),
            reset: "ratelimit-reset".into(),
        }
    }
}

impl RlsHeaders {
    /// The configured name for one of the standard header names, lower case
    /// (`ratelimit-limit`, `-remaining`, `-reset`); others unchanged.
    pub fn rename<'a>(&'a self, standard: &'a str) -> &'a str {
        match standard {
            "ratelimit-limit" => &self.limit,
            "ratelimit-remaining" => &self.remaining,
            "ratelimit-reset" => &self.reset,
            other => other,
        }
    }
}

impl std::fmt::Debug for QuotaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaSettings")
            .field("store", &self.store)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_urls", &self.redis_urls.len())
            .field("redis_sentinels", &self.redis_sentinels.len())
            .field("redis_master_name", &self.redis_master_name)
            .field("timeout_ms", &self.timeout_ms)
            .field("stall_ms", &self.stall_ms)
            .field("on_store_error", &self.on_store_error)
            .field("replicas", &self.replicas)
            .field("max_local_keys", &self.max_local_keys)
            .field("counting", &self.counting)
            .field("rls_headers", &self.rls_headers)
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
    /// The primary that Redis Sentinel names (`redis_sentinels`,
    /// `redis_master_name`), found again after a failover.
    #[serde(rename = "redis_sentinel")]
    RedisSentinel,
}

impl QuotaStoreKind {
    /// The name as written in the configuration (`local`, `redis`,
    /// `redis_cluster`, `redis_sentinel`).
    pub fn name(self) -> &'static str {
        match self {
            QuotaStoreKind::Local => "local",
            QuotaStoreKind::Redis => "redis",
            QuotaStoreKind::RedisCluster => "redis_cluster",
            QuotaStoreKind::RedisSentinel => "redis_sentinel",
        }
    }
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            store: QuotaStoreKind::Local,
            redis_url: None,
            redis_urls: Vec::new(),
            redis_sentinels: Vec::new(),
            redis_master_name: None,
            timeout_ms: crate::quota::DEFAULT_TIMEOUT.as_millis() as u64,
            stall_ms: crate::quota::DEFAULT_STALL.as_millis() as u64,
            on_store_error: crate::quota::OnStoreError::Local,
            replicas: 1,
            max_local_keys: 1_000_000,
            counting: Counting::Gcra,
            rls_headers: RlsHeaders::default(),
        }
    }
}

impl QuotaSettings {
    /// Every problem with this section, one line each.
    pub fn problems(&self) -> Vec<String> {
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
        p.extend(self.sentinel_problems());
        if self.timeout_ms == 0 || self.timeout_ms > 10_000 {
            p.push("quotas.timeout_ms: between 1 and 10000".into());
        }
        if self.stall_ms == 0 || self.stall_ms > 1000 {
            p.push(format!(
                "quotas.stall_ms: between 1 and 1000 (got {}; the default, 10, is under Envoy's 20 ms RLS deadline)",
                self.stall_ms
            ));
        }
        if self.replicas == 0 {
            p.push("quotas.replicas: at least 1".into());
        }
        if self.max_local_keys < 1024 {
            p.push("quotas.max_local_keys: at least 1024".into());
        }
        let h = &self.rls_headers;
        for (field, name) in [
            ("limit", &h.limit),
            ("remaining", &h.remaining),
            ("reset", &h.reset),
        ] {
            // RFC 9110 section 5.1: a field name is a token.
            if !crate::request::is_token(name) {
                p.push(format!(
                    "quotas.rls_headers.{field}: '{name}' is not an HTTP header name (RFC 9110 token: letters, digits, '-')"
                ));
            }
        }
        p
    }

    /// The problems of the Sentinel fields: required with `store:
    /// redis_sentinel`, refused with any other store.
    fn sentinel_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.store != QuotaStoreKind::RedisSentinel {
            for (field, given) in [
                ("redis_sentinels", !self.redis_sentinels.is_empty()),
                ("redis_master_name", self.redis_master_name.is_some()),
            ] {
                if given {
                    p.push(format!(
                        "quotas.{field}: only with store: redis_sentinel (the store is {})",
                        self.store.name()
                    ));
                }
            }
            return p;
        }
        for (field, given) in [
            ("redis_url", self.redis_url.is_some()),
            ("redis_urls", !self.redis_urls.is_empty()),
        ] {
            if given {
                p.push(format!(
                    "quotas.{field}: not with store: redis_sentinel (the Sentinels name the primary; list them in redis_sentinels)"
                ));
            }
        }
        if self.redis_sentinels.is_empty() {
            p.push("quotas.redis_sentinels: required with store: redis_sentinel (the Sentinels, e.g. [redis://127.0.0.1:26379])".into());
        } else if let Err(e) = SharedRedis::sentinel(
            &self.redis_sentinels,
            "-",
            Duration::from_millis(1),
            "quotas.redis_sentinels",
        ) {
            p.push(e);
        }
        match self.redis_master_name.as_deref() {
            None => p.push("quotas.redis_master_name: required with store: redis_sentinel (the name in `sentinel monitor <master name> <host> <port> <quorum>`, e.g. mymaster)".into()),
            Some(name) if name.trim().is_empty() => p.push("quotas.redis_master_name: empty; give the name in `sentinel monitor <master name> ...` (e.g. mymaster)".into()),
            Some(name) if name.contains(char::is_whitespace) => p.push(
                "quotas.redis_master_name: a master name has no spaces (as in `sentinel monitor <master name> ...`)".into(),
            ),
            Some(_) => {}
        }
        p
    }

    /// The Redis these settings name (not yet connected), if any.
    /// Background connection attempts are spawned on `tasks`.
    pub fn redis(
        &self,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Result<Option<Arc<SharedRedis>>, String> {
        let timeout = Duration::from_millis(self.timeout_ms);
        let redis = match self.store {
            QuotaStoreKind::Local => None,
            QuotaStoreKind::Redis => Some(Arc::new(
                SharedRedis::single(
                    self.redis_url.as_deref().unwrap_or_default(),
                    timeout,
                    "quotas.redis_url",
                )?
                .owned_by(tasks),
            )),
            QuotaStoreKind::RedisCluster => Some(Arc::new(
                SharedRedis::cluster(&self.redis_urls, timeout, "quotas.redis_urls")?
                    .owned_by(tasks),
            )),
            QuotaStoreKind::RedisSentinel => Some(Arc::new(
                SharedRedis::sentinel(
                    &self.redis_sentinels,
                    self.redis_master_name.as_deref().unwrap_or_default(),
                    timeout,
                    "quotas.redis_sentinels",
                )?
                .owned_by(tasks),
            )),
        };
        if let Some(redis) = &redis {
            // The first burst should find the connection made.
            redis.connect_soon();
        }
        Ok(redis)
    }

    /// The enforcement these settings describe, on a Redis of its own.
    pub fn build(&self) -> Result<crate::quota::Quotas, String> {
        Ok(self.build_on(self.redis(&tokio_util::task::TaskTracker::new())?))
    }

    /// The enforcement these settings describe; `redis` is the connection
    /// from [`QuotaSettings::redis`] (possibly shared with authentication).
    pub fn build_on(&self, redis: Option<Arc<SharedRedis>>) -> crate::quota::Quotas {
        use crate::quota::reserve::{self, ReservationStore};
        let timeout = Duration::from_millis(self.timeout_ms);
        let (store, reservations): (Arc<dyn crate::quota::QuotaStore>, Arc<dyn ReservationStore>) =
            match redis {
                None => {
                    let clock = Arc::new(crate::time::SystemClock);
                    let local = Arc::new(crate::quota::local::LocalStore::new(
                        self.max_local_keys,
                        clock.clone(),
                    ));
                    let reservations = reserve::LocalReservations::new(Arc::clone(&local), clock);
                    (local, Arc::new(reservations))
                }
                Some(redis) => (
                    Arc::new(
                        crate::quota::redis::RedisStore::on(Arc::clone(&redis))
                            .with_stall(Duration::from_millis(self.stall_ms)),
                    ),
                    Arc::new(reserve::redis::RedisReservations::on(redis)),
                ),
            };
        crate::quota::Quotas::new(
            store,
            timeout,
            self.on_store_error,
            self.replicas,
            self.max_local_keys,
        )
        .with_stall(Duration::from_millis(self.stall_ms))
        .with_counting(self.counting)
        .with_rls_headers(self.rls_headers.clone())
        .with_reservations(reservations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(urls: &[&str], name: Option<&str>) -> QuotaSettings {
        QuotaSettings {
            store: QuotaStoreKind::RedisSentinel,
            redis_sentinels: urls.iter().map(|u| u.to_string()).collect(),
            redis_master_name: name.map(str::to_string),
            ..QuotaSettings::default()
        }
    }

    #[test]
    fn a_sentinel_store_with_sentinels_and_a_master_name_loads() {
        let s = sentinel(
            &["redis://127.0.0.1:26379", "redis://:pw@127.0.0.1:26380"],
            Some("mymaster"),
        );
        assert_eq!(s.problems(), Vec::<String>::new());
        let yaml = "store: redis_sentinel\nredis_sentinels: [redis://127.0.0.1:26379]\nredis_master_name: mymaster\n";
        let parsed: QuotaSettings = serde_yaml_ng::from_str(yaml).expect("parses");
        assert_eq!(parsed.store, QuotaStoreKind::RedisSentinel);
        assert_eq!(parsed.problems(), Vec::<String>::new());
    }

    #[test]
    fn a_sentinel_store_without_sentinels_or_master_name_is_refused_naming_both() {
        let p = sentinel(&[], None).problems();
        assert!(
            p.iter()
                .any(|l| l.starts_with("quotas.redis_sentinels: required")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("quotas.redis_master_name: required")),
            "{p:?}"
        );
    }

    #[test]
    fn an_empty_or_spaced_master_name_is_refused() {
        let url = ["redis://127.0.0.1:26379"];
        let empty = sentinel(&url, Some(" ")).problems();
        assert_eq!(empty.len(), 1, "{empty:?}");
        assert!(empty[0].starts_with("quotas.redis_master_name: empty"));
        let spaced = sentinel(&url, Some("my master")).problems();
        assert_eq!(spaced.len(), 1, "{spaced:?}");
        assert!(spaced[0].contains("no spaces"), "{spaced:?}");
    }

    #[test]
    fn a_sentinel_url_that_does_not_parse_is_refused_by_position_without_quoting_it() {
        let p = sentinel(
            &["redis://127.0.0.1:26379", "http://user:secret@host:26379"],
            Some("mymaster"),
        )
        .problems();
        assert_eq!(
            p,
            ["quotas.redis_sentinels[1]: not a Redis URL (redis://host:port)"]
        );
        assert!(!p[0].contains("secret"));
    }

    #[test]
    fn a_sentinel_url_with_a_database_is_refused() {
        let p = sentinel(&["redis://127.0.0.1:26379/2"], Some("mymaster")).problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("quotas.redis_sentinels[0]: a Sentinel has no databases"));
    }

    #[test]
    fn sentinel_fields_with_another_store_and_other_stores_fields_with_sentinel_are_refused() {
        let redis = QuotaSettings {
            store: QuotaStoreKind::Redis,
            redis_url: Some("redis://127.0.0.1:6379".into()),
            redis_sentinels: vec!["redis://127.0.0.1:26379".into()],
            redis_master_name: Some("mymaster".into()),
            ..QuotaSettings::default()
        };
        assert_eq!(
            redis.problems(),
            [
                "quotas.redis_sentinels: only with store: redis_sentinel (the store is redis)",
                "quotas.redis_master_name: only with store: redis_sentinel (the store is redis)",
            ]
        );
        let mut with_url = sentinel(&["redis://127.0.0.1:26379"], Some("mymaster"));
        with_url.redis_url = Some("redis://127.0.0.1:6379".into());
        let p = with_url.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("quotas.redis_url: not with store: redis_sentinel"));
    }
}
