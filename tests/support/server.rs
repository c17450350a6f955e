//! Portcullis as a child process (`portcullis serve`, the binary Cargo
//! built): started on free ports learnt from its stdout, stopped through
//! SIGTERM (the production stop path) or SIGKILL, killed on drop.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::config::write_config;
use super::http::http_get;
use super::paths::policies_dir;
use super::process::{die_with_parent, kill_on_drop, read_lossy, tail, terminate, wait_timeout};
use super::STARTUP_TIMEOUT;

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
    /// [`write_config`]), `--policies <repo>/policies`, and port 0 for every
    /// listener (`--listen`, `--http-listen`, `--admin-listen`
    /// `127.0.0.1:0`), so no test depends on a default port being free.
    pub fn start(args: &[&str]) -> Portcullis {
        Self::spawn(args, None, &[])
    }

    /// As [`Portcullis::start`], with these environment variables set for
    /// the process (e.g. `SOFTHSM2_CONF` for a test token).
    pub fn start_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Portcullis {
        Self::spawn(args, None, env)
    }

    /// As [`Portcullis::start`], with the process's file size limit
    /// (`RLIMIT_FSIZE`, as `ulimit -f` sets it) at `bytes` and `SIGXFSZ`
    /// ignored: a write past `bytes` in any file fails with `EFBIG`, as a
    /// write to a full disk fails with `ENOSPC`, without root or a small
    /// filesystem. Its stderr file has the same limit.
    pub fn start_with_file_size_limit(args: &[&str], bytes: u64) -> Portcullis {
        Self::spawn(args, Some(bytes), &[])
    }

    fn spawn(
        args: &[&str],
        file_size_limit: Option<u64>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Portcullis {
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
        // A test's own config may leave the admin address at its default
        // (127.0.0.1:50052), which another process may hold (a server a
        // developer is running; CI failed on that once).
        if !has("--admin-listen") {
            full.push("--admin-listen".into());
            full.push("127.0.0.1:0".into());
        }
        full.extend(args.iter().map(|a| a.to_string()));

        let stderr = dir.path().join("portcullis.stderr");
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command
            .args(&full)
            .current_dir(dir.path())
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("create stderr file"));
        die_with_parent(&mut command);
        if let Some(bytes) = file_size_limit {
            limit_file_size(&mut command, bytes);
        }
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
        let stderr = self.stderr();
        kill_on_drop(&mut self.child, "portcullis stderr", &stderr, 60);
    }
}

/// Sets `RLIMIT_FSIZE` of the child to `bytes` and ignores `SIGXFSZ` (an
/// ignored signal stays ignored across exec), so that writes past the limit
/// fail with `EFBIG` instead of killing the process.
fn limit_file_size(command: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit and signal are async-signal-safe and touch no
    // memory of the parent.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
                || libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
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
