//! The forward-auth listener's server: HTTP/1.1 and h2c (HTTP/2 with prior
//! knowledge, as Envoy's `http2_protocol_options` cluster speaks it) on one
//! port, with the gRPC listeners' limits from `server:` (streams per
//! connection, header list size, keepalive, the per-request deadline, the
//! listener's request budget) and the body bounded by
//! `server.max_message_bytes`. Every request's head and whole body go to a
//! [`Handler`]; the benchmark's empty baseline is a handler on this same
//! stack. It decides nothing.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Incoming};
use hyper::http::request::Parts;
use hyper::http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::budget::Budget;
use crate::adapters::forward_auth::{listener_problem, Body, ForwardAuth};
use crate::config::Config;

/// What one listener accepts.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// The largest request head, bytes (HTTP/2 header list; HTTP/1.1 read
    /// buffer).
    pub max_header_list_size: u32,
    /// The largest request body, bytes.
    pub max_body_bytes: usize,
    /// From a request's headers to its answer (so also the longest a body
    /// may take to arrive).
    pub request_timeout: Duration,
    /// HTTP/2 keepalive pings; none: off.
    pub keepalive_interval: Option<Duration>,
    /// Close a connection whose ping is not answered within this time.
    pub keepalive_timeout: Duration,
    /// Requests in progress at once over all connections.
    pub max_pending_requests: usize,
}

impl HttpLimits {
    /// The limits `server:` sets for every listener.
    pub fn of(config: &Config) -> Self {
        let s = &config.server;
        HttpLimits {
            max_concurrent_streams: s.max_concurrent_streams,
            max_header_list_size: s.max_header_list_size,
            max_body_bytes: s.max_message_bytes,
            request_timeout: config.request_timeout(),
            keepalive_interval: (s.keepalive_interval_seconds > 0)
                .then(|| Duration::from_secs(s.keepalive_interval_seconds)),
            keepalive_timeout: Duration::from_secs(s.keepalive_timeout_seconds),
            max_pending_requests: s.max_pending_requests,
        }
    }
}

/// Answers one request: its head, its whole body and the peer's address.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The answer.
    fn handle(
        &self,
        parts: Parts,
        body: Bytes,
        peer: IpAddr,
    ) -> impl Future<Output = Response<Body>> + Send;
}

impl Handler for ForwardAuth {
    fn handle(
        &self,
        parts: Parts,
        body: Bytes,
        peer: IpAddr,
    ) -> impl Future<Output = Response<Body>> + Send {
        self.answer(parts, body, peer)
    }
}

/// Serves `handler` on `listener` until `cancel`; then stops accepting and
/// lets open connections finish what they are doing (the caller bounds how
/// long it waits).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    limits: HttpLimits,
    handler: H,
    cancel: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_buf_size((limits.max_header_list_size as usize).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    let shared = Arc::new(Shared {
        handler,
        budget: Budget::new(limits.max_pending_requests),
        limits,
    });
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(error = %e, "forward-auth listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let shared = Arc::clone(&shared);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(shared.answer(request, peer).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, %peer, "forward-auth connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

struct Shared<H> {
    handler: H,
    budget: Budget,
    limits: HttpLimits,
}

impl<H: Handler> Shared<H> {
    /// One request: within the budget and the deadline, its body read
    /// whole (bounded), then the handler's answer.
    async fn answer(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let _permit = match self.budget.enter() {
            Ok(permit) => permit,
            Err(message) => return listener_problem(503, "over_budget", "Busy", &message),
        };
        let timeout = self.limits.request_timeout;
        let answered = tokio::time::timeout(timeout, async {
            let (parts, body) = request.into_parts();
            let body = match self.read_body(&parts, body).await {
                Ok(body) => body,
                Err(problem) => return problem,
            };
            self.handler.handle(parts, body, peer.ip()).await
        })
        .await;
        answered.unwrap_or_else(|_| {
            listener_problem(
                503,
                "request_timeout",
                "Request timeout",
                &format!(
                    "no answer within server.request_timeout_ms ({} ms)",
                    timeout.as_millis()
                ),
            )
        })
    }

    async fn read_body(&self, parts: &Parts, body: Incoming) -> Result<Bytes, Response<Body>> {
        let max = self.limits.max_body_bytes;
        let too_large = || {
            listener_problem(
                413,
                "body_too_large",
                "Request body too large",
                &format!(
                    "the body is larger than this listener accepts (server.max_message_bytes, \
                     {max} bytes): the gateway must not forward larger bodies"
                ),
            )
        };
        let declared = parts
            .headers
            .get(hyper::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        match http_body_util::Limited::new(body, max).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(listener_problem(
                400,
                "bad_forward_auth_request",
                "Bad forward-auth request",
                &format!("the request body could not be read: {e}"),
            )),
        }
    }
}
