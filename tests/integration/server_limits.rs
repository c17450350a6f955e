//! What HTTP/2 clients can hold open on the decision listener is bounded:
//! streams per connection (`server.max_concurrent_streams`), requests in
//! progress over all connections (`server.max_pending_requests`), and how
//! long a stream may wait to send its body (`server.request_timeout_ms`).
//! Streams here send a `Check`'s headers and never its body.

use std::future::Future as _;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::config::Config;
use tokio::net::TcpStream;
use tonic::codegen::http;

use crate::support::{self, policies_dir, Check, TestServer};

async fn start(server: impl FnOnce(&mut portcullis::config::ServerConfig)) -> TestServer {
    let mut config: Config = support::in_process_config(&policies_dir());
    server(&mut config.server);
    TestServer::start(config).await
}

/// An HTTP/2 connection to `server`'s decision listener.
async fn connect(server: &TestServer) -> h2::client::SendRequest<prost::bytes::Bytes> {
    let tcp = TcpStream::connect(server.decision_addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Opens a `Check` stream with headers only; the body handle is returned
/// so that the stream stays open.
async fn header_only(
    client: &h2::client::SendRequest<prost::bytes::Bytes>,
) -> (
    h2::client::ResponseFuture,
    h2::SendStream<prost::bytes::Bytes>,
) {
    let request =
        http::Request::post("http://portcullis/envoy.service.auth.v3.Authorization/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
    client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap()
}

async fn status_check(server: &TestServer) -> Result<(), tonic::Status> {
    let mut client = AuthorizationClient::connect(format!("http://{}", server.decision_addr))
        .await
        .unwrap();
    client
        .check(Check::get("/v1/status").build())
        .await
        .map(drop)
}

#[tokio::test]
async fn header_only_streams_beyond_the_request_budget_are_refused_at_once() {
    let server = start(|s| {
        s.max_pending_requests = 3;
        s.request_timeout_ms = 30_000;
    })
    .await;
    let client = connect(&server).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(header_only(&client).await);
    }
    // The held streams reach the server in their own time: a normal call
    // is refused once they do, and at once (not after any timeout).
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let started = Instant::now();
        match status_check(&server).await {
            Err(status) => break (status, started.elapsed()),
            Ok(()) => assert!(Instant::now() < deadline, "the budget never filled"),
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(
        refused.0.code(),
        tonic::Code::ResourceExhausted,
        "{:?}",
        refused.0
    );
    assert_eq!(
        refused.0.message(),
        "the server has 3 requests in progress (server.max_pending_requests): retry later"
    );
    assert!(refused.1 < Duration::from_secs(5), "{:?}", refused.1);
    // Ending the held streams gives the budget back.
    drop(held);
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(status) = status_check(&server).await {
        assert!(Instant::now() < deadline, "budget not returned: {status:?}");
        tokio::task::yield_now().await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stream_that_never_sends_its_body_is_ended_after_the_request_timeout() {
    let server = start(|s| s.request_timeout_ms = 200).await;
    let client = connect(&server).await;
    let (response, _body) = header_only(&client).await;
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the server answers a stalled stream")
        .unwrap();
    // A trailers-only answer carries grpc-status in its headers.
    let mut code = response.headers().get("grpc-status").cloned();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    if let Some(trailers) = body.trailers().await.unwrap() {
        code = code.or(trailers.get("grpc-status").cloned());
    }
    let code = code.expect("a grpc-status");
    assert_ne!(code, "0", "a stalled Check is never an answer");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_connection_is_offered_the_configured_stream_limit() {
    for (configured, expected) in [(None, 100), (Some(7), 7)] {
        let server = start(|s| {
            s.request_timeout_ms = 200;
            if let Some(n) = configured {
                s.max_concurrent_streams = n;
            }
        })
        .await;
        let tcp = TcpStream::connect(server.decision_addr).await.unwrap();
        let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
        // The server's SETTINGS arrive with its first frames: drive the
        // connection until one stalled stream is answered (a short timeout).
        let (response, _body) = header_only(&client).await;
        let mut response = std::pin::pin!(response);
        let limit = std::future::poll_fn(|cx| {
            let _ = std::pin::Pin::new(&mut connection).poll(cx);
            response
                .as_mut()
                .poll(cx)
                .map(|_| connection.max_concurrent_send_streams())
        });
        let limit = tokio::time::timeout(Duration::from_secs(10), limit).await;
        assert_eq!(limit.expect("the stalled stream is answered"), expected);
        drop((client, connection));
        server.shutdown().await.unwrap();
    }
}
