//! Shared support for the integration tests: real processes (Portcullis,
//! Envoy) on free loopback ports, an in-process upstream that echoes what it
//! received, a small HTTP/1.1 client, and JWTs signed with the fixture keys.
//!
//! It does not decide what a test expects; the tests do. Every process it
//! starts is killed when its handle drops, and every wait is bounded.
//!
//! Tools come from `PORTCULLIS_<TOOL>`, then `<repo>/.tools/bin`, then `PATH`;
//! a missing tool is a test failure that says to run
//! `scripts/install-test-tools.sh`, never a silent skip.
#![allow(dead_code)] // each test file uses a different part of this module

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tempfile::TempDir;

/// How long a process may take to become ready before the test fails.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP exchange with Envoy or the upstream may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The issuer of the fixture keys (`tests/fixtures/keys`).
pub const ISSUER: &str = "https://idp.test.portcullis/";
/// The audience Portcullis accepts for [`ISSUER`].
pub const AUDIENCE: &str = "portcullis";

// ---------------------------------------------------------------------------
// Paths, ports, tools
// ---------------------------------------------------------------------------

/// The repository root (the crate's manifest directory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file under `tests/fixtures`.
pub fn fixture(relative: &str) -> PathBuf {
    repo().join("tests/fixtures").join(relative)
}

/// The repository's bundled policy directory.
pub fn policies_dir() -> PathBuf {
    repo().join("policies")
}

/// A loopback port that was free a moment ago. Another process may take it
/// before the caller binds it: callers that can retry a start do so.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// Finds a tool the tests run for real: `envoy`, `grpcurl` or `redis-server`.
///
/// Looks at `PORTCULLIS_<NAME>` (upper case, `-` as `_`), then
/// `<repo>/.tools/bin/<name>`, then `PATH`. Panics when it finds none.
pub fn tool(name: &str) -> PathBuf {
    let var = format!("PORTCULLIS_{}", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        let path = PathBuf::from(path);
        assert!(
            is_executable(&path),
            "{var}={} is not an executable file; unset it to use \
             .tools/bin/{name} from `scripts/install-test-tools.sh`",
            path.display()
        );
        return path;
    }
    let local = repo().join(".tools/bin").join(name);
    if is_executable(&local) {
        return local;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return candidate;
            }
        }
    }
    panic!(
        "`{name}` not found (looked at ${var}, {}, and PATH). \
         Run `scripts/install-test-tools.sh` (as root) to install the test tools, \
         or set {var} to the binary.",
        local.display()
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Makes a child die with the test process even when the test process is
/// killed without running destructors (Ctrl-C on cargo, a CI timeout), so
/// no Envoy or Portcullis outlives its test run on a shared machine.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends SIGTERM to `child` and waits at most `timeout` for it to exit.
fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: plain syscall on a pid we own and have not reaped yet.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    wait_timeout(child, timeout)
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("try_wait on child") {
            Some(status) => return Some(status),
            None if Instant::now() >= deadline => return None,
            None => thread::sleep(Duration::from_millis(20)),
        }
    }
}

// ---------------------------------------------------------------------------
// Portcullis
// ---------------------------------------------------------------------------

/// Writes a Portcullis config into `dir` that trusts the fixture issuer and
/// uses the bundled policies, all paths absolute; returns its path.
///
/// Both listeners are on port 0 so that tests can run in parallel; the
/// ports are learnt from the `listening <kind> <addr>` lines on stdout.
pub fn write_config(dir: &Path) -> PathBuf {
    let q = |p: PathBuf| serde_json::to_string(&p.display().to_string()).unwrap();
    let text = format!(
        r#"# Written by tests/support/mod.rs
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
http_listen: "127.0.0.1:0"
policies: {policies}
authentication:
  leeway_seconds: 30
  jwt:
    - issuer: "{ISSUER}"
      audiences: ["{AUDIENCE}"]
      jwks_file: {jwks}
      algorithms: ["ES256", "RS256"]
      principal_type: "User"
      org_claim: "org"
"#,
        policies = q(policies_dir()),
        jwks = q(fixture("keys/test-issuer.jwks.json")),
    );
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, text).expect("write portcullis config");
    path
}

