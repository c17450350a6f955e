//! `--hold-streams CONNSxSTREAMS`: the `portcullis` binary in its own
//! process, held by clients that open HTTP/2 streams carrying a `Check`'s
//! headers and never its body (each connection keeps up to STREAMS such
//! streams open, opening a new one whenever the server ends one), while a
//! normal client's `Check` latency is measured. Reports the server's
//! resident memory (`VmRSS`) before, at its peak during, and after the
//! hold, and the latency with and without it, in one run.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tonic::codegen::http;

use crate::load::{drive, Calls};
use crate::report::Phase;
use crate::setup::roomy_copy;
use crate::token::{TokenKey, AUDIENCE, ISSUER};
use crate::Args;

/// What a hold measured.
#[derive(Debug, Serialize)]
pub struct HoldReport {
    pub connections: usize,
    pub streams_per_connection: usize,
    /// Header-only streams the server accepted, over the whole hold.
    pub streams_opened: u64,
    /// Header-only streams the clients held, open or queued by their
    /// HTTP/2 stack behind the server's stream limit, at the end of the
    /// ramp-up.
    pub streams_held_at_peak: u64,
    /// Connections the server closed or refused during the hold.
    pub connections_lost: u64,
    pub rss_mib_before: f64,
    pub rss_mib_peak: f64,
    /// Two seconds after the holding clients disconnected.
    pub rss_mib_after: f64,
    /// The normal client alone, then while the streams are held.
    pub phases: Vec<Phase>,
    /// p50 and p99 latency while held over latency alone.
    pub p50_ratio: f64,
    pub p99_ratio: f64,
}

/// Parses `CONNSxSTREAMS`, e.g. `50x1000`.
pub fn parse_shape(text: &str) -> anyhow::Result<(usize, usize)> {
    let (c, s) = text
        .split_once('x')
        .context("--hold-streams takes CONNSxSTREAMS, e.g. 50x1000")?;
    let (c, s): (usize, usize) = (c.parse()?, s.parse()?);
    anyhow::ensure!(
        (1..=1_000).contains(&c) && (1..=10_000).contains(&s),
        "--hold-streams: at most 1000 connections and 10000 streams each"
    );
    Ok((c, s))
}

/// The spawned server; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss_mib(&self) -> anyhow::Result<f64> {
        rss_mib(self.child.id())
    }
}

/// The resident memory of process `pid`, MiB (`VmRSS`, Linux only).
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("read the server's /proc status (Linux only)")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc status")?;
    Ok(kib / 1024.0)
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts `binary` with the bench's policies and issuer, plus `server`
/// (a YAML mapping for the `server:` section, e.g. `{max_concurrent_streams:
/// 1024}`), and waits until it answers.
async fn spawn(
    binary: &Path,
    args: &Args,
    keys: &TokenKey,
    server: Option<&str>,
) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let jwks = dir.path().join("bench.jwks.json");
    std::fs::write(&jwks, keys.jwks.to_string())?;
    let policies = roomy_copy(&args.policies, &dir.path().join("policies"))?;
    let addr = free_addr()?;
    let config = format!(
        "listen: {addr}\nadmin_listen: {}\nhttp_listen: {}\npolicies: {policies:?}\n\
         reload: {{watch: false}}\naudit: {{directory: {:?}}}\nlog: {{level: error}}\n\
         authentication:\n  jwt:\n    - {{issuer: {ISSUER:?}, audiences: [{AUDIENCE:?}], \
         jwks_file: {jwks:?}, algorithms: [ES256], org_claim: org}}\n{}",
        free_addr()?,
        free_addr()?,
        dir.path().join("audit"),
        server.map(|s| format!("server: {s}\n")).unwrap_or_default(),
    );
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(&file, config)?;
    let child = Command::new(binary)
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let server = Server {
        child,
        addr,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{addr} did not answer in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(server)
}

/// Counters the holding clients share.
#[derive(Default)]
struct Held {
    opened: AtomicU64,
    open: AtomicU64,
    lost: AtomicU64,
    stop: AtomicBool,
}

