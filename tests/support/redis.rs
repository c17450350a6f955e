//! A real `redis-server` (a three-node Redis Cluster, a primary with a
//! replica under Redis Sentinel) on free loopback ports, without
//! persistence, for the quota and authentication stores; with the faults a
//! test injects (pause, kill, restart, failover).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::ports::free_port;
use super::process::{die_with_parent, tool};
use super::STARTUP_TIMEOUT;

/// A real `redis-server` on a free loopback port, without persistence,
/// killed on drop. It can be paused (SIGSTOP), resumed, killed and
/// restarted on the same port for fault injection.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    paused: bool,
    extra: Vec<String>,
    /// A config file (in `_dir`) given before the arguments: Sentinel
    /// needs one, and rewrites it.
    config: Option<String>,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_configured(None, extra)
    }

    /// Starts a server whose config file holds `config` (lines of
    /// redis.conf or sentinel.conf), with extra arguments.
    fn start_configured(config: Option<&str>, extra: &[&str]) -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir");
            if let Some(config) = config {
                std::fs::write(dir.path().join("redis.conf"), config).expect("write redis.conf");
            }
            let mut server = RedisServer {
                child: None,
                port,
                paused: false,
                extra: extra.iter().map(|a| a.to_string()).collect(),
                config: config.map(|_| "redis.conf".to_string()),
                _dir: dir,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on a free port after 5 tries");
    }

    fn spawn(&mut self) -> bool {
        let mut command = Command::new(tool("redis-server"));
        command
            .args(&self.config)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // Events of 5 ms or more, for [`RedisServer::latency_events`].
            .args(["--latency-monitor-threshold", "5"])
            .args(&self.extra)
            .current_dir(self._dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("spawn redis-server");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            if self.ping() {
                self.child = Some(child);
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The server's latency events of 5 ms or more (`LATENCY LATEST`:
    /// event, last time, latest ms, max ms, on one line), for a failure
    /// message: a server that stalled inside an operation (a fork, an
    /// fsync, a slow command, or the host not running it meanwhile) shows
    /// here; empty when none did. A server descheduled between operations
    /// does not.
    pub fn latency_events(&self) -> String {
        let out = Command::new(tool("redis-cli"))
            .args([
                "-p",
                &self.port.to_string(),
                "--no-raw",
                "LATENCY",
                "LATEST",
            ])
            .stdin(Stdio::null())
            .output();
        out.map_or_else(
            |e| format!("redis-cli failed: {e}"),
            |o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        )
    }

    /// True when the server answers PING now.
    pub fn ping(&self) -> bool {
        self.command("PING\r\n")
            .is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Sends one inline command on a new connection; a reader for the
    /// reply. `None` when the server does not take it within the bounds.
    fn send(&self, inline: &str) -> Option<BufReader<std::net::TcpStream>> {
        let mut s = std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        s.write_all(inline.as_bytes()).ok()?;
        Some(BufReader::new(s))
    }

    /// Sends one inline command and returns the first reply line.
    pub fn command(&self, inline: &str) -> Option<String> {
        let mut line = String::new();
        self.send(inline)?.read_line(&mut line).ok()?;
        Some(line)
    }

    /// Sends one inline command and returns an array reply of bulk
    /// strings (`None` for any other reply).
    pub fn strings(&self, inline: &str) -> Option<Vec<String>> {
        let mut reader = self.send(inline)?;
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let n: usize = line.strip_prefix('*')?.trim().parse().ok()?;
        (0..n)
            .map(|_| {
                line.clear();
                reader.read_line(&mut line).ok()?;
                let len: usize = line.strip_prefix('$')?.trim().parse().ok()?;
                let mut body = vec![0u8; len + 2];
                reader.read_exact(&mut body).ok()?;
                Some(String::from_utf8_lossy(&body[..len]).into_owned())
            })
            .collect()
    }

    /// Sends one inline command and returns a bulk-string reply's text.
    pub fn bulk(&self, inline: &str) -> Option<String> {
        let mut reader = self.send(inline)?;
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let len: usize = line.strip_prefix('$')?.trim().parse().ok()?;
        let mut body = vec![0u8; len + 2];
        reader.read_exact(&mut body).ok()?;
        Some(String::from_utf8_lossy(&body[..len]).into_owned())
    }

    /// How many times Redis ran `command` (lower case, as `INFO
    /// commandstats` names it; commands a script ran count too); 0 when
    /// it never ran.
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self
            .bulk("INFO commandstats\r\n")
            .expect("INFO commandstats answers");
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Every key and its TTL in milliseconds (-1: no TTL).
    pub fn ttls(&self) -> Vec<(String, i64)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect redis");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"KEYS *\r\n").unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let n: usize = line.trim_start_matches('*').trim().parse().unwrap();
        let mut keys = Vec::new();
        for _ in 0..n {
            line.clear();
            reader.read_line(&mut line).unwrap();
            line.clear();
            reader.read_line(&mut line).unwrap();
            keys.push(line.trim_end().to_string());
        }
        keys.into_iter()
            .map(|k| {
                let cmd = format!("*2\r\n$4\r\nPTTL\r\n${}\r\n{}\r\n", k.len(), k);
                s.write_all(cmd.as_bytes()).unwrap();
                line.clear();
                reader.read_line(&mut line).unwrap();
                let ttl = line
                    .trim_start_matches(':')
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("PTTL {k}: {line:?}"));
                (k, ttl)
            })
            .collect()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: plain syscall on a child we own and have not reaped.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// Kills the server (SIGKILL); its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Starts a killed server again on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill the server before restarting it");
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.kill();
    }
}

/// A real three-primary Redis Cluster on free loopback ports, created with
/// `redis-cli --cluster create`, killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled nodes, joins them, and waits until
    /// every node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with_replicas(0)
    }

    /// Three primaries with `replicas` replicas each (`--cluster-replicas`),
    /// once every node reports `cluster_state:ok` and every replica's link
    /// to its primary is up (`master_link_status:up`).
    pub fn start_with_replicas(replicas: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            nodes.push(RedisServer::start_with(&["--cluster-enabled", "yes"]));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(tool("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let ok = nodes.iter().all(|n| {
                let replica_in_sync = n.bulk("INFO replication\r\n").is_some_and(|info| {
                    !info.contains("role:slave") || info.contains("master_link_status:up")
                });
                replica_in_sync
                    && n.bulk("CLUSTER INFO\r\n")
                        .is_some_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                return RedisCluster { nodes };
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Seed URLs, one per node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every key on every node with its TTL in milliseconds.
    pub fn ttls(&self) -> Vec<(String, i64)> {
        self.nodes.iter().flat_map(RedisServer::ttls).collect()
    }

    /// `CLUSTER NODES` as fields per line: `<id> <ip:port@cport> <flags>
    /// <primary id or -> <ping> <pong> <epoch> <link> <slot or range>...`.
    fn cluster_nodes(&self) -> Vec<Vec<String>> {
        self.nodes[0]
            .bulk("CLUSTER NODES\r\n")
            .expect("CLUSTER NODES answers")
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    }

    /// The index of our node at a `CLUSTER NODES` address field.
    fn index_at(&self, address: &str) -> usize {
        let port: u16 = address
            .split(['@', ':'])
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("a node address");
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("the node is one of ours")
    }

    /// A replica (an index for [`RedisCluster::node`]) of primary
    /// `primary`, from the replicas' own view (`INFO replication`:
    /// `master_port`); panics when it has none.
    pub fn replica_of(&self, primary: usize) -> usize {
        let port = format!("master_port:{}", self.nodes[primary].port);
        self.nodes
            .iter()
            .position(|n| {
                n.bulk("INFO replication\r\n")
                    .is_some_and(|info| info.lines().any(|l| l.trim() == port))
            })
            .unwrap_or_else(|| panic!("node {primary} has no replica"))
    }

    /// `CLUSTER FAILOVER TAKEOVER` on replica `replica`: it takes its
    /// primary's slots at once, without the primary's agreement (the
    /// old primary learns of it and becomes its replica; clients get
    /// `MOVED` from it).
    pub fn takeover(&self, replica: usize) {
        let reply = self.nodes[replica]
            .command("CLUSTER FAILOVER TAKEOVER\r\n")
            .expect("CLUSTER FAILOVER answers");
        assert!(
            reply.starts_with("+OK"),
            "CLUSTER FAILOVER TAKEOVER: {reply:?}"
        );
    }

    /// The node (an index for [`RedisCluster::node`]) that serves the slot
    /// of `key` (a key as sent to Redis, hash tag included, no spaces).
    pub fn node_of(&self, key: &str) -> usize {
        let slot: u16 = self.nodes[0]
            .command(&format!("CLUSTER KEYSLOT {key}\r\n"))
            .and_then(|r| r.trim().strip_prefix(':')?.parse().ok())
            .expect("CLUSTER KEYSLOT answers");
        for fields in self.cluster_nodes() {
            let serves = fields.iter().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            if serves {
                return self.index_at(&fields[1]);
            }
        }
        panic!("no node serves slot {slot} of {key}");
    }

    /// Each node's latency events (see [`RedisServer::latency_events`]),
    /// for a failure message: a node that stalled (a `nodes.conf` fsync, a
    /// slow command) shows here.
    pub fn latency_events(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("node {}: {}", n.port, n.latency_events()))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// One node, to inject a fault (pause, kill).
    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }
}

/// The master name the Sentinel of [`RedisSentinel`] monitors.
pub const MASTER_NAME: &str = "mymaster";

/// A primary, its replica and one Redis Sentinel (`redis-server
/// sentinel.conf --sentinel`, quorum 1) on free loopback ports, killed on
/// drop. The Sentinel judges a primary down after 500 ms of silence
/// (`down-after-milliseconds`) and fails over within a few seconds
/// (`failover-timeout` 2 s).
pub struct RedisSentinel {
    /// `nodes[0]` is the first primary, `nodes[1]` its replica.
    nodes: Vec<RedisServer>,
    sentinel: RedisServer,
}

impl RedisSentinel {
    /// Starts the primary, the replica (waits until it is in sync) and the
    /// Sentinel (waits until it knows the replica, which it needs to fail
    /// over).
    pub fn start() -> RedisSentinel {
        let primary = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        wait_until("the replica is in sync with the primary", || {
            replica
                .bulk("INFO replication\r\n")
                .is_some_and(|i| i.contains("master_link_status:up"))
        });
        let config = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds {MASTER_NAME} 500\n\
             sentinel failover-timeout {MASTER_NAME} 2000\n",
            primary.port
        );
        let sentinel = RedisServer::start_configured(Some(&config), &["--sentinel"]);
        wait_until("the Sentinel knows the replica", || {
            sentinel
                .command(&format!("SENTINEL REPLICAS {MASTER_NAME}\r\n"))
                .is_some_and(|r| r.starts_with("*1"))
        });
        RedisSentinel {
            nodes: vec![primary, replica],
            sentinel,
        }
    }

    /// The Sentinel's URL, as `quotas.redis_sentinels` takes it.
    pub fn urls(&self) -> Vec<String> {
        vec![self.sentinel.url()]
    }

    /// The node (an index for [`RedisSentinel::node`]) the Sentinel names
    /// the primary now, as clients see it: `SENTINEL MASTER` (what
    /// `SENTINEL MASTERS` lists, which the redis crate asks), not
    /// `SENTINEL GET-MASTER-ADDR-BY-NAME`, which names the promoted replica
    /// while the failover is still under way.
    pub fn primary(&self) -> usize {
        let fields = self
            .sentinel
            .strings(&format!("SENTINEL MASTER {MASTER_NAME}\r\n"))
            .expect("SENTINEL MASTER answers");
        let port: u16 = fields
            .chunks(2)
            .find(|kv| kv[0] == "port")
            .and_then(|kv| kv.get(1)?.parse().ok())
            .unwrap_or_else(|| panic!("SENTINEL MASTER without a port: {fields:?}"));
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("the Sentinel names an unknown primary: {fields:?}"))
    }

    /// Asks the Sentinel to fail over now (`SENTINEL FAILOVER`): the
    /// replica is promoted, the primary demoted to its replica.
    pub fn failover(&self) {
        let reply = self
            .sentinel
            .command(&format!("SENTINEL FAILOVER {MASTER_NAME}\r\n"))
            .expect("SENTINEL FAILOVER answers");
        assert!(reply.starts_with("+OK"), "SENTINEL FAILOVER: {reply:?}");
    }

    /// Waits (at most 30 s) until the Sentinel names another primary than
    /// `old` and that node says it is a primary; its index.
    pub fn wait_for_new_primary(&self, old: usize) -> usize {
        let mut new = old;
        wait_until("the Sentinel promotes the replica", || {
            new = self.primary();
            new != old
                && self.nodes[new]
                    .bulk("INFO replication\r\n")
                    .is_some_and(|i| i.contains("role:master"))
        });
        new
    }

    /// One node, to inject a fault or read its keys.
    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }
}

/// Polls `done` every 50 ms for at most 30 s; panics naming `what`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        thread::sleep(Duration::from_millis(50));
    }
}