/// A running `portcullis serve`, killed on drop.
pub struct Portcullis {
    child: Child,
    addr: SocketAddr,
    /// Lines of stdout after the first `listening decision` line.
    stdout: mpsc::Receiver<String>,
    /// Every `listening <kind> <addr>` line seen so far.
    listeners: Vec<(String, SocketAddr)>,
    stderr: PathBuf,
    _dir: TempDir,
}

impl Portcullis {
    /// Starts `portcullis serve <args>` and waits until it prints
    /// `listening decision <addr>`.
    ///
    /// Unless `args` say otherwise it adds `--config` (from
    /// [`write_config`]), `--policies <repo>/policies` and
    /// `--listen 127.0.0.1:0`.
    pub fn start(args: &[&str]) -> Portcullis {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut full: Vec<String> = vec!["serve".into()];
        let has = |flag: &str| {
            args.iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
        };
        if !has("--config") {
            full.push("--config".into());
            full.push(write_config(dir.path()).display().to_string());
        }
        if !has("--policies") {
            full.push("--policies".into());
            full.push(policies_dir().display().to_string());
        }
        if !has("--listen") {
            full.push("--listen".into());
            full.push("127.0.0.1:0".into());
        }
        if !has("--http-listen") {
            full.push("--http-listen".into());
            full.push("127.0.0.1:0".into());
        }
        full.extend(args.iter().map(|a| a.to_string()));

        let stderr = dir.path().join("portcullis.stderr");
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command
            .args(&full)
            .current_dir(dir.path())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("create stderr file"));
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("spawn portcullis");

        // A thread drains stdout for the life of the process, so that the
        // server never blocks on a full pipe, and hands each line over.
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let mut portcullis = Portcullis {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stdout: rx,
            listeners: Vec::new(),
            stderr,
            _dir: dir,
        };
        portcullis.addr = portcullis.wait_listener_inner("decision", &full);
        portcullis
    }

    /// The decision gRPC listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address printed for listener `kind` (`decision`, `admin`,
    /// `http`), waiting for its line if it has not come yet.
    pub fn listener(&mut self, kind: &str) -> SocketAddr {
        self.wait_listener_inner(kind, &[])
    }

    fn wait_listener_inner(&mut self, kind: &str, args: &[String]) -> SocketAddr {
        if let Some((_, addr)) = self.listeners.iter().find(|(k, _)| k == kind) {
            return *addr;
        }
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.stdout.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "portcullis {args:?} printed no `listening {kind} ADDR` line within {STARTUP_TIMEOUT:?}\n\
                     stdout so far:\n{}\nstderr:\n{}",
                    seen.join("\n"),
                    tail(&self.stderr(), 100)
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_timeout(&mut self.child, Duration::from_secs(5));
                    panic!(
                        "portcullis {args:?} closed stdout (exit status {status:?}) before printing \
                         `listening {kind} ADDR`\nstdout:\n{}\nstderr:\n{}",
                        seen.join("\n"),
                        tail(&self.stderr(), 100)
                    )
                }
            };
            let mut words = line.split_whitespace();
            if let (Some("listening"), Some(k), Some(a), None) =
                (words.next(), words.next(), words.next(), words.next())
            {
                let addr: SocketAddr = a
                    .parse()
                    .unwrap_or_else(|e| panic!("bad address in stdout line {line:?}: {e}"));
                self.listeners.push((k.to_string(), addr));
                if k == kind {
                    return addr;
                }
            }
            seen.push(line);
        }
    }

    /// `GET path` on the operations HTTP listener: status and body.
    pub fn http_get(&mut self, path: &str) -> (u16, String) {
        let addr = self.listener("http");
        http_get(addr, path)
    }

    /// Everything the server wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, the production stop path, and waits at most `timeout`
    /// for the exit status; panics (with stderr) if the process lingers.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        match terminate(&mut self.child, timeout) {
            Some(status) => status,
            None => panic!(
                "portcullis did not exit within {timeout:?} of SIGTERM\nstderr:\n{}",
                tail(&self.stderr(), 100)
            ),
        }
    }
}