/// One holding connection: keeps up to `streams` header-only `Check`
/// streams open until `held.stop`.
async fn hold(addr: SocketAddr, streams: usize, held: Arc<Held>) {
    let Ok(tcp) = TcpStream::connect(addr).await else {
        held.lost.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Ok((client, connection)) = h2::client::handshake(tcp).await else {
        held.lost.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let driver = tokio::spawn(connection);
    let slots = Arc::new(Semaphore::new(streams));
    while !held.stop.load(Ordering::Relaxed) {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let ready = tokio::time::timeout(Duration::from_millis(200), client.clone().ready()).await;
        let mut sender = match ready {
            Ok(Ok(sender)) => sender,
            Ok(Err(_)) => {
                held.lost.fetch_add(1, Ordering::Relaxed);
                break;
            }
            // At the server's stream limit: wait for one to end.
            Err(_) => continue,
        };
        let request = http::Request::post(format!(
            "http://{addr}/envoy.service.auth.v3.Authorization/Check"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request");
        let Ok((response, body)) = sender.send_request(request, false) else {
            held.lost.fetch_add(1, Ordering::Relaxed);
            break;
        };
        held.opened.fetch_add(1, Ordering::Relaxed);
        held.open.fetch_add(1, Ordering::Relaxed);
        let held = Arc::clone(&held);
        tokio::spawn(async move {
            // The request body is never sent; its handle stays open until
            // the server ends the stream.
            let _body = body;
            if let Ok(response) = response.await {
                let mut body = response.into_body();
                while let Some(Ok(_)) = body.data().await {}
                let _ = body.trailers().await;
            }
            held.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    driver.abort();
}

/// Runs the hold and measures it.
pub async fn run(
    args: &Args,
    shape: (usize, usize),
    keys: &TokenKey,
    requests: Arc<Calls>,
) -> anyhow::Result<HoldReport> {
    let binary = match &args.portcullis {
        Some(b) => b.clone(),
        None => sibling_binary()?,
    };
    let server = spawn(&binary, args, keys, args.server_section.as_deref()).await?;
    let alone = drive("alone", server.addr, args, Arc::clone(&requests)).await?;
    let rss_before = server.rss_mib()?;

    let held = Arc::new(Held::default());
    let (connections, streams) = shape;
    // The holding clients get a runtime of their own, so that the normal
    // client's calls do not queue behind their tasks.
    let attack = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("hold")
        .enable_all()
        .build()?;
    for _ in 0..connections {
        attack.spawn(hold(server.addr, streams, Arc::clone(&held)));
    }
    let mut peak = rss_before;
    // Ramp-up: until the open count stops growing (at most 20 s).
    let ramp = Instant::now() + Duration::from_secs(20);
    let mut last = u64::MAX;
    while Instant::now() < ramp {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(server.rss_mib()?);
        let open = held.open.load(Ordering::Relaxed);
        if open == last {
            break;
        }
        last = open;
    }
    let open_at_peak = held.open.load(Ordering::Relaxed);
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (pid, sampling) = (server.child.id(), Arc::clone(&sampling));
        tokio::spawn(async move {
            let mut peak = 0f64;
            while sampling.load(Ordering::Relaxed) {
                if let Ok(rss) = rss_mib(pid) {
                    peak = peak.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let during = drive("held", server.addr, args, Arc::clone(&requests)).await?;
    sampling.store(false, Ordering::Relaxed);
    peak = peak.max(sampler.await?);
    held.stop.store(true, Ordering::Relaxed);
    attack.shutdown_background();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = server.rss_mib()?;

    let ratio = |f: fn(&Phase) -> u64| f(&during) as f64 / f(&alone).max(1) as f64;
    Ok(HoldReport {
        connections,
        streams_per_connection: streams,
        streams_opened: held.opened.load(Ordering::Relaxed),
        streams_held_at_peak: open_at_peak,
        connections_lost: held.lost.load(Ordering::Relaxed),
        rss_mib_before: rss_before,
        rss_mib_peak: peak,
        rss_mib_after: rss_after,
        p50_ratio: ratio(|p| p.latency_us.p50),
        p99_ratio: ratio(|p| p.latency_us.p99),
        phases: vec![alone, during],
    })
}

/// `portcullis` next to this binary (both built by one `cargo build`).
fn sibling_binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::current_exe()?.with_file_name("portcullis");
    anyhow::ensure!(
        binary.exists(),
        "{} does not exist: build it (cargo build --release --bins) or pass --portcullis",
        binary.display()
    );
    Ok(binary)
}

pub fn print(r: &HoldReport) {
    println!(
        "{} connections x {} header-only streams: {} opened, {} held (open or queued) at the peak, {} connections lost",
        r.connections, r.streams_per_connection, r.streams_opened, r.streams_held_at_peak, r.connections_lost
    );
    println!(
        "server RSS: {:.1} MiB before, {:.1} MiB peak, {:.1} MiB after",
        r.rss_mib_before, r.rss_mib_peak, r.rss_mib_after
    );
    for p in &r.phases {
        println!(
            "normal client {:<6} {:>7} calls, {:>3} errors, p50 {:>6} us, p99 {:>6} us",
            p.server, p.requests, p.errors, p.latency_us.p50, p.latency_us.p99
        );
    }
    println!(
        "latency held/alone: p50 {:.2}x, p99 {:.2}x",
        r.p50_ratio, r.p99_ratio
    );
}
