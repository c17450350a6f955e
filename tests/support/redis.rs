//! A real `redis-server` (and a three-node Redis Cluster) on free loopback
//! ports, without persistence, for the quota and authentication stores;
//! with the faults a test injects (pause, kill, restart).

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
    _dir: TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                child: None,
                port,
                paused: false,
                extra: extra.iter().map(|a| a.to_string()).collect(),
                _dir: tempfile::tempdir().expect("temp dir"),
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
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
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
        let mut nodes = Vec::new();
        for _ in 0..3 {
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
            .args(["--cluster-replicas", "0", "--cluster-yes"])
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
                n.bulk("CLUSTER INFO\r\n")
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

    /// The node (an index for [`RedisCluster::node`]) that serves the slot
    /// of `key` (a key as sent to Redis, hash tag included, no spaces).
    pub fn node_of(&self, key: &str) -> usize {
        let slot: u16 = self.nodes[0]
            .command(&format!("CLUSTER KEYSLOT {key}\r\n"))
            .and_then(|r| r.trim().strip_prefix(':')?.parse().ok())
            .expect("CLUSTER KEYSLOT answers");
        let nodes = self.nodes[0]
            .bulk("CLUSTER NODES\r\n")
            .expect("CLUSTER NODES answers");
        // `<id> <ip:port@cport> <flags> <primary> <ping> <pong> <epoch>
        // <link> <slot or range>...`
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.iter().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            if serves {
                let port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("a node address");
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("the node is one of ours");
            }
        }
        panic!("no node serves slot {slot} of {key}");
    }

    /// One node, to inject a fault (pause, kill).
    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }
}
