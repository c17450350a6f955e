//! A real Envoy with the configuration from `deploy/`, its listener and
//! admin interface on loopback ports it binds itself (port 0), killed on
//! drop.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::http::HttpRequest;
use super::paths::repo;
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
    /// at the given addresses and its listener and admin on ports of its own;
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
        // The listener and the admin interface bind port 0, and Envoy says
        // which ports it got: the admin's in the file of
        // `--admin-address-path`, the listener's at the admin's
        // `/listeners`. A port chosen in advance could be taken by another
        // process in the meantime, and a second Envoy on the same listener
        // port would share its connections without an error (Envoy sets
        // `SO_REUSEPORT`).
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = template.to_string();
        for (from, to) in [
            ("127.0.0.1:10000", any),
            ("127.0.0.1:8081", upstream),
            (portcullis_literal, portcullis),
            ("127.0.0.1:9901", any),
        ] {
            config = rewrite_address(&config, from, to);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config).expect("write envoy config");
        let admin_path = dir.path().join("admin-address");
        let log = dir.path().join("envoy.log");
        let log_file = File::create(&log).expect("create envoy log");
        let mut command = Command::new(&envoy);
        command
            .arg("-c")
            .arg(&path)
            .arg("--admin-address-path")
            .arg(&admin_path)
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
            addr: any,
            admin: any,
            log,
            _dir: dir,
        };
        if let Err(why) = envoy_proc.wait_ready(&admin_path) {
            panic!(
                "envoy did not become ready ({why}):\n{}",
                tail(&envoy_proc.log(), 80)
            );
        }
        envoy_proc
    }

    /// Learns the admin address (from `admin_path`) and the listener's
    /// (from `/listeners`), then waits for the listener to accept and
    /// `/ready` to say LIVE. Errors: Envoy exited, or the startup timeout.
    fn wait_ready(&mut self, admin_path: &std::path::Path) -> Result<(), &'static str> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err("exited");
            }
            if self.addr.port() == 0 {
                // Read again until the listener is known: the file may be
                // caught half written.
                let admin: Option<SocketAddr> = std::fs::read_to_string(admin_path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok());
                if let Some((admin, addr)) =
                    admin.and_then(|admin| Some((admin, listener_address(admin)?)))
                {
                    self.admin = admin;
                    self.addr = addr;
                }
            }
            if self.addr.port() != 0
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
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
        Err("timed out")
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

/// The address the configuration's one listener bound, from the admin's
/// `/listeners?format=json` (`listener_statuses[].local_address`);
/// `None` until it is listed with the port it bound.
fn listener_address(admin: SocketAddr) -> Option<SocketAddr> {
    let response = HttpRequest::get("/listeners?format=json")
        .timeout(Duration::from_secs(2))
        .try_send(admin)
        .ok()
        .filter(|r| r.status == 200)?;
    let body: serde_json::Value = serde_json::from_str(&response.text()).ok()?;
    // None listed yet: Envoy is still adding its static listener.
    let listeners = body["listener_statuses"].as_array()?;
    assert!(
        listeners.len() <= 1,
        "the tests' Envoy configs have one listener: {body}"
    );
    let socket = &listeners.first()?["local_address"]["socket_address"];
    let ip: std::net::IpAddr = socket["address"].as_str()?.parse().ok()?;
    let port = u16::try_from(socket["port_value"].as_u64()?).ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}
