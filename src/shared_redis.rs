//! One Redis connection (a single primary, a primary found through Redis
//! Sentinel, or a Redis Cluster), made lazily in the background and shared
//! by every store that keeps state in Redis: quota counters,
//! authentication failure counts and blocks, API keys. It knows no keys or
//! scripts; the stores do.
//!
//! The connection is a `ConnectionManager` (one multiplexed connection that
//! reconnects after errors) or a cluster connection, created lazily, in the
//! background, so that Portcullis starts and serves in its failure modes
//! while Redis is down, and a connect slower than one request's timeout
//! still completes. A `READONLY` reply (a failed-over primary) should make
//! the caller [`SharedRedis::forget`] the connection so the next call
//! reconnects; callers hand every error to [`SharedRedis::note_error`],
//! which does that. Behind Sentinel a lost connection is forgotten too:
//! the `ConnectionManager` would reconnect to the address it was made
//! with (a dead primary's), so the next call asks the Sentinels again. And
//! while calls flow, the Sentinels are asked again at most every
//! [`SENTINEL_CHECK`]: after `SENTINEL FAILOVER` the old primary stays
//! writable until the Sentinels demote it (seconds later), and writes it
//! takes meanwhile are lost when it resyncs from the new one.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::IntoConnectionInfo;

/// How long a (background) connection attempt may take. Longer than one
/// request's budget on purpose: a connect slower than that still completes
/// and serves the requests after it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The client's own bound on one command's answer: long, on purpose. The
/// stores bound their callers' waits themselves; a command that Redis
/// answers late (after a pause, under a burst) should still deliver its
/// answer, so that what it charged is known and can be refunded.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often, at most, a connection behind Sentinel checks with the
/// Sentinels that its primary is still the one they name (one `SENTINEL
/// MASTERS` and one `ROLE` on a new connection to the named primary, in
/// the background, only while calls use the connection). It bounds how
/// long writes may go to a primary the Sentinels have replaced.
pub const SENTINEL_CHECK: Duration = Duration::from_millis(500);

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

    /// Another handle on the same slot (for a background check).
    fn handle(&self) -> Lazy<C> {
        Lazy {
            slot: Arc::clone(&self.slot),
            connecting: Arc::clone(&self.connecting),
            ready: Arc::clone(&self.ready),
            last_error: Arc::clone(&self.last_error),
            tasks: self.tasks.clone(),
        }
    }

    /// Forgets the connection if `stale` says so of it.
    fn forget_if(&self, stale: impl FnOnce(&C) -> bool) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(stale) {
            *slot = None;
        }
    }

    /// Starts one attempt to connect in the background, unless one is
    /// under way; the connection it makes replaces the one held (if any),
    /// which stays in use until then.
    fn attempt<F>(&self, connect: impl FnOnce() -> F)
    where
        F: Future<Output = redis::RedisResult<C>> + Send + 'static,
    {
        if self.connecting.swap(true, Ordering::SeqCst) {
            return;
        }
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
                Ok(Err(e)) => *last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string(),
                Err(_) => {
                    *last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        format!("connecting took over {} s", CONNECT_TIMEOUT.as_secs())
                }
            }
            connecting.store(false, Ordering::SeqCst);
            ready.notify_waiters();
        });
    }

    /// The connection, made now if there is none (waiting for an attempt
    /// already under way).
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
        self.attempt(connect);
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
        /// A second connection of its own (see [`SharedRedis::witness`]).
        witness: Lazy<ClusterConnection>,
    },
    /// The primary that the Sentinels name, asked again after every
    /// forgotten connection.
    Sentinel {
        client: Arc<tokio::sync::Mutex<SentinelClient>>,
        config: ConnectionManagerConfig,
        /// The connection and the primary's address it was made to.
        connection: Lazy<(ConnectionManager, redis::ConnectionAddr)>,
        /// When the Sentinels were last asked (see [`SENTINEL_CHECK`]).
        checked: Mutex<tokio::time::Instant>,
    },
}