impl Drop for Portcullis {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- portcullis stderr (last 60 lines) ---\n{}\n--- end ---",
                tail(&self.stderr(), 60)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Envoy
// ---------------------------------------------------------------------------

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
        "deploy/envoy.yaml must contain `{needle}` exactly once (found {count}): \
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

    /// Like [`Envoy::start`], with the configuration text `template` (which
    /// must hold the same four addresses as `deploy/envoy.yaml`).
    pub fn start_with(template: &str, portcullis: SocketAddr, upstream: SocketAddr) -> Envoy {
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
                ("127.0.0.1:50051", portcullis),
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
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- envoy log (last 40 lines) ---\n{}\n--- end ---",
                tail(&self.log(), 40)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Upstream: an HTTP/1.1 echo server
// ---------------------------------------------------------------------------

/// An in-process HTTP/1.1 server that answers every request with 200 and a
/// JSON description of it:
///
/// ```json
/// {"method": "POST", "path": "/v1/...", "headers": {"x-a": "1, 2"},
///  "header_list": [["x-a", "1"], ["x-a", "2"]], "body": "..."}
/// ```
///
/// Header names are lower-cased; `headers` joins repeated headers with
/// `", "`, `header_list` keeps each one, in order. Request bodies are read by
/// `Content-Length`; a chunked request gets 501.
pub struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 1024 * 1024;

impl Upstream {
    /// Starts the server on `127.0.0.1:0`, on its own thread and runtime so
    /// that tests may use blocking clients.
    pub fn start() -> Upstream {
        let hits = Arc::new(AtomicUsize::new(0));
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let counter = hits.clone();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime for upstream");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind upstream");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(echo_connection(stream, counter.clone()));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(STARTUP_TIMEOUT)
            .expect("upstream did not start");
        Upstream {
            addr,
            hits,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests it has answered.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn echo_connection(mut stream: tokio::net::TcpStream, hits: Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read one request head (keep-alive: Envoy reuses connections).
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            if buf.len() > MAX_HEAD_BYTES {
                let _ = stream.write_all(&simple_response(431, "")).await;
                return;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);

        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (Some(method), Some(path), Some(_version)) = (parts.next(), parts.next(), parts.next())
        else {
            let _ = stream.write_all(&simple_response(400, "")).await;
            return;
        };
        let mut header_list = Vec::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                let _ = stream.write_all(&simple_response(400, "")).await;
                return;
            };
            header_list.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let header = |name: &str| {
            header_list
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if header("transfer-encoding").is_some() {
            let _ = stream.write_all(&simple_response(501, "")).await;
            return;
        }
        let length = match header("content-length").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) if n <= MAX_BODY_BYTES => n,
            Some(_) => {
                let _ = stream.write_all(&simple_response(400, "")).await;
                return;
            }
        };
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));

        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &header_list {
            headers
                .entry(name.clone())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        let echo = json!({
            "method": method,
            "path": path,
            "headers": headers,
            "header_list": header_list,
            "body": String::from_utf8_lossy(&body),
        })
        .to_string();
        hits.fetch_add(1, Ordering::SeqCst);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{echo}",
            echo.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

fn simple_response(status: u16, reason: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// HTTP/1.1 client
// ---------------------------------------------------------------------------

/// One HTTP/1.1 request, sent on a fresh connection (`Connection: close`).
#[derive(Debug, Clone)]
pub struct HttpRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Duration,
}

/// What came back: status, headers (names lower-cased, in order) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A request with `method` for `path` (sent as-is, unnormalised).
    pub fn new(method: &str, path: &str) -> HttpRequest {
        HttpRequest {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: HTTP_TIMEOUT,
        }
    }

    pub fn get(path: &str) -> HttpRequest {
        HttpRequest::new("GET", path)
    }

    pub fn post(path: &str) -> HttpRequest {
        HttpRequest::new("POST", path)
    }

    /// Adds a header (repeat to send it several times).
    pub fn header(mut self, name: &str, value: &str) -> HttpRequest {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> HttpRequest {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Sets a JSON body and its content type.
    pub fn json(mut self, body: &Value) -> HttpRequest {
        self.body = body.to_string().into_bytes();
        self.header("content-type", "application/json")
    }

    /// Sets the body to these bytes with this Content-Type (for bodies
    /// that are not well-formed JSON).
    pub fn raw_body(mut self, content_type: &str, body: &[u8]) -> HttpRequest {
        self.body = body.to_vec();
        self.header("content-type", content_type)
    }

    /// Bounds connecting, writing and reading (each).
    pub fn timeout(mut self, timeout: Duration) -> HttpRequest {
        self.timeout = timeout;
        self
    }

    /// Sends the request; panics on any I/O or protocol error.
    pub fn send(&self, addr: SocketAddr) -> HttpResponse {
        self.try_send(addr)
            .unwrap_or_else(|e| panic!("{} {} to {addr}: {e}", self.method, self.path))
    }

    /// Sends the request.
    pub fn try_send(&self, addr: SocketAddr) -> Result<HttpResponse, String> {
        let mut stream =
            TcpStream::connect_timeout(&addr, self.timeout).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(self.timeout)).unwrap();
        stream.set_write_timeout(Some(self.timeout)).unwrap();
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        let has = |name: &str| {
            self.headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        if !has("host") {
            head.push_str("host: api.test\r\n");
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH") {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        head.push_str("connection: close\r\n\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(&self.body);
        stream
            .write_all(&request)
            .map_err(|e| format!("write: {e}"))?;
        // No half-close after writing: Envoy treats a client FIN as the end
        // of the connection and may reset the request. `connection: close`
        // makes the server end it after the response instead.
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .map_err(|e| format!("read: {e} (got {} bytes)", raw.len()))?;
        parse_response(&raw)
    }
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "no complete response head in {:?}",
            String::from_utf8_lossy(raw)
        )
    })?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let rest = &raw[end + 4..];
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = get("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad content-length {length:?}"))?;
        if rest.len() < length {
            return Err(format!("body cut short: {} of {length} bytes", rest.len()));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("chunk size line missing")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {}, headers {:?}, body {:?}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }
}

