//! Real nginx and Caddy (Debian's packages) with the forward-auth configs
//! from `deploy/forward-auth/`, their addresses rewritten to free loopback
//! ports: plain child processes with temporary configs (never the system
//! services), killed on drop. Also the two tools' own config checks, for
//! the deploy tests.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::paths::repo;
use super::ports::free_port;
use super::process::{die_with_parent, kill_on_drop, read_lossy, tail, tool};
use super::STARTUP_TIMEOUT;

/// The addresses the forward-auth gateway configs in deploy/ hold once
/// each: the gateway's listener (nginx; Caddy's site is `http://:8080`),
/// the models, Portcullis.
pub const LISTENER: &str = "127.0.0.1:8080";
pub const MODELS: &str = "127.0.0.1:8081";
pub const PORTCULLIS: &str = "127.0.0.1:9191";

/// `text` with each `(from, to)` replaced, in lines that are not comments
/// (`#`); each `from` must occur exactly once in such lines.
pub fn rewrite(text: &str, file: &str, replacements: &[(&str, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (from, to) in replacements {
        let mut found = 0;
        for line in lines.iter_mut() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            found += line.matches(from).count();
            *line = line.replace(from, to);
        }
        assert_eq!(
            found, 1,
            "{file} must contain `{from}` exactly once outside comments (found {found}): \
             the tests rewrite it"
        );
    }
    lines.join("\n") + "\n"
}

fn deploy_text(file: &str) -> String {
    std::fs::read_to_string(repo().join("deploy").join(file))
        .unwrap_or_else(|e| panic!("read deploy/{file}: {e}"))
}

/// A gateway process, killed on drop.
pub struct Gateway {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Gateway {
    /// Where clients send requests.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the gateway wrote so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Starts `command` (built by `prepare` in a fresh directory for the
    /// listener `addr`) until it accepts connections; retried on new ports
    /// when the one chosen was taken meanwhile.
    fn start(name: &'static str, prepare: impl Fn(&Path, SocketAddr) -> Command) -> Gateway {
        let attempts = 3;
        for attempt in 1..=attempts {
            let dir = tempfile::tempdir().expect("temp dir");
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = dir.path().join("gateway.log");
            let mut command = prepare(dir.path(), addr);
            let out = File::create(&log).expect("create gateway log");
            command
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup log"))
                .stderr(out);
            die_with_parent(&mut command);
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
            let mut gateway = Gateway {
                name,
                child,
                addr,
                log,
                _dir: dir,
            };
            match gateway.wait_listening() {
                Ok(()) => return gateway,
                Err(exited) => {
                    let log = gateway.log();
                    if exited && log.contains("ddress already in use") && attempt < attempts {
                        continue;
                    }
                    panic!(
                        "{name} did not start (attempt {attempt}, {}):\n{}",
                        if exited { "exited" } else { "timed out" },
                        tail(&log, 60)
                    );
                }
            }
        }
        unreachable!()
    }

    fn wait_listening(&mut self) -> Result<(), bool> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(true);
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(false)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let log = self.log();
        kill_on_drop(&mut self.child, &format!("{} log", self.name), &log, 40);
    }
}

/// The main config around an http-context drop-in: one process (no
/// master, no daemon), logs and temporary files in `dir`.
fn nginx_main(dir: &Path, include: &Path) -> String {
    let d = dir.display();
    format!(
        "pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {d}/body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   include {};\n\
         }}\n",
        include.display()
    )
}

/// nginx with `deploy/forward-auth/nginx.conf` in front of `models`,
/// asking Portcullis's forward-auth listener at `portcullis`.
pub fn start_nginx(portcullis: SocketAddr, models: SocketAddr) -> Gateway {
    let text = deploy_text("forward-auth/nginx.conf");
    Gateway::start("nginx", |dir, addr| {
        let conf = rewrite(
            &text,
            "deploy/forward-auth/nginx.conf",
            &[
                (LISTENER, addr.to_string()),
                (MODELS, models.to_string()),
                (PORTCULLIS, portcullis.to_string()),
            ],
        );
        let include = dir.join("portcullis.conf");
        std::fs::write(&include, conf).unwrap();
        std::fs::write(dir.join("nginx.conf"), nginx_main(dir, &include)).unwrap();
        let mut c = Command::new(tool("nginx"));
        c.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off; master_process off;"]);
        c
    })
}

/// `nginx -t` on the http-context drop-in `deploy/<file>`: `Err` with
/// nginx's words when it refuses it.
pub fn nginx_accepts(file: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let include = repo().join("deploy").join(file);
    std::fs::write(
        dir.path().join("nginx.conf"),
        nginx_main(dir.path(), &include),
    )
    .unwrap();
    let out = Command::new(tool("nginx"))
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .output()
        .expect("run nginx -t");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(())
    } else {
        Err(said)
    }
}

/// Caddy's own state (autosave, certificates) in `dir`, never $HOME.
fn caddy_command(dir: &Path) -> Command {
    let mut c = Command::new(tool("caddy"));
    c.env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"));
    c
}

/// Caddy with `deploy/forward-auth/Caddyfile` in front of `models`, asking
/// Portcullis's forward-auth listener at `portcullis`; its admin API off.
pub fn start_caddy(portcullis: SocketAddr, models: SocketAddr) -> Gateway {
    let text = deploy_text("forward-auth/Caddyfile");
    Gateway::start("caddy", |dir, addr| {
        let conf = rewrite(
            &text,
            "deploy/forward-auth/Caddyfile",
            &[
                // Any host, bound to loopback.
                ("http://:8080", format!("http://:{}", addr.port())),
                (MODELS, models.to_string()),
                (PORTCULLIS, portcullis.to_string()),
                ("admin localhost:2019", "admin off".to_string()),
            ],
        );
        let file = dir.join("Caddyfile");
        std::fs::write(&file, conf).unwrap();
        let mut c = caddy_command(dir);
        c.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&file);
        c
    })
}

/// `caddy validate` on `deploy/<file>`: `Err` with Caddy's words when it
/// refuses it.
pub fn caddy_accepts(file: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = caddy_command(dir.path())
        .args(["validate", "--adapter", "caddyfile", "--config"])
        .arg(repo().join("deploy").join(file))
        .output()
        .expect("run caddy validate");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