/// A Redis (one primary, a primary behind Sentinel, or a Cluster) that
/// several stores share.
pub struct SharedRedis {
    target: Target,
}

impl std::fmt::Debug for SharedRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        let kind = match self.target {
            Target::Single { .. } => "single",
            Target::Cluster { .. } => "cluster",
            Target::Sentinel { .. } => "sentinel",
        };
        f.debug_struct("SharedRedis")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// A live connection; clone it freely (both kinds multiplex).
#[derive(Clone)]
pub enum Connection {
    /// To a single primary (given, or named by the Sentinels).
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
            Target::Cluster {
                connection,
                witness,
                ..
            } => {
                connection.tasks = tasks.clone();
                witness.tasks = tasks.clone();
            }
            Target::Sentinel { connection, .. } => connection.tasks = tasks.clone(),
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
        Ok(SharedRedis {
            target: Target::Single {
                client,
                config: manager_config(timeout),
                connection: Lazy::new(),
            },
        })
    }

    /// The primary that the Redis Sentinels at `sentinels`
    /// (`redis://[user:password@]host:port` each, asked in order) name
    /// `master_name`; found on first use and again after a lost
    /// connection or a `READONLY` reply (see [`SharedRedis::note_error`]).
    /// The primary is reached with the username and password of the first
    /// Sentinel URL, database 0. The client gives up on a command after
    /// `timeout` or [`RESPONSE_TIMEOUT`], whichever is longer. `field`
    /// names the config field in errors, which never quote a URL (it may
    /// hold a password).
    pub fn sentinel(
        sentinels: &[String],
        master_name: &str,
        timeout: Duration,
        field: &str,
    ) -> Result<SharedRedis, String> {
        let infos = sentinels
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|_| format!("{field}[{i}]: not a Redis URL (redis://host:port)"))?;
                if info.redis_settings().db() != 0 {
                    return Err(format!(
                        "{field}[{i}]: a Sentinel has no databases; drop the /<db> from the URL"
                    ));
                }
                Ok(info)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let Some(first) = infos.first() else {
            return Err(format!(
                "{field}: at least one Sentinel URL (redis://host:26379)"
            ));
        };
        let primary = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(first.redis_settings().clone());
        let client = SentinelClient::build(
            infos,
            master_name.to_string(),
            Some(primary),
            SentinelServerType::Master,
        )
        .map_err(|_| format!("{field}: not usable as Sentinel addresses (redis://host:port)"))?;
        Ok(SharedRedis {
            target: Target::Sentinel {
                client: Arc::new(tokio::sync::Mutex::new(client)),
                config: manager_config(timeout),
                connection: Lazy::new(),
                checked: Mutex::new(tokio::time::Instant::now()),
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
                witness: Lazy::new(),
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
            Target::Cluster {
                client, connection, ..
            } => {
                let client = client.clone();
                connection
                    .get(|| async move { client.get_async_connection().await })
                    .await
                    .map(Connection::Cluster)
            }
            Target::Sentinel {
                client,
                config,
                connection,
                checked,
            } => {
                let sentinels = Arc::clone(client);
                let config = config.clone();
                let (manager, _) = connection
                    .get(|| async move {
                        let primary = ask_sentinels(&sentinels).await?;
                        let addr = primary.get_connection_info().addr().clone();
                        let manager = ConnectionManager::new_with_config(primary, config).await?;
                        Ok((manager, addr))
                    })
                    .await?;
                let now = tokio::time::Instant::now();
                let due = {
                    let mut last = checked.lock().unwrap_or_else(|p| p.into_inner());
                    let due = now.duration_since(*last) >= SENTINEL_CHECK;
                    if due {
                        *last = now;
                    }
                    due
                };
                if due {
                    let (sentinels, slot) = (Arc::clone(client), connection.handle());
                    connection.tasks.spawn(async move {
                        let asked =
                            tokio::time::timeout(CONNECT_TIMEOUT, ask_sentinels(&sentinels)).await;
                        if let Ok(Ok(primary)) = asked {
                            let named = primary.get_connection_info().addr().clone();
                            slot.forget_if(|(_, made_to)| *made_to != named);
                        }
                    });
                }
                Ok(Connection::Single(manager))
            }
        }
    }

    /// Starts connecting in the background (if no connection is made or
    /// under way), so that the first requests find it ready; on a Cluster
    /// the [`witness`](Self::witness) too. Needs a Tokio runtime; does
    /// nothing without one.
    pub fn connect_soon(self: &Arc<Self>) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let redis = Arc::clone(self);
            rt.spawn(async move {
                let _ = redis.connection().await;
            });
            let _ = self.witness();
        }
    }

    /// On a Redis Cluster: a second connection, independent of
    /// [`connection`](Self::connection) (its own connections to the
    /// primaries and its own slot map), for liveness checks (`ROLE`)
    /// while the main connection's calls go unanswered. The main
    /// connection stops every call, to every primary, while it refreshes
    /// its slot map after a `MOVED` reply (a failover); a check on this
    /// one still tells whether the slot's primary answers. `None` for a single
    /// primary or Sentinel, and until it is made: asking starts making it
    /// in the background (needs a Tokio runtime).
    pub fn witness(&self) -> Option<ClusterConnection> {
        let Target::Cluster { witness, .. } = &self.target else {
            return None;
        };
        let made = witness.cached();
        if made.is_none() {
            self.renew_witness();
        }
        made
    }

    /// Makes a new [`witness`](Self::witness) connection in the background
    /// (its slot map is stale: a node it took for a slot's primary
    /// answered as a replica) and puts it in place once made; the current
    /// one stays in use until then, so liveness checks go on meanwhile.
    /// Needs a Tokio runtime; does nothing without one.
    pub fn renew_witness(&self) {
        if let Target::Cluster {
            client, witness, ..
        } = &self.target
        {
            if tokio::runtime::Handle::try_current().is_ok() {
                let client = client.clone();
                witness.attempt(|| async move { client.get_async_connection().await });
            }
        }
    }

    /// Spawns `task` (a background check of this Redis's) on the tracker
    /// given by [`owned_by`](Self::owned_by), so that shutdown waits for
    /// it. Needs a Tokio runtime.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let tasks = match &self.target {
            Target::Single { connection, .. } => &connection.tasks,
            Target::Cluster { witness, .. } => &witness.tasks,
            Target::Sentinel { connection, .. } => &connection.tasks,
        };
        tasks.spawn(task);
    }

    /// Drops the connection so the next call reconnects (after a
    /// `READONLY` reply: the primary failed over).
    pub fn forget(&self) {
        match &self.target {
            Target::Single { connection, .. } => connection.forget(),
            Target::Cluster { connection, .. } => connection.forget(),
            Target::Sentinel { connection, .. } => connection.forget(),
        }
    }

    /// Forgets the connection if `e` says it reached a read-only replica
    /// (a demoted primary); behind Sentinel also when the connection was
    /// lost (the primary may be dead and another one promoted), so that
    /// the next call asks the Sentinels where the primary is now.
    pub fn note_error(&self, e: &redis::RedisError) {
        let read_only = e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        let lost = e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error();
        let sentinel = matches!(self.target, Target::Sentinel { .. });
        if read_only || (sentinel && lost) {
            self.forget();
        }
    }
}

/// A client for the primary that the Sentinels name, asking them in order;
/// the crate checks that the named primary says it is one (`ROLE`).
async fn ask_sentinels(
    sentinels: &tokio::sync::Mutex<SentinelClient>,
) -> redis::RedisResult<redis::Client> {
    sentinels.lock().await.async_get_client().await
}

/// The `ConnectionManager` settings of a single primary: a command is
/// given up after `timeout` or [`RESPONSE_TIMEOUT`], whichever is longer.
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(timeout.max(RESPONSE_TIMEOUT)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100))
}