// ---------------------------------------------------------------------------
// JWTs
// ---------------------------------------------------------------------------

/// A fixture signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// ES256, kid `test-es256`, in the issuer's JWKS.
    Es256,
    /// RS256, kid `test-rs256`, in the issuer's JWKS.
    Rs256,
    /// ES256 key that is NOT in the JWKS, sent with kid `test-es256`: a
    /// forged signature on an otherwise well-formed token.
    UntrustedEs256,
}

impl Key {
    fn pem(self) -> PathBuf {
        fixture(match self {
            Key::Es256 => "keys/test-es256.pem",
            Key::Rs256 => "keys/test-rs256.pem",
            Key::UntrustedEs256 => "keys/untrusted-es256.pem",
        })
    }

    fn kid(self) -> &'static str {
        match self {
            Key::Es256 | Key::UntrustedEs256 => "test-es256",
            Key::Rs256 => "test-rs256",
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Claims of a valid token from the fixture issuer for `sub` in `org`,
/// issued now, expiring in ten minutes. Adjust fields for negative cases.
pub fn claims(sub: &str, org: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "org": org,
        "iat": now,
        "exp": now + 600,
    })
}

/// Signs `claims` with `key` (its algorithm and kid in the header).
pub fn mint(claims: Value, key: Key) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = std::fs::read(key.pem()).expect("read fixture key");
    let (algorithm, encoding) = match key {
        Key::Es256 | Key::UntrustedEs256 => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem).expect("EC PEM"),
        ),
        Key::Rs256 => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&pem).expect("RSA PEM"),
        ),
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(key.kid().to_string());
    jsonwebtoken::encode(&header, &claims, &encoding).expect("sign JWT")
}

// ---------------------------------------------------------------------------
// Audit trail (issue 6)
// ---------------------------------------------------------------------------

/// Writes the config of [`write_config`] into `dir` with `extra` YAML
/// (top-level keys such as `audit:`) appended; returns its path.
pub fn write_config_with(dir: &Path, extra: &str) -> PathBuf {
    let path = write_config(dir);
    let mut text = std::fs::read_to_string(&path).expect("read written config");
    text.push_str(extra);
    std::fs::write(&path, text).expect("write portcullis config");
    path
}

