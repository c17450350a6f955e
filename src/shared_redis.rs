//! One Redis connection (a single primary or a Redis Cluster), made lazily
//! in the background and shared by every store that keeps state in Redis:
//! quota counters, authentication failure counts and blocks, API keys. It
//! knows no keys or scripts; the stores do.
//!
//! The connection is a `ConnectionManager` (one multiplexed connection that
//! reconnects after errors) or a cluster connection, created lazily, in the
//! background, so that Portcullis starts and serves in its failure modes
//! while Redis is down, and a connect slower than one request's timeout
//! still completes. A `READONLY` reply (a failed-over primary) should make
//! the caller [`SharedRedis::forget`] the connection so the next call
//! reconnects.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// How long a (background) connection attempt may take. Longer than one
/// request's budget on purpose: a connect slower than that still completes
/// and serves the requests after it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The client's own bound on one command's answer: long, on purpose. The
/// stores bound their callers' waits themselves; a command that Redis
/// answers late (after a pause, under a burst) should still deliver its
/// answer, so that what it charged is known and can be refunded.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis could not be reached (or connecting failed); for operators only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect: {0}")]
pub struct Unreachable(pub String);

/// A connection made in the background. A request waits for it at most
/// its own timeout (enforced by the caller); the attempt goes on without it
/// and ends by itself within `CONNECT_TIMEOUT`.
struct Lazy<C> {
    slot: Arc<Mutex<Option<C>>>,
    connecting: Arc<AtomicBool>,
    ready: Arc<tokio::sync::Notify>,
    last_error: Arc<Mutex<String>>,
    /// Owns the background attempts (the server's tracker once given one
    /// with [`SharedRedis::owned_by`]).
    tasks: tokio_util::task::TaskTracker,
}

impl<C: Clone + Send + 'static> Lazy<C> {
    fn new() -> Self {
        Lazy {
            slot: Arc::new(Mutex::new(None)),
            connecting: Arc::new(AtomicBool::new(false)),
            ready: Arc::new(tokio::sync::Notify::new()),
            last_error: Arc::new(Mutex::new(String::new())),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    fn cached(&self) -> Option<C> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn forget(&self) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn get<F>(&self, connect: impl FnOnce() -> F) -> Result<C, Unreachable>
    where
        F: Future<Output = redis::RedisResult<C>> + Send + 'static,
    {
        let notified = self.ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        if !self.connecting.swap(true, Ordering::SeqCst) {
            let attempt = connect();
            let (slot, connecting, ready, last_error) = (
                Arc::clone(&self.slot),
                Arc::clone(&self.connecting),
                Arc::clone(&self.ready),
                Arc::clone(&self.last_error),
            );
            self.tasks.spawn(async move {
                match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                    Ok(Ok(c)) => *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(c),
                    Ok(Err(e)) => {
                        *last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string()
                    }
                    Err(_) => {
                        *last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                            format!("connecting took over {} s", CONNECT_TIMEOUT.as_secs())
                    }
                }
                connecting.store(false, Ordering::SeqCst);
                ready.notify_waiters();
            });
        }
        notified.await;
        self.cached().ok_or_else(|| {
            Unreachable(
                self.last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            )
        })
    }
}

enum Target {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
        connection: Lazy<ConnectionManager>,
    },
    Cluster {
        client: ClusterClient,
        connection: Lazy<ClusterConnection>,
    },
}

/// A Redis (one primary or a Cluster) that several stores share.
pub struct SharedRedis {
    target: Target,
}

impl std::fmt::Debug for SharedRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("SharedRedis")
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

/// A live connection; clone it freely (both kinds multiplex).
#[derive(Clone)]
pub enum Connection {
    /// To a single primary.
    Single(ConnectionManager),
    /// To a Redis Cluster (routes each command by its keys' slot).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl SharedRedis {
    /// This connection with its background connection attempts spawned on
    /// `tasks` (the running server's tracker), so that shutdown waits for
    /// them (each ends within [`CONNECT_TIMEOUT`]).
    pub fn owned_by(mut self, tasks: &tokio_util::task::TaskTracker) -> Self {
        match &mut self.target {
            Target::Single { connection, .. } => connection.tasks = tasks.clone(),
            Target::Cluster { connection, .. } => connection.tasks = tasks.clone(),
        }
        self
    }

    /// A single primary at `url` (`redis://host:port/db`); connects on first
    /// use. The client gives up on a command after `timeout` or
    /// [`RESPONSE_TIMEOUT`], whichever is longer. `field` names the config
    /// field in errors.
    pub fn single(url: &str, timeout: Duration, field: &str) -> Result<SharedRedis, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("{field} is not a Redis URL (redis://host:port/db): {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(timeout.max(RESPONSE_TIMEOUT)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        Ok(SharedRedis {
            target: Target::Single {
                client,
                config,
                connection: Lazy::new(),
            },
        })
    }

    /// A Redis Cluster reached through `seeds`.
    pub fn cluster(
        seeds: &[String],
        timeout: Duration,
        field: &str,
    ) -> Result<SharedRedis, String> {
        let client = ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(timeout.max(RESPONSE_TIMEOUT))
            .retries(1)
            .build()
            .map_err(|e| format!("{field}: not Redis URLs (redis://host:port): {e}"))?;
        Ok(SharedRedis {
            target: Target::Cluster {
                client,
                connection: Lazy::new(),
            },
        })
    }

    /// True for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// The connection, made now if there is none (waiting for an attempt
    /// already under way). Callers bound the wait with their own timeout.
    pub async fn connection(&self) -> Result<Connection, Unreachable> {
        match &self.target {
            Target::Single {
                client,
                config,
                connection,
            } => {
                let (client, config) = (client.clone(), config.clone());
                connection
                    .get(|| ConnectionManager::new_with_config(client, config))
                    .await
                    .map(Connection::Single)
            }
            Target::Cluster { client, connection } => {
                let client = client.clone();
                connection
                    .get(|| async move { client.get_async_connection().await })
                    .await
                    .map(Connection::Cluster)
            }
        }
    }

    /// Starts connecting in the background (if no connection is made or
    /// under way), so that the first requests find it ready. Needs a Tokio
    /// runtime; does nothing without one.
    pub fn connect_soon(self: &Arc<Self>) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let redis = Arc::clone(self);
            rt.spawn(async move {
                let _ = redis.connection().await;
            });
        }
    }

    /// Drops the connection so the next call reconnects (after a
    /// `READONLY` reply: the primary failed over).
    pub fn forget(&self) {
        match &self.target {
            Target::Single { connection, .. } => connection.forget(),
            Target::Cluster { connection, .. } => connection.forget(),
        }
    }

    /// Forgets the connection if `e` says it reached a read-only replica.
    pub fn note_error(&self, e: &redis::RedisError) {
        if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) {
            self.forget();
        }
    }
}
