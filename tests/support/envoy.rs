//! A real Envoy with the configuration from `deploy/`, its addresses
//! rewritten to free loopback ports, killed on drop.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::http::HttpRequest;
use super::paths::repo;
use super::ports::free_port;
use super::process::{die_with_parent, kill_on_drop, read_lossy, tail, tool};
use super::STARTUP_TIMEOUT;

/// A running Envoy with `deploy/envoy.yaml`, killed on drop.
pub struct Envoy {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

/// Replaces one of the config's literal addresses (`127.0.0.1:10000`),
/// written in Envoy's form `address: 127.0.0.1, port_value: 10000`, with
/// `to`. The address must appear exactly once.
fn rewrite_address(config: &str, from: &str, to: SocketAddr) -> String {
    let (ip, port) = from.rsplit_once(':').expect("ip:port");
    let needle = format!("address: {ip}, port_value: {port}");
    let count = config.matches(&needle).count();
    assert_eq!(
        count, 1,
        "the Envoy config must contain `{needle}` exactly once (found {count}): \
         the tests rewrite it to a free port"
    );
    config.replace(
        &needle,
        &format!("address: {}, port_value: {}", to.ip(), to.port()),
    )
}

impl Envoy {
    /// Starts Envoy with `deploy/envoy.yaml`, its PDP and upstream pointed
    /// at the given addresses and its listener and admin on free ports;
    /// returns once the listener accepts connections and `/ready` is LIVE.
    pub fn start(portcullis: SocketAddr, upstream: SocketAddr) -> Envoy {
        Envoy::start_edited(portcullis, upstream, |config| config)
    }

    /// Like [`Envoy::start`], with `deploy/envoy.yaml` changed by `edit`
    /// first (e.g. without a filter).
    pub fn start_edited(
        portcullis: SocketAddr,
        upstream: SocketAddr,
        edit: impl Fn(String) -> String,
    ) -> Envoy {
        let template = edit(
            std::fs::read_to_string(repo().join("deploy/envoy.yaml"))
                .expect("read deploy/envoy.yaml"),
        );
        Envoy::start_with(&template, portcullis, upstream)
    }

    /// Envoy with `deploy/<file>`, whose Portcullis address is
    /// `portcullis_literal` (e.g. `127.0.0.1:9191`, the forward-auth
    /// listener of `deploy/forward-auth/envoy-http.yaml`) instead of
    /// `127.0.0.1:50051`.
    pub fn start_file(
        file: &str,
        portcullis_literal: &str,
        portcullis: SocketAddr,
        upstream: SocketAddr,
    ) -> Envoy {
        let template = std::fs::read_to_string(repo().join("deploy").join(file))
            .unwrap_or_else(|e| panic!("read deploy/{file}: {e}"));
        Envoy::start_rewritten(&template, portcullis_literal, portcullis, upstream)
    }

    /// Like [`Envoy::start`], with the configuration text `template` (which
    /// must hold the same four addresses as `deploy/envoy.yaml`).
    pub fn start_with(template: &str, portcullis: SocketAddr, upstream: SocketAddr) -> Envoy {
        Envoy::start_rewritten(template, "127.0.0.1:50051", portcullis, upstream)
    }

    fn start_rewritten(
        template: &str,
        portcullis_literal: &str,
        portcullis: SocketAddr,
        upstream: SocketAddr,
    ) -> Envoy {
        let envoy = tool("envoy");
        // free_port() can race with another process: a start whose bind
        // failed is retried on new ports, a bounded number of times.
        let attempts = 3;
        let mut last_log = String::new();
        for attempt in 1..=attempts {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut config = template.to_string();
            for (from, to) in [
                ("127.0.0.1:10000", addr),
                ("127.0.0.1:8081", upstream),
                (portcullis_literal, portcullis),
                ("127.0.0.1:9901", admin),
            ] {
                config = rewrite_address(&config, from, to);
            }
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("envoy.yaml");
            std::fs::write(&path, config).expect("write envoy config");
            let log = dir.path().join("envoy.log");
            let log_file = File::create(&log).expect("create envoy log");
            let mut command = Command::new(&envoy);
            command
                .arg("-c")
                .arg(&path)
                .args(["-l", "warning", "--disable-hot-restart"])
                // No shared memory between concurrent Envoys in parallel tests.
                .arg("--use-dynamic-base-id")
                // Two cores, shared: one worker is plenty for tests.
                .args(["--concurrency", "1"])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("dup log file"))
                .stderr(log_file);
            die_with_parent(&mut command);
            let child = command.spawn().unwrap_or_else(|e| {
                panic!("spawn {}: {e}", envoy.display());
            });
            let mut envoy_proc = Envoy {
                child,
                addr,
                admin,
                log,
                _dir: dir,
            };
            match envoy_proc.wait_ready() {
                Ok(()) => return envoy_proc,
                Err(exited) => {
                    last_log = envoy_proc.log();
                    let bind_race = last_log.contains("ddress already in use");
                    if !(exited && bind_race && attempt < attempts) {
                        panic!(
                            "envoy did not become ready (attempt {attempt}, {}):\n{}",
                            if exited { "exited" } else { "timed out" },
                            tail(&last_log, 80)
                        );
                    }
                }
            }
        }
        panic!("envoy could not start in {attempts} attempts:\n{last_log}");
    }

    /// Waits for the listener and admin `/ready` == LIVE. `Err(true)` if
    /// Envoy exited, `Err(false)` on timeout.
    fn wait_ready(&mut self) -> Result<(), bool> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(true);
            }
            let listening =
                TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok();
            if listening {
                let ready = HttpRequest::get("/ready")
                    .timeout(Duration::from_secs(2))
                    .try_send(self.admin)
                    .map(|r| r.status == 200 && r.text().trim() == "LIVE")
                    .unwrap_or(false);
                if ready {
                    return Ok(());
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(false)
    }

    /// The HTTP listener clients talk to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// Envoy's stdout and stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let log = self.log();
        kill_on_drop(&mut self.child, "envoy log", &log, 40);
    }
}