/// A valid bearer token from the fixture issuer for `sub` (org `acme`).
pub fn token(sub: &str) -> String {
    mint(claims(sub, "acme"), Key::Es256)
}

/// Sends SIGKILL to a running Portcullis (no shutdown path runs) and
/// waits until it is gone.
pub fn kill_9(portcullis: &mut Portcullis) {
    let pid = libc::pid_t::try_from(portcullis.pid()).expect("pid fits pid_t");
    // SAFETY: plain syscall on a child we started and have not reaped.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    wait_timeout(&mut portcullis.child, Duration::from_secs(10))
        .expect("portcullis exits within 10 s of SIGKILL");
}

// ---------------------------------------------------------------------------
// Identity provider: a local JWKS / OIDC discovery server
// ---------------------------------------------------------------------------

/// What the identity provider serves; shared with its connection tasks.
#[derive(Debug)]
struct IdpState {
    jwks: Value,
    down: bool,
    max_age: Option<u64>,
    hits: BTreeMap<String, usize>,
    /// Introspection answers by token; unknown tokens are inactive.
    introspection: BTreeMap<String, Value>,
    /// Delay before answering an introspection request.
    introspection_delay: Duration,
    /// The Authorization header introspection callers must send.
    introspection_auth: String,
}

/// Client id and secret the identity provider expects at `/introspect`.
pub const INTROSPECTION_CLIENT: (&str, &str) = ("portcullis", "introspection-secret-0123456789");

