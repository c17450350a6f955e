//! `--rpc forward-auth`: drives the forward-auth HTTP listener (or the
//! empty HTTP server on the same stack) with the request mix as Envoy's
//! ext_authz HTTP mode sends it (deploy/forward-auth/envoy-http.yaml): the
//! original request line after `/ext-authz`, its headers and body, over a
//! few h2c connections, a fixed number of requests in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use hyper::body::Bytes;
use hyper::http::{HeaderName, HeaderValue, Method, Request};

use crate::load::{phase, Calls, WorkerResult};
use crate::report::Phase;
use crate::Args;

/// One forward-auth request.
#[derive(Debug, Clone)]
pub struct HttpCall {
    method: Method,
    /// `/ext-authz` and the original path.
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

/// The mix's `Check` calls as forward-auth requests (request-line
/// convention, Portcullis's default `path_prefix`), each from a client
/// address of its own in `X-Forwarded-For` (the in-process server trusts
/// the loopback gateway), as a gateway in front of many clients sends
/// them: the per-address stages (failed-attempt blocks, the anomaly
/// detector) see clients, not the one gateway. An mTLS workload has no
/// HTTP form: it asks anonymously (and is refused).
pub fn http_mix(checks: &[CheckRequest]) -> anyhow::Result<Vec<HttpCall>> {
    checks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let http = c
                .attributes
                .as_ref()
                .and_then(|a| a.request.as_ref())
                .and_then(|r| r.http.as_ref())
                .context("a mix call without HTTP attributes")?;
            let mut headers = vec![(
                HeaderName::from_static("host"),
                HeaderValue::from_str(&http.host)?,
            )];
            for (k, v) in &http.headers {
                headers.push((
                    HeaderName::from_bytes(k.as_bytes())?,
                    HeaderValue::from_str(v)?,
                ));
            }
            headers.push((
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(&format!(
                    "10.{}.{}.{}",
                    (i >> 16) & 255,
                    (i >> 8) & 255,
                    i & 255
                ))?,
            ));
            Ok(HttpCall {
                method: http.method.parse()?,
                path: format!("/ext-authz{}", http.path),
                headers,
                body: Bytes::from(http.raw_body.clone()),
            })
        })
        .collect()
}

/// Drives one server with the mix and measures it, as `load::drive` does
/// for gRPC.
pub async fn drive_http(
    server: &'static str,
    addr: SocketAddr,
    args: &Args,
    requests: Arc<Calls>,
) -> anyhow::Result<Phase> {
    let Calls::Http(calls) = &*requests else {
        anyhow::bail!("drive_http drives HTTP calls");
    };
    let calls = Arc::new(calls.clone());
    let mut connections = Vec::new();
    for _ in 0..args.connections {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {server} at {addr}"))?;
        tcp.set_nodelay(true)?;
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .handshake(tcp)
            .await
            .with_context(|| format!("h2c handshake with {server} at {addr}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        connections.push(client);
    }
    let load = |duration: f64, limit: Option<u64>| {
        run(
            &connections,
            args.concurrency,
            Duration::from_secs_f64(duration),
            limit,
            &calls,
        )
    };
    load(args.warmup, None).await;
    let started = Instant::now();
    let results = load(args.duration, args.requests).await;
    phase(server, results, started.elapsed().as_secs_f64(), None)
}

async fn run(
    connections: &[h2::client::SendRequest<Bytes>],
    concurrency: usize,
    duration: Duration,
    limit: Option<u64>,
    calls: &Arc<Vec<HttpCall>>,
) -> Vec<WorkerResult> {
    let deadline = Instant::now() + duration;
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let client = connections[w % connections.len()].clone();
        let calls = Arc::clone(calls);
        let sent = Arc::clone(&sent);
        workers.spawn(async move {
            let mut r = WorkerResult::new();
            let mut i = w;
            while Instant::now() < deadline {
                if limit.is_some_and(|l| sent.fetch_add(1, Ordering::Relaxed) >= l) {
                    break;
                }
                let call = &calls[i % calls.len()];
                i += concurrency;
                let t = Instant::now();
                let outcome = exchange(client.clone(), call).await;
                r.record(t.elapsed().as_micros() as u64, outcome);
            }
            r
        });
    }
    workers.join_all().await
}

/// One request and its whole answer: `Ok(allowed)`, `Err` when the
/// exchange failed.
async fn exchange(client: h2::client::SendRequest<Bytes>, call: &HttpCall) -> Result<bool, ()> {
    let mut client = client.ready().await.map_err(|_| ())?;
    let mut request = Request::builder()
        .method(call.method.clone())
        .uri(format!("http://portcullis{}", call.path));
    for (k, v) in &call.headers {
        request = request.header(k, v);
    }
    let request = request.body(()).map_err(|_| ())?;
    let (response, mut stream) = client
        .send_request(request, call.body.is_empty())
        .map_err(|_| ())?;
    if !call.body.is_empty() {
        stream.send_data(call.body.clone(), true).map_err(|_| ())?;
    }
    let response = response.await.map_err(|_| ())?;
    let allowed = response.status() == 200;
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| ())?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(allowed)
}