/// An in-process OIDC identity provider on `127.0.0.1:0`:
/// `/.well-known/openid-configuration` names `<issuer>/jwks.json`, which
/// serves the current key set. Keys can be rotated and the server can "go
/// down" (every request then gets 503). Every path's hits are counted,
/// including paths it does not serve (to prove nothing fetched them).
pub struct IdentityProvider {
    addr: SocketAddr,
    state: Arc<std::sync::Mutex<IdpState>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl IdentityProvider {
    /// Starts serving the fixture key set (`test-es256`, `test-rs256`).
    pub fn start() -> IdentityProvider {
        let jwks: Value = serde_json::from_slice(
            &std::fs::read(fixture("keys/test-issuer.jwks.json")).expect("fixture JWKS"),
        )
        .expect("fixture JWKS is JSON");
        let state = Arc::new(std::sync::Mutex::new(IdpState {
            jwks,
            down: false,
            max_age: None,
            hits: BTreeMap::new(),
            introspection: BTreeMap::new(),
            introspection_delay: Duration::ZERO,
            introspection_auth: {
                use base64::Engine;
                let (id, secret) = INTROSPECTION_CLIENT;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
                )
            },
        }));
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&state);
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime for the identity provider");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind identity provider");
                let addr = listener.local_addr().unwrap();
                addr_tx.send(addr).unwrap();
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(idp_connection(stream, Arc::clone(&shared), addr));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(STARTUP_TIMEOUT)
            .expect("identity provider did not start");
        IdentityProvider {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The issuer URL (`iss` of its tokens, base of discovery).
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The key set URL.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Serves `jwks` from now on (a key rotation).
    pub fn set_jwks(&self, jwks: Value) {
        self.state.lock().unwrap().jwks = jwks;
    }

    /// Serves the keys of the given fixture JWKS files, merged.
    pub fn set_keys(&self, files: &[&str]) {
        let mut keys = Vec::new();
        for f in files {
            let set: Value =
                serde_json::from_slice(&std::fs::read(fixture(f)).expect("fixture JWKS")).unwrap();
            keys.extend(set["keys"].as_array().unwrap().iter().cloned());
        }
        self.set_jwks(json!({ "keys": keys }));
    }

    /// Answers every request with 503 (`true`) or serves again (`false`).
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Sends `Cache-Control: max-age=<n>` with the key set.
    pub fn set_max_age(&self, seconds: Option<u64>) {
        self.state.lock().unwrap().max_age = seconds;
    }

    /// The introspection endpoint URL.
    pub fn introspection_url(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    /// Answers introspection of `token` with `answer` from now on.
    pub fn set_introspection(&self, token: &str, answer: Value) {
        self.state
            .lock()
            .unwrap()
            .introspection
            .insert(token.to_string(), answer);
    }

    /// Delays every introspection answer by `delay` (a slow endpoint).
    pub fn set_introspection_delay(&self, delay: Duration) {
        self.state.lock().unwrap().introspection_delay = delay;
    }

    /// How many requests reached `path` (any answer).
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every path requested so far, with counts.
    pub fn all_hits(&self) -> BTreeMap<String, usize> {
        self.state.lock().unwrap().hits.clone()
    }
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One request per connection (the fetcher's client may reuse connections;
/// closing after each answer keeps this server simple and still correct).
async fn idp_connection(
    mut stream: tokio::net::TcpStream,
    state: Arc<std::sync::Mutex<IdpState>>,
    addr: SocketAddr,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    while find(&buf, b"\r\n\r\n").is_none() {
        if buf.len() > MAX_HEAD_BYTES {
            return;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head_end = find(&buf, b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX_BODY_BYTES);
    while buf.len() < head_end + 4 + length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let request_body =
        String::from_utf8_lossy(&buf[head_end + 4..head_end + 4 + length]).into_owned();
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    if path == "/introspect" {
        let delay = state.lock().unwrap().introspection_delay;
        tokio::time::sleep(delay).await;
    }
    let (status, body, max_age) = {
        let mut s = state.lock().unwrap();
        *s.hits.entry(path.clone()).or_default() += 1;
        if s.down {
            (503, String::new(), None)
        } else {
            match path.as_str() {
                "/introspect" => {
                    if header("authorization").as_deref() != Some(s.introspection_auth.as_str()) {
                        (401, String::new(), None)
                    } else {
                        let token = request_body
                            .split('&')
                            .find_map(|kv| kv.strip_prefix("token="))
                            .map(form_decode)
                            .unwrap_or_default();
                        let answer = s
                            .introspection
                            .get(&token)
                            .cloned()
                            .unwrap_or_else(|| json!({"active": false}));
                        (200, answer.to_string(), None)
                    }
                }
                "/.well-known/openid-configuration" => (
                    200,
                    json!({
                        "issuer": format!("http://{addr}"),
                        "jwks_uri": format!("http://{addr}/jwks.json"),
                    })
                    .to_string(),
                    None,
                ),
                "/jwks.json" => (200, s.jwks.to_string(), s.max_age),
                _ => (404, String::new(), None),
            }
        }
    };
    let cache = max_age
        .map(|n| format!("cache-control: public, max-age={n}\r\n"))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{cache}connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// Decodes one `application/x-www-form-urlencoded` value.
fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Signs `header` and `payload`, given as raw JSON text (so that tests can
/// write what no serializer would: duplicate members, odd headers), with an
/// ES256 fixture key (`keys/<pem>`).
pub fn sign_raw_es256(header: &str, payload: &str, pem: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let key = jsonwebtoken::EncodingKey::from_ec_pem(
        &std::fs::read(fixture(&format!("keys/{pem}"))).expect("fixture key"),
    )
    .expect("EC PEM");
    let message = format!("{}.{}", b64(header), b64(payload));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::ES256)
            .expect("sign");
    format!("{message}.{signature}")
}

// ---------------------------------------------------------------------------
// TLS certificates (generated per test with rcgen)
// ---------------------------------------------------------------------------

/// PEM files for one test: a CA, a server certificate for `127.0.0.1` and
/// `localhost`, a client certificate (SPIFFE URI SAN) from that CA, and a
/// client certificate from another CA. Files live in `dir`.
pub struct TestPki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

/// The SPIFFE id in [`TestPki`]'s client certificate.
pub const GATEWAY_SPIFFE_ID: &str = "spiffe://acme.example/ns/edge/sa/envoy";

fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    sans: Vec<rcgen::SanType>,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![usage];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis test");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl TestPki {
    /// Generates everything into a fresh temporary directory.
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca = test_ca("portcullis test CA");
        let other = test_ca("some other CA");
        let (server_cert, server_key) = leaf(
            &ca,
            vec![
                rcgen::SanType::IpAddress([127, 0, 0, 1].into()),
                rcgen::SanType::DnsName("localhost".try_into().unwrap()),
                rcgen::SanType::DnsName("portcullis.internal".try_into().unwrap()),
            ],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client_san = || vec![rcgen::SanType::URI(GATEWAY_SPIFFE_ID.try_into().unwrap())];
        let (client_cert, client_key) = leaf(
            &ca,
            client_san(),
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (other_cert, other_key) = leaf(
            &other,
            client_san(),
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        TestPki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            other_ca: write("other-ca.pem", &other.pem()),
            other_client_cert: write("other-client.pem", &other_cert),
            other_client_key: write("other-client.key", &other_key),
            dir,
        }
    }
}

// ---------------------------------------------------------------------------
// An audit trail for in-process services built by hand
// ---------------------------------------------------------------------------

/// An audit trail in a temporary directory, for tests that assemble a
/// `server::State` themselves; keep it alive as long as the service.
pub struct TestAudit {
    /// The sink to put in `State`.
    pub sink: portcullis::audit::AuditSink,
    _writer: portcullis::audit::AuditWriter,
    _dir: TempDir,
}

impl TestAudit {
    /// Starts the writer on a fresh temporary directory.
    pub fn start() -> TestAudit {
        let dir = tempfile::tempdir().expect("temp dir");
        let (sink, writer) = portcullis::audit::start(&portcullis::config::AuditConfig {
            directory: dir.path().to_path_buf(),
            ..Default::default()
        })
        .expect("audit trail starts");
        TestAudit {
            sink,
            _writer: writer,
            _dir: dir,
        }
    }
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

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

    /// Sends one inline command and returns the first reply line.
    pub fn command(&self, inline: &str) -> Option<String> {
        let mut s = std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        s.write_all(inline.as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        Some(line)
    }

    /// Sends one inline command and returns a bulk-string reply's text.
    pub fn bulk(&self, inline: &str) -> Option<String> {
        let mut s = std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        s.write_all(inline.as_bytes()).ok()?;
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let len: usize = line.strip_prefix('$')?.trim().parse().ok()?;
        let mut body = vec![0u8; len + 2];
        reader.read_exact(&mut body).ok()?;
        Some(String::from_utf8_lossy(&body[..len]).into_owned())
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
}

/// The decision pipeline with a fresh in-process quota store.
pub async fn decide(
    snapshot: &portcullis::snapshot::Snapshot,
    authn: &portcullis::authn::Authenticator,
    req: &portcullis::request::AccessRequest,
) -> portcullis::decision::Decision {
    let quotas = portcullis::quota::Quotas::in_process(1024);
    portcullis::pipeline::decide(snapshot, authn, &quotas, req).await
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// `GET path` on `addr`: status and body text (panics when unreachable).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let resp = HttpRequest::get(path).send(addr);
    (resp.status, resp.text())
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name, e.g. `portcullis_decisions_total`.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Parses a Prometheus text exposition (version 0.0.4) strictly enough for
/// tests: every non-comment line must be `name{labels} value`.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metrics line without a value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad value in metrics line {line:?}: {e}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let mut end = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, e)) = chars.next() {
                                    value.push(match e {
                                        'n' => '\n',
                                        other => other,
                                    });
                                }
                            }
                            '"' => {
                                end = Some(i);
                                break;
                            }
                            c => value.push(c),
                        }
                    }
                    let end = end.unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
                    labels.insert(key.trim_start_matches(',').to_string(), value);
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The sum of the samples named `name` whose labels include `labels`
/// (0 when none match).
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Copies one entry of a policy directory into `to`: a file, or the
/// `schemas/` directory (body schemas) with its files. Other directories
/// (tests/, shadow/, quotas/) are left to the caller.
pub fn copy_policy_entry(from: &Path, to: &Path) {
    if from.is_file() {
        std::fs::copy(from, to.join(from.file_name().unwrap())).unwrap();
    } else if from.file_name().is_some_and(|n| n == "schemas") {
        let dir = to.join("schemas");
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
            }
        }
    }
}
